// Unit tests of web/emo_hooks.js with fake nodes: chaining, widget reuse, serialisation, resizing.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AUDIO_INFO, FACE_INFO, MODEL_INFO, PROGRESS_INFO, addTextBox, comfyDeps, findNode, installInfoDisplay,
  installProgressDisplay, prepareInfoWidget, showInfo, textLines } from "../../web/emo_hooks.js";
import { formatFaceInfo } from "../../web/emo_format.js";
import { FakeApi, FakeNode, fakeDocument, makeNodeType, promptInputs, proxiedSize, testDeps,
  workflowWidgetValues } from "./fake_comfy.mjs";

const AUDIO_MESSAGE = {
  emo_audio: [{ duration: 12.34, frames: 309, fps: 25, clips: 20, clip_length: 16, motion_frames: 2,
    sample_rate: 44100, channels: 2 }],
};
const AUDIO_TEXT = "12.34 s \u00b7 309 frames @ 25 fps \u00b7 20 clips of 16 (2 motion)\n44.1 kHz stereo";
const FACE_ENTRY = { box: [120, 80, 392, 400], width: 512, height: 512, frames: 1, source: "mediapipe" };
const FACE_MESSAGE = { images: [{ filename: "emo_face_00001_.png", subfolder: "", type: "temp" }],
  emo_face: [FACE_ENTRY] };

function installed(spec = AUDIO_INFO, deps = testDeps(), base = FakeNode) {
  const nodeType = makeNodeType(base);
  assert.equal(installInfoDisplay(nodeType, { name: spec.nodeName }, spec, deps), true);
  return { nodeType, node: new nodeType(), deps };
}

function infoWidgets(node, spec = AUDIO_INFO) {
  return node.widgets.filter((w) => w.name === spec.widgetName);
}

describe("installInfoDisplay", () => {
  test("leaves other node types untouched", () => {
    const nodeType = makeNodeType();
    const previous = function () {};
    nodeType.prototype.onExecuted = previous;
    for (const nodeData of [{ name: "EMO_FaceLocator" }, { name: "PreviewImage" }, {}, null, undefined]) {
      assert.equal(installInfoDisplay(nodeType, nodeData, AUDIO_INFO, testDeps()), false);
    }
    assert.equal(nodeType.prototype.onExecuted, previous);
  });

  test("chains to the previous onExecuted with the same this, arguments and result", () => {
    const calls = [];
    class Base extends FakeNode {
      onExecuted(...args) { calls.push({ self: this, args }); return "previous result"; }
    }
    const { node } = installed(AUDIO_INFO, testDeps(), Base);
    assert.equal(node.onExecuted(AUDIO_MESSAGE, "extra"), "previous result");
    assert.equal(calls.length, 1);
    assert.equal(calls[0].self, node);
    assert.deepEqual(calls[0].args, [AUDIO_MESSAGE, "extra"]);
    assert.equal(infoWidgets(node)[0].value, AUDIO_TEXT);
  });

  test("runs the previous handler before showing the text", () => {
    const order = [];
    class Base extends FakeNode {
      onExecuted() { order.push(`previous saw ${this.widgets.length} widgets`); }
    }
    const { node } = installed(AUDIO_INFO, testDeps(), Base);
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(order, ["previous saw 1 widgets"]);
    assert.equal(node.widgets.length, 2);
  });

  test("works without a previous onExecuted and returns undefined", () => {
    const { node } = installed();
    assert.equal(node.onExecuted(AUDIO_MESSAGE), undefined);
    assert.equal(infoWidgets(node).length, 1);
  });

  test("keeps a handler that another extension chains after ours", () => {
    const { nodeType, node } = installed();
    const ours = nodeType.prototype.onExecuted;
    let seen = null;
    nodeType.prototype.onExecuted = function (message) {
      const r = ours.apply(this, arguments);
      seen = message;
      return r;
    };
    node.onExecuted(AUDIO_MESSAGE);
    assert.equal(seen, AUDIO_MESSAGE);
    assert.equal(infoWidgets(node)[0].value, AUDIO_TEXT);
  });

  test("two EMO features on one node type both run", () => {
    const nodeType = makeNodeType();
    const both = { ...FACE_INFO, nodeName: AUDIO_INFO.nodeName };
    installInfoDisplay(nodeType, { name: AUDIO_INFO.nodeName }, AUDIO_INFO, testDeps());
    installInfoDisplay(nodeType, { name: AUDIO_INFO.nodeName }, both, testDeps());
    const node = new nodeType();
    node.onExecuted({ ...AUDIO_MESSAGE, ...FACE_MESSAGE });
    assert.equal(infoWidgets(node, AUDIO_INFO)[0].value, AUDIO_TEXT);
    assert.equal(infoWidgets(node, FACE_INFO)[0].value, formatFaceInfo(FACE_ENTRY));
  });

  test("reuses one widget across runs and updates its text", () => {
    const { node } = installed();
    node.onExecuted(AUDIO_MESSAGE);
    const widget = infoWidgets(node)[0];
    node.onExecuted({ emo_audio: [{ duration: 2, frames: 50, fps: 25, clips: 4, clip_length: 16 }] });
    node.onExecuted({ emo_audio: [{ duration: 3 }] });
    assert.deepEqual(infoWidgets(node), [widget]);
    assert.equal(node.widgets.length, 2);
    assert.equal(widget.value, "3.00 s");
  });

  test("each node instance gets its own widget", () => {
    const { nodeType, node } = installed();
    const other = new nodeType();
    node.onExecuted(AUDIO_MESSAGE);
    other.onExecuted({ emo_audio: [{ duration: 1 }] });
    assert.equal(infoWidgets(node)[0].value, AUDIO_TEXT);
    assert.equal(infoWidgets(other)[0].value, "1.00 s");
  });

  test("creates no widget for a message without EMO data and clears an existing one", () => {
    const { node } = installed();
    node.onExecuted({ images: [] });
    node.onExecuted(undefined);
    assert.equal(node.widgets.length, 1);
    node.onExecuted(AUDIO_MESSAGE);
    node.onExecuted({});
    assert.equal(infoWidgets(node)[0].value, "");
    assert.equal(node.widgets.length, 2);
  });

  test("a failure while showing is logged, never thrown, and the previous result still returned", () => {
    class Base extends FakeNode { onExecuted() { return 7; } }
    const deps = testDeps({ createTextWidget() { throw new Error("no DOM"); } });
    const { node } = installed(AUDIO_INFO, deps, Base);
    assert.equal(node.onExecuted(AUDIO_MESSAGE), 7);
    assert.equal(deps.warnings.length, 1);
    assert.match(String(deps.warnings[0][0]), /emo_audio_info/);
  });

  test("an error of the previous handler is not swallowed", () => {
    class Base extends FakeNode { onExecuted() { throw new Error("previous failed"); } }
    const { node } = installed(AUDIO_INFO, testDeps(), Base);
    assert.throws(() => node.onExecuted(AUDIO_MESSAGE), /previous failed/);
  });

  test("the face locator shows the box line beside its images output", () => {
    const { node } = installed(FACE_INFO);
    node.onExecuted(FACE_MESSAGE);
    assert.equal(infoWidgets(node, FACE_INFO)[0].value,
      "face box 120,80 \u2013 392,400 (272\u00d7320)\nimage 512\u00d7512 \u00b7 MediaPipe");
  });
  test("the model loader shows the family it loaded", () => {
    const { node } = installed(MODEL_INFO);
    assert.equal(MODEL_INFO.nodeName, "EMO_ModelLoader");
    node.onExecuted({ emo_model: [{ model: "hallo2/net.pth", family: "hallo2", clip_length: 16, motion_frames: 2,
      motion_pixel_drop: 0.25 }] });
    assert.equal(infoWidgets(node, MODEL_INFO)[0].value,
      "Hallo2 \u00b7 clips of 16 (2 motion) \u00b7 25% motion pixels dropped");
  });
});

describe("the info widget is display only", () => {
  test("saved workflow widgets_values and the API prompt are the same as before the run", () => {
    const { node } = installed();
    const workflowBefore = workflowWidgetValues(node);
    const promptBefore = promptInputs(node);
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(workflowWidgetValues(node), workflowBefore);
    assert.deepEqual(promptInputs(node), promptBefore);
    assert.deepEqual(promptBefore, { fps: 25 });
  });

  test("the text area is read-only", () => {
    const { node } = installed();
    node.onExecuted(AUDIO_MESSAGE);
    const widget = infoWidgets(node)[0];
    assert.equal(widget.element.readOnly, true);
    assert.equal(widget.element.placeholder, "");
    assert.equal(widget.serialize, false);
    assert.equal(widget.options.serialize, false);
  });

  test("prepareInfoWidget disables a canvas widget and creates missing options", () => {
    const widget = prepareInfoWidget({ name: "emo_x", type: "text", value: "" });
    assert.deepEqual(widget.options, { serialize: false });
    assert.equal(widget.serialize, false);
    assert.equal(widget.disabled, true);
  });
});

describe("sizing", () => {
  test("grows the node once, when the widget is created, and keeps a larger user size", () => {
    const { node } = installed();
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, [[400, 180]]);
    node.setSize([600, 400]);
    node.sizes = [];
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, []);
    assert.deepEqual([...node.size], [600, 400]);
    assert.ok(node.dirty >= 2);
  });

  test("never shrinks a node that is already large enough", () => {
    const { node } = installed();
    node.size = new Float32Array([700, 500]);
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, []);
    assert.deepEqual([...node.size], [700, 500]);
  });

  test("never shrinks a node whose size is the Proxy of frontend 1.58", () => {
    const { node } = installed();
    node.size = proxiedSize(300, 106);
    node.needed = [212, 180]; // narrower than the node: the Audio Features node went 300 -> 212 px
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, [[300, 180]]);
  });

  test("grows the node to the text's width (deps.textSize) when the text is wider than the widgets", () => {
    const { node } = installed(AUDIO_INFO, testDeps({ textSize: () => [520, 60] }));
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, [[520, 180]]);
  });

  test("grows again when a later run's text needs more room, and only then", () => {
    let width = 450;
    const { node } = installed(AUDIO_INFO, testDeps({ textSize: () => [width, 60] }));
    node.onExecuted(AUDIO_MESSAGE);
    width = 640;
    node.onExecuted({ emo_audio: [{ duration: 99 }, { duration: 98 }] });
    node.onExecuted({ emo_audio: [{ duration: 99 }, { duration: 98 }] });
    assert.deepEqual(node.sizes, [[450, 180], [640, 180]]);
  });

  test("runs the resize through deps.schedule (after layout)", () => {
    const queued = [];
    const { node } = installed(AUDIO_INFO, testDeps({ schedule: (fn) => queued.push(fn) }));
    node.onExecuted(AUDIO_MESSAGE);
    assert.deepEqual(node.sizes, []);
    assert.equal(queued.length, 1);
    queued[0]();
    assert.deepEqual(node.sizes, [[400, 180]]);
  });

  test("tolerates nodes without sizing methods", () => {
    const node = { widgets: [] };
    const widget = showInfo(node, "emo_audio_info", "text", testDeps());
    assert.equal(widget.value, "text");
  });
});

describe("comfyDeps", () => {
  test("makes a read-only text box through node.addDOMWidget (public), not ComfyWidgets (internal)", () => {
    const node = new FakeNode();
    const widget = comfyDeps({}, fakeDocument).createTextWidget(node, "emo_audio_info");
    assert.equal(node.widgets.at(-1), widget);
    assert.equal(widget.element.tagName, "textarea");
    assert.equal(widget.element.readOnly, true);
    assert.equal(widget.options.serialize, false);
    widget.value = "two\nlines";
    assert.equal(widget.element.value, "two\nlines");
    assert.equal(widget.options.getMinHeight(), widget.options.getMaxHeight());
    assert.ok(widget.options.getMinHeight() > textLines("one").rows * 16);
  });

  test("falls back to a canvas text widget without addDOMWidget or without a document", () => {
    const plain = new FakeNode();
    plain.addDOMWidget = undefined;
    for (const [node, doc] of [[plain, fakeDocument], [new FakeNode(), undefined]]) {
      const widget = comfyDeps({}, doc).createTextWidget(node, "emo_face_info");
      assert.equal(widget.type, "text");
      assert.equal(widget.options.serialize, false);
    }
    assert.equal(addTextBox(plain, "x", fakeDocument), null);
  });

  test("measures the text without a canvas context by its longest line", () => {
    const node = new FakeNode();
    const deps = comfyDeps({}, fakeDocument);
    const widget = deps.createTextWidget(node, "emo_audio_info");
    widget.value = "short\na much longer second line";
    const [width, height] = deps.textSize(widget);
    widget.value = "short";
    const [narrow, low] = deps.textSize(widget);
    assert.ok(width > narrow && height > low, `${width}x${height} vs ${narrow}x${low}`);
  });

  test("schedules with requestAnimationFrame when there is one", () => {
    const queued = [];
    globalThis.requestAnimationFrame = (fn) => queued.push(fn);
    try {
      let ran = false;
      comfyDeps({}, fakeDocument).schedule(() => { ran = true; });
      assert.equal(ran, false);
      queued[0]();
      assert.equal(ran, true);
    } finally {
      delete globalThis.requestAnimationFrame;
    }
  });

  test("findNode matches numeric and string ids (frontend 1.27 and 1.58 graphs)", () => {
    const a = { id: 12 };
    const b = { id: "13" };
    const graph = { nodes: [a, b] };
    assert.equal(findNode(graph, "12"), a);
    assert.equal(findNode(graph, 13), b);
    assert.equal(findNode(graph, "14"), null);
    assert.equal(findNode(undefined, "12"), null);
    assert.equal(comfyDeps({ graph }, fakeDocument).findNode("12"), a);
  });
});

describe("installProgressDisplay", () => {
  const PROGRESS = { clip: 2, clips: 5, step: 3, steps: 20, node: "12", prompt_id: "p" };

  function setup() {
    const api = new FakeApi();
    const sampler = Object.assign(new FakeNode(), { id: 12, comfyClass: "EMO_Sampler", type: "EMO_Sampler" });
    const other = Object.assign(new FakeNode(), { id: 7, comfyClass: "KSampler", type: "KSampler" });
    const graph = { nodes: [other, sampler] };
    const deps = testDeps({ findNode: (id) => findNode(graph, id) });
    installProgressDisplay(api, deps);
    return { api, sampler, other, deps };
  }

  test("handles emo.progress (the frontend then no longer reports an unknown message type)", () => {
    const { api } = setup();
    assert.deepEqual(Object.keys(api.listeners), [PROGRESS_INFO.event]);
    assert.equal(PROGRESS_INFO.event, "emo.progress");
  });

  test("shows clip i of N and the step on the sampler the message names, updating one widget", () => {
    const { api, sampler } = setup();
    api.emit("emo.progress", PROGRESS);
    api.emit("emo.progress", { ...PROGRESS, clip: 3, step: 1 });
    const widgets = sampler.widgets.filter((w) => w.name === PROGRESS_INFO.widgetName);
    assert.equal(widgets.length, 1);
    assert.equal(widgets[0].value, "clip 3 of 5 \u00b7 step 1/20");
  });

  test("the progress text is display only: workflow and prompt unchanged", () => {
    const { api, sampler } = setup();
    const before = [workflowWidgetValues(sampler), promptInputs(sampler)];
    api.emit("emo.progress", PROGRESS);
    assert.deepEqual([workflowWidgetValues(sampler), promptInputs(sampler)], before);
  });

  test("ignores messages for other nodes, unknown nodes and malformed data", () => {
    const { api, sampler, other, deps } = setup();
    for (const detail of [{ ...PROGRESS, node: "7" }, { ...PROGRESS, node: "99" }, { node: "12" }, null, "x"]) {
      api.emit("emo.progress", detail);
    }
    assert.equal(sampler.widgets.length, 1);
    assert.equal(other.widgets.length, 1);
    assert.deepEqual(deps.warnings, []);
  });

  test("a failure while showing is logged, never thrown", () => {
    const api = new FakeApi();
    const deps = testDeps({ findNode: () => { throw new Error("no graph"); } });
    installProgressDisplay(api, deps);
    api.emit("emo.progress", PROGRESS);
    assert.equal(deps.warnings.length, 1);
  });
});

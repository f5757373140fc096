// Loads the real extension files of web/ against a stubbed ComfyUI app (see web_hooks.mjs): each
// registers one namespaced extension whose beforeRegisterNodeDef hooks only its own node, and the helper
// modules register nothing when ComfyUI imports them as extensions too.
import assert from "node:assert/strict";
import * as nodeModule from "node:module";
import { readdirSync } from "node:fs";
import { before, describe, test } from "node:test";

import { FakeApi, FakeNode, fakeDocument, makeNodeType, promptInputs, workflowWidgetValues } from "./fake_comfy.mjs";

const WEB = new URL("../../web/", import.meta.url);
const canRegister = typeof nodeModule.register === "function";
const skip = canRegister ? false : "needs node:module register (Node.js 18.19+ or 20.6+)";

const registered = [];
const graph = { nodes: [] };
globalThis.__EMO_COMFY_STUB__ = {
  app: { registerExtension: (extension) => registered.push(extension), graph },
  api: new FakeApi(),
};
globalThis.document ??= fakeDocument; // the text boxes are <textarea> elements

const byName = () => Object.fromEntries(registered.map((e) => [e.name, e]));

describe("web/ extension files", { skip }, () => {
  before(async () => {
    await import("./register_web_hooks.mjs"); // a no-op when preloaded with --import
    for (const helper of ["emo_format.js", "emo_hooks.js"]) await import(new URL(helper, WEB).href);
    assert.equal(registered.length, 0, "helper modules must not register extensions");
    // Every .js file, as ComfyUI's frontend imports each one found under WEB_DIRECTORY.
    for (const file of readdirSync(WEB).filter((f) => f.endsWith(".js")).sort()) {
      await import(new URL(file, WEB).href);
    }
  });

  test("registers EMO.AudioInfo, EMO.FacePreview, EMO.ModelInfo and EMO.SamplerProgress, nothing else", () => {
    assert.deepEqual(registered.map((e) => e.name).sort(),
      ["EMO.AudioInfo", "EMO.FacePreview", "EMO.ModelInfo", "EMO.SamplerProgress"]);
  });

  test("EMO.SamplerProgress listens to emo.progress at setup and shows it on the sampler", async () => {
    const { "EMO.SamplerProgress": progress } = byName();
    const { app, api } = globalThis.__EMO_COMFY_STUB__;
    assert.equal(api.listeners["emo.progress"], undefined);
    await progress.setup(app);
    assert.equal(api.listeners["emo.progress"].length, 1);
    const sampler = Object.assign(new FakeNode(), { id: 4, type: "EMO_Sampler", comfyClass: "EMO_Sampler" });
    graph.nodes.push(sampler);
    api.emit("emo.progress", { clip: 1, clips: 3, step: 2, steps: 25, node: "4", prompt_id: "p" });
    assert.equal(sampler.widgets.find((w) => w.name === "emo_progress").value, "clip 1 of 3 \u00b7 step 2/25");
  });

  test("hooks only the node each extension is for", async () => {
    const { "EMO.AudioInfo": audio, "EMO.FacePreview": face } = byName();
    const app = globalThis.__EMO_COMFY_STUB__.app;
    const others = makeNodeType();
    for (const ext of [audio, face]) await ext.beforeRegisterNodeDef(others, { name: "KSampler" }, app);
    assert.equal(others.prototype.onExecuted, undefined);

    const audioType = makeNodeType();
    await face.beforeRegisterNodeDef(audioType, { name: "EMO_AudioFeatures" }, app);
    await audio.beforeRegisterNodeDef(audioType, { name: "EMO_AudioFeatures" }, app);
    assert.equal(typeof audioType.prototype.onExecuted, "function");
  });

  test("the audio node shows its info in one read-only, unserialised text box", async () => {
    const { "EMO.AudioInfo": audio } = byName();
    const app = globalThis.__EMO_COMFY_STUB__.app;
    let previousCalls = 0;
    class Base extends FakeNode { onExecuted() { previousCalls += 1; return "kept"; } }
    const nodeType = makeNodeType(Base);
    await audio.beforeRegisterNodeDef(nodeType, { name: "EMO_AudioFeatures" }, app);
    const node = new nodeType();
    const before = { workflow: workflowWidgetValues(node), prompt: promptInputs(node) };
    const message = { emo_audio: [{ duration: 12.34, frames: 309, fps: 25, clips: 20, clip_length: 16,
      motion_frames: 2 }] };
    assert.equal(node.onExecuted(message), "kept");
    assert.equal(node.onExecuted(message), "kept");
    assert.equal(previousCalls, 2);
    const widgets = node.widgets.filter((w) => w.name === "emo_audio_info");
    assert.equal(widgets.length, 1);
    const widget = widgets[0];
    assert.equal(widget.element.tagName, "textarea");
    assert.equal(widget.value, "12.34 s \u00b7 309 frames @ 25 fps \u00b7 20 clips of 16 (2 motion)");
    assert.equal(widget.element.readOnly, true);
    assert.deepEqual({ workflow: workflowWidgetValues(node), prompt: promptInputs(node) }, before);
  });

  test("the model loader shows the family it loaded in emo_model_info", async () => {
    const { "EMO.ModelInfo": model } = byName();
    const nodeType = makeNodeType();
    await model.beforeRegisterNodeDef(nodeType, { name: "EMO_ModelLoader" }, globalThis.__EMO_COMFY_STUB__.app);
    const node = new nodeType();
    node.onExecuted({ emo_model: [{ model: "net.pth", family: "hallo", clip_length: 16, motion_frames: 2,
      motion_pixel_drop: 0 }] });
    assert.equal(node.widgets.find((w) => w.name === "emo_model_info").value, "Hallo \u00b7 clips of 16 (2 motion)");
  });

  test("the face locator shows its box line in emo_face_info", async () => {
    const { "EMO.FacePreview": face } = byName();
    const nodeType = makeNodeType();
    await face.beforeRegisterNodeDef(nodeType, { name: "EMO_FaceLocator" }, globalThis.__EMO_COMFY_STUB__.app);
    const node = new nodeType();
    node.onExecuted({ images: [{ filename: "f.png", subfolder: "", type: "temp" }],
      emo_face: [{ box: [0, 0, 64, 80], width: 128, height: 128, frames: 1, source: "mask" }] });
    assert.equal(node.widgets.find((w) => w.name === "emo_face_info").value,
      "face box 0,0 \u2013 64,80 (64\u00d780)\nimage 128\u00d7128 \u00b7 from mask");
  });
});

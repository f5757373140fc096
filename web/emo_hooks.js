// Glue between the ComfyUI frontend and emo_format.js, written against plain objects so it is unit-tested
// without a browser. No ComfyUI imports and no side effects on import: the per-feature files
// (emo_audio_info.js, emo_face_preview.js) pass in what they take from ComfyUI.
import { describeAudio, describeFace, describeModel, fitSize, formatProgress } from "./emo_format.js";

/** What each feature shows, on which node, in which widget. Widget names are namespaced "emo_". */
export const AUDIO_INFO = Object.freeze({
  nodeName: "EMO_AudioFeatures",
  widgetName: "emo_audio_info",
  describe: describeAudio,
});

export const FACE_INFO = Object.freeze({
  nodeName: "EMO_FaceLocator",
  widgetName: "emo_face_info",
  describe: describeFace,
});

/** The family the loader loaded (chosen by its `family` input, the file's metadata or its name). */
export const MODEL_INFO = Object.freeze({
  nodeName: "EMO_ModelLoader",
  widgetName: "emo_model_info",
  describe: describeModel,
});

/** The sampler's "clip i of N · step s/S", from the `emo.progress` messages the Python sampler sends. */
export const PROGRESS_INFO = Object.freeze({
  nodeName: "EMO_Sampler",
  widgetName: "emo_progress",
  event: "emo.progress",
  describe: formatProgress,
});

/**
 * Keep an info widget out of everything ComfyUI saves or sends, and make it read-only.
 *
 * `serialize = false`: left out of the workflow's widgets_values, so saved workflows are unchanged.
 * `options.serialize = false`: left out of the API prompt; ComfyUI's cache key includes every prompt input,
 * so a widget value there would re-run the node after each change of the text.
 */
export function prepareInfoWidget(widget) {
  widget.serialize = false;
  widget.options ??= {};
  widget.options.serialize = false;
  const element = widget.element ?? widget.inputEl;
  if (element) {
    element.readOnly = true;
    element.placeholder = ""; // a multiline text widget shows its name while the text is empty
    if (element.style) element.style.opacity = "0.75";
  } else {
    widget.disabled = true; // a canvas text widget: no edit prompt on click
  }
  return widget;
}

function schedule(deps, task) {
  (deps.schedule ?? ((fn) => fn()))(task);
}

/** Grow the node to fit its widgets and the widget's text (deps.textSize), never shrinking it. */
function fitNode(node, widget, deps) {
  const computed = node.computeSize?.();
  const text = deps.textSize?.(widget) ?? null;
  const needed = computed && text ? [Math.max(computed[0], text[0]), computed[1]] : computed;
  const size = fitSize(node.size, needed);
  if (size && (size[0] !== node.size?.[0] || size[1] !== node.size?.[1])) node.setSize?.(size);
  node.setDirtyCanvas?.(true, true);
}

/**
 * Show `text` in the node's widget named `widgetName`, creating it on first use and reusing it afterwards.
 * No widget is created for empty text; an existing one is cleared. Returns the widget or null.
 * deps.createTextWidget(node, name) -> widget makes the widget; deps.schedule(fn) runs fn after layout;
 * deps.textSize(widget) -> [width, height] (optional) is what the text needs, so the node never cuts it.
 */
export function showInfo(node, widgetName, text, deps) {
  let widget = node.widgets?.find((w) => w?.name === widgetName) ?? null;
  if (!widget) {
    if (!text) return null;
    widget = deps.createTextWidget(node, widgetName);
    if (!widget) return null;
    prepareInfoWidget(widget);
  }
  const changed = widget.value !== text;
  widget.value = text;
  if (changed && text) schedule(deps, () => fitNode(node, widget, deps));
  else node.setDirtyCanvas?.(true, true);
  return widget;
}

const LINE_HEIGHT = 16; // px per line of the read-only text box (ComfyUI's textarea font is about 13 px)
// A DOM widget's element sits inside a 10 px margin on each side (1.27 and 1.58); the textarea adds its own
// padding and border.
const BOX_PADDING = 34;
const BOX_EXTRA_HEIGHT = 2 * 10 + 10;

/** Lines of `text` and the length in characters of its longest line. */
export function textLines(text) {
  const lines = String(text ?? "").split("\n");
  return { rows: lines.length, longest: Math.max(...lines.map((line) => line.length)) };
}

/**
 * A read-only <textarea> as a DOM widget through LGraphNode.addDOMWidget (the frontend's documented way to
 * put an element on a node, in 1.27 and 1.58 alike), sized to its lines; null when there is no DOM.
 */
export function addTextBox(node, name, doc) {
  if (typeof node.addDOMWidget !== "function" || typeof doc?.createElement !== "function") return null;
  const element = doc.createElement("textarea");
  element.className = "comfy-multiline-input"; // the frontend's own text box look
  element.readOnly = true;
  element.wrap = "off"; // one line per entry; the node grows to the longest line instead
  Object.assign(element.style, { whiteSpace: "pre", overflow: "hidden", resize: "none" });
  return node.addDOMWidget(name, "emo_text", element, {
    serialize: false,
    getValue: () => element.value,
    setValue: (value) => { element.value = value ?? ""; },
    getMinHeight: () => textLines(element.value).rows * LINE_HEIGHT + BOX_EXTRA_HEIGHT,
    getMaxHeight: () => textLines(element.value).rows * LINE_HEIGHT + BOX_EXTRA_HEIGHT,
  });
}

/** [width, height] in px that the widget's text needs, measured with the element's font when possible. */
function measureText(widget, doc) {
  const element = widget?.element;
  const { rows, longest } = textLines(widget?.value);
  let width = longest * 7.5;
  const context = element && doc?.createElement?.("canvas")?.getContext?.("2d");
  const font = element && typeof getComputedStyle === "function" ? getComputedStyle(element).font : "";
  if (context && font) {
    context.font = font;
    width = Math.max(...String(widget.value).split("\n").map((line) => context.measureText(line).width));
  }
  return [Math.ceil(width) + BOX_PADDING, rows * LINE_HEIGHT + BOX_EXTRA_HEIGHT];
}

/**
 * The deps of showInfo built from what the frontend provides: a read-only text box (addTextBox), or a canvas
 * text widget when a frontend has no addDOMWidget; the resize runs on the next animation frame, after layout.
 */
export function comfyDeps(app, doc = globalThis.document) {
  return {
    createTextWidget(node, name) {
      return addTextBox(node, name, doc)
        ?? node.addWidget?.("text", name, "", () => {}, { serialize: false }) ?? null;
    },
    textSize: (widget) => measureText(widget, doc),
    schedule: typeof requestAnimationFrame === "function" ? (fn) => requestAnimationFrame(fn) : (fn) => fn(),
    findNode: (id) => findNode(app?.graph, id),
  };
}

/** The graph's node whose id is `id` (ids are numbers in 1.27 and may be strings in newer graphs), or null. */
export function findNode(graph, id) {
  if (id === null || id === undefined || !graph) return null;
  const nodes = graph.nodes ?? graph._nodes ?? [];
  return nodes.find((n) => String(n?.id) === String(id)) ?? null;
}

/**
 * Extend nodeType.prototype.onExecuted (chained: the previous handler runs first and its result is
 * returned) so that each run shows spec.describe(message) in the node's info widget.
 * Returns true when installed, false when nodeData is another node.
 */
export function installInfoDisplay(nodeType, nodeData, spec, deps) {
  if (nodeData?.name !== spec.nodeName || !nodeType?.prototype) return false;
  const warn = deps.warn ?? ((...args) => console.warn(...args));
  const previous = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const result = previous?.apply(this, arguments);
    try {
      showInfo(this, spec.widgetName, spec.describe(message), deps);
    } catch (err) {
      // Display only: a failure here must never break the run's other handlers.
      warn(`[EMO] could not show ${spec.widgetName}:`, err);
    }
    return result;
  };
  return true;
}

/**
 * Listen to the sampler's `emo.progress` websocket messages (api.addEventListener also tells the frontend
 * that the message type is handled) and show "clip i of N · step s/S" on the sampler node they name.
 * Messages for nodes not in the open graph, or for other node types, are ignored. Returns the listener.
 */
export function installProgressDisplay(api, deps, spec = PROGRESS_INFO) {
  const warn = deps.warn ?? ((...args) => console.warn(...args));
  const listener = (event) => {
    try {
      const data = event?.detail;
      const node = deps.findNode(data?.node);
      const type = node?.comfyClass ?? node?.type;
      if (!node || type !== spec.nodeName) return;
      showInfo(node, spec.widgetName, spec.describe(data), deps);
    } catch (err) {
      warn(`[EMO] could not show ${spec.widgetName}:`, err);
    }
  };
  api.addEventListener(spec.event, listener);
  return listener;
}

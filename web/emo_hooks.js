// Glue between the ComfyUI frontend and emo_format.js, written against plain objects so it is unit-tested
// without a browser. No ComfyUI imports and no side effects on import: the per-feature files
// (emo_audio_info.js, emo_face_preview.js) pass in what they take from ComfyUI.
import { describeAudio, describeFace, fitSize } from "./emo_format.js";

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
    element.placeholder = ""; // ComfyWidgets shows the widget name while the text is empty
    if (element.style) element.style.opacity = "0.75";
  } else {
    widget.disabled = true; // a canvas text widget: no edit prompt on click
  }
  return widget;
}

function schedule(deps, task) {
  (deps.schedule ?? ((fn) => fn()))(task);
}

/**
 * Show `text` in the node's widget named `widgetName`, creating it on first use and reusing it afterwards.
 * No widget is created for empty text; an existing one is cleared. Returns the widget or null.
 * deps.createTextWidget(node, name) -> widget makes the widget; deps.schedule(fn) runs fn after layout.
 */
export function showInfo(node, widgetName, text, deps) {
  let widget = node.widgets?.find((w) => w?.name === widgetName) ?? null;
  if (!widget) {
    if (!text) return null;
    widget = deps.createTextWidget(node, widgetName);
    if (!widget) return null;
    prepareInfoWidget(widget);
    widget.value = text;
    schedule(deps, () => {
      const size = fitSize(node.size, node.computeSize?.());
      if (size) node.setSize?.(size);
      node.setDirtyCanvas?.(true, true);
    });
    return widget;
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
  return widget;
}

/**
 * The deps of showInfo built from what the frontend provides: a read-only multiline text widget
 * (ComfyWidgets.STRING with multiline, as core's PreviewAny node uses), or a canvas text widget when an
 * old or future frontend lacks ComfyWidgets; the resize runs on the next animation frame, after layout.
 */
export function comfyDeps(app, ComfyWidgets) {
  return {
    createTextWidget(node, name) {
      const makeString = ComfyWidgets?.STRING;
      if (typeof makeString === "function") {
        return makeString(node, name, ["STRING", { multiline: true }], app)?.widget ?? null;
      }
      return node.addWidget?.("text", name, "", () => {}, { serialize: false }) ?? null;
    },
    schedule: typeof requestAnimationFrame === "function" ? (fn) => requestAnimationFrame(fn) : (fn) => fn(),
  };
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

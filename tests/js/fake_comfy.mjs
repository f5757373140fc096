// Minimal stand-ins for the ComfyUI frontend objects the EMO web glue touches (LGraphNode with addDOMWidget,
// a DOM text widget, document, the api's event target), plus the two serialisation rules of frontend 1.27
// that decide what a saved workflow and an API prompt contain. Test helper only: not a test file, not under web/.

/** A DOM textarea widget as a multiline STRING widget of the frontend looks. */
export function makeTextWidget(node, name) {
  const element = { value: "", placeholder: name, readOnly: false, style: {} };
  const widget = {
    name,
    type: "customtext",
    options: {},
    element,
    inputEl: element,
    get value() { return element.value; },
    set value(v) { element.value = v; },
  };
  node.widgets ??= [];
  node.widgets.push(widget);
  return widget;
}

/** A node with one regular widget (like EMO_AudioFeatures' fps) and LiteGraph's sizing methods. */
export class FakeNode {
  constructor() {
    this.widgets = [{ name: "fps", type: "number", value: 25, options: {} }];
    this.size = new Float32Array([315, 106]);
    this.needed = [400, 180];
    this.dirty = 0;
    this.sizes = [];
  }
  computeSize() { return [...this.needed]; }
  setSize(size) { this.size = new Float32Array(size); this.sizes.push([...size]); }
  setDirtyCanvas() { this.dirty += 1; }
  /** LGraphNode.addDOMWidget as frontends 1.27 and 1.58 define it: value reads and writes through options. */
  addDOMWidget(name, type, element, options = {}) {
    const widget = {
      name, type, element, options: { hideOnZoom: true, ...options },
      get value() { return this.options.getValue?.() ?? ""; },
      set value(v) { this.options.setValue?.(v); },
    };
    this.widgets.push(widget);
    return widget;
  }
  addWidget(type, name, value, callback, options) {
    const widget = { type, name, value, callback, options: options ?? {} };
    this.widgets.push(widget);
    return widget;
  }
}

/** A constructor whose prototype the glue extends, as beforeRegisterNodeDef receives it. */
export function makeNodeType(base = FakeNode) {
  return class extends base {};
}

/** LGraphNode.serialize: widgets_values skips widgets with serialize === false. */
export function workflowWidgetValues(node) {
  const values = [];
  for (const [i, widget] of node.widgets.entries()) {
    if (widget.serialize === false) continue;
    values[i] = widget ? widget.value : null;
  }
  return values;
}

/** graphToPrompt: the prompt's inputs skip widgets with options.serialize === false. */
export function promptInputs(node) {
  const inputs = {};
  for (const widget of node.widgets) {
    if (!widget.name || widget.options?.serialize === false) continue;
    inputs[widget.name] = widget.value;
  }
  return inputs;
}

/** deps for showInfo/installInfoDisplay that run the resize at once and record warnings. */
export function testDeps(overrides = {}) {
  const warnings = [];
  return {
    warnings,
    createTextWidget: makeTextWidget,
    schedule: (fn) => fn(),
    warn: (...args) => warnings.push(args),
    ...overrides,
  };
}

/** document.createElement for a textarea (and a canvas without a 2D context, as in a test without DOM). */
export const fakeDocument = {
  created: [],
  createElement(tag) {
    const element = tag === "canvas" ? { getContext: () => null } : { tagName: tag, value: "", style: {} };
    this.created.push(element);
    return element;
  },
};

/** The part of ComfyApi the progress display uses: an event target that remembers listeners per type. */
export class FakeApi {
  constructor() { this.listeners = {}; }
  addEventListener(type, fn) { (this.listeners[type] ??= []).push(fn); }
  emit(type, detail) { for (const fn of this.listeners[type] ?? []) fn({ type, detail }); }
}

/** The Proxy around node.size that frontend 1.58 hands out (a typed array's length getter throws through it). */
export function proxiedSize(width, height) {
  return new Proxy(new Float32Array([width, height]), {});
}

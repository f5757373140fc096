// Module hooks (node:module register) for the web/ tests; registered by register_web_hooks.mjs. Test helper only.
// 1. web/*.js are ES modules, but web/ has no package.json saying so (ComfyUI serves the folder as is), and
//    Node.js before 20.19/22.7 does not detect module syntax in .js files: mark them as modules.
// 2. The ComfyUI modules that web/*.js import as "../../scripts/app.js" and "../../scripts/api.js" resolve
//    to stubs that hand out whatever the test put on globalThis.__EMO_COMFY_STUB__ before importing the glue.
const WEB_JS = /\/web\/[^/]+\.js$/;
const STUBS = {
  "../../scripts/app.js": "export const app = globalThis.__EMO_COMFY_STUB__.app;",
  "../../scripts/api.js": "export const api = globalThis.__EMO_COMFY_STUB__.api;",
};

export async function resolve(specifier, context, nextResolve) {
  if (Object.hasOwn(STUBS, specifier) && WEB_JS.test(context.parentURL ?? "")) {
    return { url: `data:text/javascript,${encodeURIComponent(STUBS[specifier])}`, shortCircuit: true };
  }
  const resolved = await nextResolve(specifier, context);
  if (resolved.url.startsWith("file:") && WEB_JS.test(resolved.url)) return { ...resolved, format: "module" };
  return resolved;
}

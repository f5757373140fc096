// Registers web_hooks.mjs. The pytest wrapper preloads it for every test file:
//   node --import ./tests/js/register_web_hooks.mjs --test tests/js/*.test.mjs
// Test helper only.
import { register } from "node:module";

if (!globalThis.__EMO_WEB_HOOKS__) {
  register("./web_hooks.mjs", import.meta.url);
  globalThis.__EMO_WEB_HOOKS__ = true;
}

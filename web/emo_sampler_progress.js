// EMO.SamplerProgress: while EMO_Sampler runs, the node shows "clip i of N · step s/S" from the sampler's
// `emo.progress` websocket messages (display only: not saved in the workflow, not sent with the prompt).
// ComfyUI's own progress bar shows the steps of all clips together; this says which clip is running.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { comfyDeps, installProgressDisplay } from "./emo_hooks.js";

app.registerExtension({
  name: "EMO.SamplerProgress",
  async setup(comfyApp) {
    installProgressDisplay(api, comfyDeps(comfyApp ?? app));
  },
});

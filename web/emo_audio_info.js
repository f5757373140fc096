// EMO.AudioInfo: after a run, EMO_AudioFeatures shows the audio's duration, frame count and clips.
// Only the frontend's public modules (scripts/app.js, scripts/api.js) are imported: newer frontends warn on
// every page about extensions importing internal ones such as scripts/widgets.js.
import { app } from "../../scripts/app.js";
import { AUDIO_INFO, comfyDeps, installInfoDisplay } from "./emo_hooks.js";

app.registerExtension({
  name: "EMO.AudioInfo",
  async beforeRegisterNodeDef(nodeType, nodeData, comfyApp) {
    installInfoDisplay(nodeType, nodeData, AUDIO_INFO, comfyDeps(comfyApp ?? app));
  },
});

// EMO.AudioInfo: after a run, EMO_AudioFeatures shows the audio's duration, frame count and clips.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";
import { AUDIO_INFO, comfyDeps, installInfoDisplay } from "./emo_hooks.js";

app.registerExtension({
  name: "EMO.AudioInfo",
  async beforeRegisterNodeDef(nodeType, nodeData, comfyApp) {
    installInfoDisplay(nodeType, nodeData, AUDIO_INFO, comfyDeps(comfyApp ?? app, ComfyWidgets));
  },
});

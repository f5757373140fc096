// EMO.ModelInfo: after a run, EMO_ModelLoader shows the checkpoint family it loaded and its clip settings.
import { app } from "../../scripts/app.js";
import { MODEL_INFO, comfyDeps, installInfoDisplay } from "./emo_hooks.js";

app.registerExtension({
  name: "EMO.ModelInfo",
  async beforeRegisterNodeDef(nodeType, nodeData, comfyApp) {
    installInfoDisplay(nodeType, nodeData, MODEL_INFO, comfyDeps(comfyApp ?? app));
  },
});

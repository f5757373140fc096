// EMO.FacePreview: after a run, EMO_FaceLocator shows the face box and its source under the preview image
// (the image itself is ComfyUI's own preview of the node's "images" ui output).
import { app } from "../../scripts/app.js";
import { FACE_INFO, comfyDeps, installInfoDisplay } from "./emo_hooks.js";

app.registerExtension({
  name: "EMO.FacePreview",
  async beforeRegisterNodeDef(nodeType, nodeData, comfyApp) {
    installInfoDisplay(nodeType, nodeData, FACE_INFO, comfyDeps(comfyApp ?? app));
  },
});

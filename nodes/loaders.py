"""Loader nodes: the EMO model (models/emo), the audio encoder (models/audio_encoders), and the optional
face-identity model (models/insightface)."""
from __future__ import annotations

import logging

from ..emo_core.checkpoint import FAMILY_CHOICES
from ..emo_core.compile import COMPILE_MODES
from . import comfy_services as services
from .comfy_services import mediapipe_dirs
from .handles import AudioEncoder, EmoModel, FaceEmbedderHandle

log = logging.getLogger(__name__)
PRECISIONS = ["auto", "fp16", "bf16", "fp32"]
# wav2vec2 as .safetensors; OpenAI's whisper checkpoints (EchoMimic's whisper_tiny.pt) are .pt pickles, read
# with torch.load(weights_only=True) only (emo_core.pickle_safety).
AUDIO_ENCODER_EXTENSIONS = {".safetensors", ".pt"}
FAMILY_TOOLTIP = ("Checkpoint family. auto: from the file's metadata, else its name (a file or folder name with "
                  "'hallo2' loads as Hallo2), else Hallo for Hallo-layout files; EchoMimic is told by its keys. "
                  "Hallo and Hallo2 share one file "
                  "layout: choose which inference rules apply (Hallo2 drops 25% of the motion-frame pixels "
                  "outside the face box).")

COMPILE_TOOLTIP = ("torch.compile the denoising UNet (one graph, no host syncs). off: eager. The first sampling "
                   "step of each new size compiles (minutes on CPU for the full-size network; see the README), "
                   "later steps and clips reuse it. Needs a C++ compiler on CPU (Triton on NVIDIA GPUs).")


def _choices(names: list[str], folder: str) -> list[str]:
    # An empty dropdown breaks the graph; a placeholder makes the missing file a readable error instead.
    return names or [f"(no files in models/{folder})"]


class EmoModelLoader:
    """Loads an EMO network: a native EMO .safetensors or a Hallo / Hallo2 net.pth / .safetensors."""
    CATEGORY = "EMO/loaders"
    RETURN_TYPES = ("EMO_MODEL",)
    RETURN_NAMES = ("emo_model",)
    FUNCTION = "load"
    DESCRIPTION = ("Load an EMO, Hallo, Hallo2 or EchoMimic v1 checkpoint from models/emo; it reports the family "
                   "it loaded and the defaults (steps, CFG, fps) the sampler and audio nodes take at 0 / -1.")

    @classmethod
    def INPUT_TYPES(cls):
        names = _choices(services.list_models(services.EMO_FOLDER), services.EMO_FOLDER)
        return {"required": {
            "model_name": (names, {"tooltip": "Checkpoint in models/emo: Hallo's or Hallo2's net.pth (or "
                                              ".safetensors), a native EMO .safetensors, or EchoMimic v1: "
                                              "denoising_unet.pth in the folder with its four files "
                                              "(denoising_unet_acc.pth for the 6-step weights)."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": "Weights dtype; auto follows ComfyUI's "
                                                                      "choice for this device."}),
        }, "optional": {
            "family": (list(FAMILY_CHOICES), {"default": "auto", "tooltip": FAMILY_TOOLTIP}),
            "compile": (list(COMPILE_MODES), {"default": "off", "tooltip": COMPILE_TOOLTIP}),
        }}

    def load(self, model_name, precision, family="auto", compile="off"):
        from ..emo_core.checkpoint import load_network
        from ..emo_core.compile import compile_unet

        path = services.model_path(services.EMO_FOLDER, model_name, services.MODEL_EXTENSIONS)
        device = services.torch_device()
        dtype = services.choose_dtype(precision, device)
        net = load_network(path, dtype=dtype, device=services.offload_device(), family=family)
        compile_unet(net, compile)
        cfg = net.config
        log.info("EMO model %s: family %s (asked: %s), %s on %s", model_name, cfg.family, family, dtype, device)
        info = {"model": model_name, "family": cfg.family, "clip_length": cfg.clip_length,
                "motion_frames": cfg.motion_frames, "motion_pixel_drop": cfg.motion_pixel_drop,
                "long_video": cfg.long_video, "context_overlap": cfg.context_overlap,
                "steps": cfg.default_steps, "cfg": cfg.guidance_scale, "fps": cfg.default_fps,
                "speed": cfg.speed is not None}
        return {"ui": {"emo_model": [info]},
                "result": (EmoModel(net, path, device, dtype, services.wrap_model(net, device)),)}


class EmoAudioEncoderLoader:
    """Loads the audio encoder: wav2vec2 (EMO, Hallo: e.g. wav2vec2-base-960h as a single safetensors file or a
    Hugging Face folder) or whisper (EchoMimic: its whisper_tiny.pt, or a Hugging Face whisper folder)."""
    CATEGORY = "EMO/loaders"
    RETURN_TYPES = ("EMO_AUDIO_ENCODER",)
    RETURN_NAMES = ("audio_encoder",)
    FUNCTION = "load"
    DESCRIPTION = "Load a wav2vec2 (EMO, Hallo) or whisper (EchoMimic) audio encoder from models/audio_encoders."

    @classmethod
    def INPUT_TYPES(cls):
        names = services.list_models(services.AUDIO_FOLDER, AUDIO_ENCODER_EXTENSIONS, with_dirs=True)
        return {"required": {"encoder_name": (_choices(names, services.AUDIO_FOLDER), {
            "tooltip": "EMO and Hallo: wav2vec2-base-960h (ComfyUI's single-file .safetensors or the Hugging Face "
                       "folder). EchoMimic: its whisper_tiny.pt (OpenAI's whisper-tiny) or a whisper folder."})}}

    def load(self, encoder_name):
        from ..emo_core.wav2vec import load_wav2vec
        from ..emo_core.whisper_model import is_whisper, load_whisper

        path = services.model_path(services.AUDIO_FOLDER, encoder_name, AUDIO_ENCODER_EXTENSIONS, allow_dir=True)
        kind = "whisper" if is_whisper(path) else "wav2vec2"
        # fp32 always: the encoders are small, and Hallo's and EchoMimic's features are computed in fp32.
        load = load_whisper if kind == "whisper" else load_wav2vec
        model = load(path, device=services.offload_device())
        device = services.torch_device()
        log.info("audio encoder %s: %s", encoder_name, kind)
        return (AudioEncoder(model, path, device, services.wrap_model(model, device), kind),)


class EmoFaceEmbedderLoader:
    """Loads insightface's ArcFace recognition model (w600k_r50.onnx) for Hallo's identity tokens."""
    CATEGORY = "EMO/loaders"
    RETURN_TYPES = ("EMO_FACE_EMBEDDER",)
    RETURN_NAMES = ("face_embedder",)
    FUNCTION = "load"
    DESCRIPTION = "Face-identity model for Hallo checkpoints (needs onnxruntime)."

    @classmethod
    def INPUT_TYPES(cls):
        names = services.list_models("insightface", services.ONNX_EXTENSIONS)
        return {"required": {"model_name": (_choices(names, "insightface"), {
            "tooltip": "w600k_r50.onnx from insightface's buffalo_l pack, e.g. "
                       "models/insightface/models/buffalo_l/w600k_r50.onnx."})}}

    def load(self, model_name):
        from ..emo_core.identity import FaceEmbedder

        path = services.model_path("insightface", model_name, services.ONNX_EXTENSIONS)
        dirs = mediapipe_dirs()
        return (FaceEmbedderHandle(FaceEmbedder(path), dirs),)

"""EMO_AudioFeatures: ComfyUI AUDIO -> per-frame audio features for the connected model, with the frame count
and fps: wav2vec2 features (EMO, Hallo) or whisper tokens (EchoMimic v1), picked by the model's family."""
from __future__ import annotations

import math

from ..emo_core.audio import AudioSettings, extract_audio_features
from ..emo_core.errors import InvalidInputError
from . import comfy_services as services
from .handles import AudioFeaturesHandle
from .memory_check import check_audio_features, check_whisper_features

ENCODER_FILES = {"wav2vec2": "wav2vec2-base-960h (single .safetensors or Hugging Face folder)",
                 "whisper": "EchoMimic's whisper_tiny.pt (or a Hugging Face whisper folder)"}


def needed_encoder(emo_model) -> str:
    """'whisper' for EchoMimic models, else 'wav2vec2' (EMO and Hallo)."""
    return "whisper" if getattr(emo_model.config, "family", "") == "echomimic" else "wav2vec2"


def _check_encoder(emo_model, audio_encoder) -> str:
    needed, kind = needed_encoder(emo_model), getattr(audio_encoder, "kind", "wav2vec2")
    if kind != needed:
        family = getattr(emo_model.config, "family", "") or "this"
        raise InvalidInputError(f"the {family} model needs a {needed} audio encoder but a {kind} one is connected; "
                                f"load {ENCODER_FILES[needed]} with EMO Audio Encoder Loader")
    return needed


def _audio_info(audio, feats, fps) -> dict:
    waveform = audio["waveform"]
    return {"duration": round(feats.duration, 3), "frames": feats.num_frames, "fps": fps,
            "sample_rate": int(audio["sample_rate"]), "channels": int(waveform.shape[-2]) if waveform.dim() >= 2 else 1}


class EmoAudioFeatures:
    """Audio -> wav2vec2 features of every video frame (EMO, Hallo) or whisper tokens (EchoMimic)."""
    CATEGORY = "EMO/conditioning"
    RETURN_TYPES = ("EMO_AUDIO_FEATURES", "INT", "FLOAT")
    RETURN_NAMES = ("audio_features", "frame_count", "fps")
    OUTPUT_TOOLTIPS = ("Features for EMO Sampler.", "Video frames: ceil(duration x fps).",
                       "The frame rate, for Create Video.")
    FUNCTION = "extract"
    DESCRIPTION = ("Extract the audio features the model was trained on: all wav2vec2 layers with 2 frames of "
                   "context each side (EMO, Hallo), or whisper-tiny tokens, 10 whisper frames per video frame "
                   "(EchoMimic v1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": ("EMO_MODEL", {"tooltip": "The model the features are for (its family picks the encoder, "
                                                   "its clip length the padding)."}),
            "audio_encoder": ("EMO_AUDIO_ENCODER", {"tooltip": "From EMO Audio Encoder Loader: wav2vec2 for EMO "
                                                               "and Hallo, whisper_tiny.pt for EchoMimic."}),
            "audio": ("AUDIO", {"tooltip": "Speech or singing from Load Audio; any rate, mono or stereo."}),
            "fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0, "step": 0.5,
                              "tooltip": "Video frame rate. 0 = the loaded model's: 25 for EMO, Hallo and Hallo2 "
                                         "(their training rate), 24 for EchoMimic. The fps output carries it on."}),
        }}

    def extract(self, emo_model, audio_encoder, audio, fps):
        if fps <= 0:
            fps = float(emo_model.config.default_fps)
        if _check_encoder(emo_model, audio_encoder) == "whisper":
            return self._whisper(emo_model, audio_encoder, audio, fps)
        cfg = emo_model.config
        settings = AudioSettings(fps=fps, window=cfg.audio_projection.window, clip_length=cfg.clip_length)
        check_audio_features(audio, fps, cfg.clip_length, audio_encoder.model)
        model = services.load_on_device(audio_encoder.model, audio_encoder.patcher, audio_encoder.device)
        feats = extract_audio_features(model, audio, settings)
        feats = feats.on_host()  # one clip at a time goes back to the device
        info = {**_audio_info(audio, feats, fps), "clips": math.ceil(feats.num_frames / cfg.clip_length),
                "clip_length": cfg.clip_length, "motion_frames": cfg.motion_frames}
        handle = AudioFeaturesHandle(feats, cfg.clip_length, cfg.motion_frames)
        return {"ui": {"emo_audio": [info]}, "result": (handle, feats.num_frames, float(fps))}

    def _whisper(self, emo_model, audio_encoder, audio, fps):
        from ..emo_core.whisper_audio import extract_whisper_features

        cfg = emo_model.config
        check_whisper_features(audio, audio_encoder.model)
        model = services.load_on_device(audio_encoder.model, audio_encoder.patcher, audio_encoder.device)
        feats = extract_whisper_features(model, audio, fps, check_cancel=services.check_interrupt).on_host()
        # EchoMimic samples in overlapping context windows, not clips: no clip padding, no motion frames.
        handle = AudioFeaturesHandle(feats, getattr(cfg, "clip_length", 1), getattr(cfg, "motion_frames", 0))
        return {"ui": {"emo_audio": [_audio_info(audio, feats, fps)]},
                "result": (handle, feats.num_frames, float(fps))}

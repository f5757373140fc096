"""EMO_AudioFeatures: ComfyUI AUDIO -> per-frame wav2vec2 features, with the frame count and fps."""
from __future__ import annotations

import math

from ..emo_core.audio import AudioSettings, extract_audio_features
from . import comfy_services as services
from .handles import AudioFeaturesHandle
from .memory_check import check_audio_features


class EmoAudioFeatures:
    """Audio -> wav2vec2 features of every video frame, padded to whole clips of the model."""
    CATEGORY = "EMO/conditioning"
    RETURN_TYPES = ("EMO_AUDIO_FEATURES", "INT", "FLOAT")
    RETURN_NAMES = ("audio_features", "frame_count", "fps")
    OUTPUT_TOOLTIPS = ("Features for EMO Sampler.", "Video frames: ceil(duration x fps).",
                       "The frame rate, for Create Video.")
    FUNCTION = "extract"
    DESCRIPTION = "Extract Hallo-compatible audio features (all wav2vec2 layers, 2 frames of context each side)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": ("EMO_MODEL", {"tooltip": "The model the features are for (its clip length)."}),
            "audio_encoder": ("EMO_AUDIO_ENCODER", {"tooltip": "From EMO Audio Encoder Loader (wav2vec2)."}),
            "audio": ("AUDIO", {"tooltip": "Speech or singing from Load Audio; any rate, mono or stereo."}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 60.0, "step": 0.5,
                              "tooltip": "Video frame rate; Hallo was trained at 25."}),
        }}

    def extract(self, emo_model, audio_encoder, audio, fps):
        cfg = emo_model.config
        settings = AudioSettings(fps=fps, window=cfg.audio_projection.window, clip_length=cfg.clip_length)
        check_audio_features(audio, fps, cfg.clip_length, audio_encoder.model)
        model = services.load_on_device(audio_encoder.model, audio_encoder.patcher, audio_encoder.device)
        feats = extract_audio_features(model, audio, settings)
        feats = feats.on_host()  # one clip at a time goes back to the device
        waveform = audio["waveform"]
        info = {"duration": round(feats.duration, 3), "frames": feats.num_frames, "fps": fps,
                "clips": math.ceil(feats.num_frames / cfg.clip_length), "clip_length": cfg.clip_length,
                "motion_frames": cfg.motion_frames, "sample_rate": int(audio["sample_rate"]),
                "channels": int(waveform.shape[-2]) if waveform.dim() >= 2 else 1}
        handle = AudioFeaturesHandle(feats, cfg.clip_length, cfg.motion_frames)
        return {"ui": {"emo_audio": [info]}, "result": (handle, feats.num_frames, float(fps))}

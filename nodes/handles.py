"""Handles passed between our nodes (types EMO_MODEL, EMO_AUDIO_ENCODER, EMO_REFERENCE, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..emo_core.errors import InvalidInputError


@dataclass(eq=False)
class EmoModel:
    """EMO_MODEL: the network on its offload device, the ComfyUI ModelPatcher (or None) and its file."""
    net: Any
    path: str
    device: torch.device
    dtype: torch.dtype
    patcher: Any = None

    @property
    def config(self):
        return self.net.config

    def same_weights(self, other: EmoModel) -> bool:
        """This handle or another load of the same weights: ComfyUI may run the loader again and still keep
        a reference encoded with the first load."""
        if self is other:
            return True
        mine = getattr(self.net, "fingerprint", None)
        return mine is not None and mine == getattr(other.net, "fingerprint", None)


@dataclass(eq=False)
class AudioEncoder:
    """EMO_AUDIO_ENCODER: a transformers Wav2Vec2Model or WhisperEncoder in eval mode (fp32, on its offload
    device), its file or folder, ComfyUI's ModelPatcher (or None) and its kind: "wav2vec2" (EMO, Hallo) or
    "whisper" (EchoMimic)."""
    model: Any
    path: str
    device: torch.device = torch.device("cpu")
    patcher: Any = None
    kind: str = "wav2vec2"


@dataclass(eq=False)
class FaceEmbedderHandle:
    """EMO_FACE_EMBEDDER: emo_core.identity.FaceEmbedder and the MediaPipe folders for its keypoints."""
    embedder: Any
    landmark_dirs: list = field(default_factory=list)


@dataclass(eq=False)
class Reference:
    """EMO_REFERENCE: the portrait's unscaled latent (4, h, w), its identity embedding (E,) or None,
    its ReferenceNet features (computed once, for guided sampling) and the model they belong to; `image`:
    the portrait (H, W, 3) 0..1 it was encoded from (Hallo2 drops pixels of its copies on the first clip)."""
    latent: torch.Tensor
    identity: torch.Tensor | None
    features: Any
    model: EmoModel
    image_size: tuple[int, int]
    image: torch.Tensor | None = None


@dataclass(eq=False)
class AudioFeaturesHandle:
    """EMO_AUDIO_FEATURES: emo_core.audio.AudioFeatures and the clip settings they were padded for."""
    features: Any
    clip_length: int
    motion_frames: int


@dataclass(eq=False)
class FaceRegionHandle:
    """EMO_FACE_REGION: emo_core.face.FaceRegion and, for Hallo checkpoints, its full/face/lip masks."""
    region: Any
    hallo_masks: Any = None


@dataclass(eq=False)
class SpeedSchedule:
    """EMO_SPEED: head speed in rad/s per output frame, made on demand for the video's frame count.

    kind: constant | keyframes | measured. value: the speed, the keyframes, or (speeds (n,), fps).
    """
    kind: str
    value: Any

    def per_frame(self, frames: int, fps: float) -> torch.Tensor:
        from ..emo_core import speed

        if self.kind == "constant":
            return speed.constant_speed(self.value, frames)
        if self.kind == "keyframes":
            # Keyframes may lie past the audio (the node default does under 4 s): keep the schedule's start.
            return speed.keyframe_speed(self.value, frames, past_end="cut")
        measured, video_fps = self.value
        if measured.shape[0] / video_fps < frames / fps - 1e-9:
            raise InvalidInputError(f"the driving video's head speed covers {measured.shape[0] / video_fps:.2f} s "
                                    f"({measured.shape[0]} frames at {video_fps:g} fps) but the audio lasts "
                                    f"{frames / fps:.2f} s ({frames} frames at {fps:g} fps); use a driving video at "
                                    "least as long as the audio, or trim the audio")
        # A driving video at another frame rate: sample its speed at each output frame's time.
        t = torch.arange(frames, dtype=torch.float64) / fps * video_fps
        return measured[t.round().long().clamp(0, measured.shape[0] - 1)]


@dataclass(eq=False)
class CropHandle:
    """EMO_CROP: where EMO Face Crop cut its square (emo_core.face_crop.FaceCrop) and the image it cut it from
    ((B, H, W, C) 0..1 as given, not a copy), which EMO Save Video (Streaming) pastes the frames back into."""
    crop: Any
    image: torch.Tensor

"""What one `emo-render` run is asked for: sampling, video and device settings, checked before any model loads."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..scheduling import SAMPLERS

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class RenderSettings:
    """steps 0, cfg < 0 and fps 0 take the loaded family's defaults, as on the nodes. speed: head speed in
    rad/s (EMO checkpoints only). size: the portrait is cropped to a centred square and resized to size x size
    (a multiple of 8). motion_scale: Hallo's (pose, face, lip) weights. device: auto (CUDA when available,
    else CPU), cpu, cuda, cuda:N or mps; dtype: auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16."""
    steps: int = 0
    cfg: float = -1.0
    seed: int = 0
    fps: float = 0.0
    speed: float = 1.0
    size: int = 512
    sampler: str = "ddim"
    expand_ratio: float = 1.2
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crf: int = 19
    chunk_frames: int = 16
    device: str = "auto"
    dtype: str = "auto"

    def validate(self) -> RenderSettings:
        checks = (
            (self.steps >= 0, "steps", "need >= 0 (0 = the family's)"),
            (self.cfg >= 0 or self.cfg == -1, "cfg", "need >= 0, or -1 for the family's"),
            (0 <= self.seed <= 2**64 - 1, "seed", "need 0..2^64-1"),
            (self.fps == 0 or 1 <= self.fps <= 240, "fps", "need 1..240, or 0 for the family's"),
            (0 <= self.speed <= 4.0, "speed", "need 0..4 rad/s"),
            (self.size >= 64 and self.size % 8 == 0, "size", "need a multiple of 8, at least 64 (512 suits Hallo)"),
            (self.sampler in SAMPLERS, "sampler", f"choose one of {', '.join(SAMPLERS)}"),
            (1.0 <= self.expand_ratio <= 3.0, "expand_ratio", "need 1..3"),
            (all(0 <= w <= 3 for w in self.motion_scale), "motion_scale", "need weights 0..3"),
            (0 <= self.crf <= 51, "crf", "need 0..51"),
            (self.chunk_frames >= 1, "chunk_frames", "need >= 1"),
            (self.dtype == "auto" or self.dtype in DTYPES, "dtype", f"choose auto, {', '.join(DTYPES)}"),
            (self.device.split(":")[0] in DEVICES, "device", f"choose {', '.join(DEVICES)} or cuda:N"),
        )
        for ok, name, what in checks:
            if not ok:
                raise InvalidInputError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {what}")
        return self

    def with_job(self, seed: int | None, steps: int | None, speed: float | None) -> RenderSettings:
        """These settings with a job list row's own seed, steps and speed where it gives them."""
        changes = {k: v for k, v in (("seed", seed), ("steps", steps), ("speed", speed)) if v is not None}
        return dataclasses.replace(self, **changes).validate()


def torch_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else CPU (the nodes' choice without ComfyUI)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {name}: this torch has no CUDA device; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = fp16 on CUDA, else fp32 (the loader node's choice without ComfyUI)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]

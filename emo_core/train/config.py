"""Training configuration: one frozen dataclass per run, read from a TOML file per stage (configs/*.toml).

Paper values (EMO, arXiv 2402.17485, section 4.1) are the defaults: learning rate 1e-5, f = 12 frames per clip,
n = 4 motion frames, m = 2 (audio/speed windows of 2m+1 frames, a network setting), batch 48 for the image stage
and 4 for the video stages. The CFG dropout rates are Hallo's (uncond_img_ratio / uncond_audio_ratio 0.05); the
paper gives none.
"""
from __future__ import annotations

import dataclasses
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..errors import InvalidConfigError

STAGES = ("stage1", "stage2", "stage3", "hallo_speed")
GROUPS = ("reference", "backbone", "face_locator", "identity", "temporal", "audio", "speed")
PRECISIONS = ("no", "fp16", "bf16")
SHARDINGS = ("none", "fsdp")
# Which parameter groups train in each stage (paper 4.1; stages.py says which tensors a group holds).
STAGE_GROUPS = {
    "stage1": ("reference", "backbone", "face_locator"),
    "stage2": ("temporal", "audio"),
    "stage3": ("temporal", "speed"),  # audio frozen: the paper keeps speed from taking over the audio's role
    "hallo_speed": ("speed",),
}


def _require(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise InvalidConfigError(f"training config field {name}={value!r} is invalid: {what}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    network: "emo" (emo_preset), "hallo" (hallo_preset + EMO speed layers) or a .json file holding an
    EmoNetConfig (EmoNetConfig.to_json); ignored when `init_from` is a native EMO file (its config is used).
    init_from: the previous stage's native EMO .safetensors (stages 2, 3) or a Hallo checkpoint (hallo_speed).
    sd_unet: stage 1's SD 1.5 UNet (diffusers folder or diffusers-layout .safetensors). animatediff: stage 2's
    mm_sd_v15(-v2) motion module file. vae: a diffusers AutoencoderKL folder used when a sample has no
    precomputed latents; "none" is a test/debug option that average-pools frames 8x to 4 channels instead.
    batch_size: the global batch (all processes x gradient_accumulation_steps x per-step micro batch).
    trainable: parameter groups to train (GROUPS); empty = the stage's default (STAGE_GROUPS).
    sample_every: steps between sample clips (0 = none), `sample_steps` denoising steps each. preview_data: a
    folder of prepared shards held out from training ("" = the training data); preview_samples: which of its
    samples (indices in shard order), one clip each; preview_frames: frames per clip (0 = the whole sample).
    sharding: "none" (every process holds the whole network; DDP across processes) or "fsdp" (torch FSDP2: the
    weights, gradients, AdamW moments and EMA are split over the processes, gathered block by block as they run;
    needs 2 or more processes and mixed_precision "bf16" or "no"). See sharding.py.
    """
    stage: str = "stage3"
    network: str = "emo"
    init_from: str = ""
    sd_unet: str = ""
    animatediff: str = ""
    vae: str = ""
    trainable: tuple[str, ...] = ()
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 30000
    clip_frames: int = 12
    motion_frames: int = 4
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    ema: bool = True
    ema_decay: float = 0.9999
    drop_audio: float = 0.05
    drop_reference: float = 0.05
    seed: int = 42
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 1000
    sample_steps: int = 20
    preview_data: str = ""
    preview_samples: tuple[int, ...] = (0,)
    preview_frames: int = 0
    num_workers: int = 2
    sharding: str = "none"

    def groups(self) -> tuple[str, ...]:
        return self.trainable or STAGE_GROUPS[self.stage]

    def validate(self) -> TrainConfig:
        _require(self.stage in STAGES, "stage", self.stage, f"choose one of {STAGES}")
        _require(all(g in GROUPS for g in self.trainable), "trainable", self.trainable, f"groups are {GROUPS}")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "need > 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "need >= 1")
        _require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps",
                 self.gradient_accumulation_steps, "need >= 1")
        _require(self.batch_size % self.gradient_accumulation_steps == 0, "batch_size", self.batch_size,
                 f"must divide into gradient_accumulation_steps={self.gradient_accumulation_steps}")
        _require(self.max_steps >= 1, "max_steps", self.max_steps, "need >= 1")
        _require(self.clip_frames >= 1, "clip_frames", self.clip_frames, "need >= 1")
        _require(self.motion_frames >= 0, "motion_frames", self.motion_frames, "need >= 0")
        _require(self.mixed_precision in PRECISIONS, "mixed_precision", self.mixed_precision,
                 f"choose one of {PRECISIONS}")
        _require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "need 0 <= decay < 1")
        for name in ("drop_audio", "drop_reference"):
            _require(0 <= getattr(self, name) < 1, name, getattr(self, name), "need a probability in [0, 1)")
        for name in ("checkpoint_every", "log_every", "sample_every", "keep_checkpoints", "num_workers",
                     "lr_warmup_steps", "sample_steps", "preview_frames"):
            _require(getattr(self, name) >= 0, name, getattr(self, name), "need >= 0")
        _require(self.sharding in SHARDINGS, "sharding", self.sharding, f"choose one of {SHARDINGS}")
        # fp16 needs a gradient scaler that knows the optimizer; Accelerate's does not see a sharded run's.
        _require(self.sharding != "fsdp" or self.mixed_precision != "fp16", "sharding", self.sharding,
                 "fp16 loss scaling is not wired for sharded runs; use mixed_precision = \"bf16\" (or \"no\") with it")
        _require(len(self.preview_samples) > 0 and all(isinstance(i, int) and i >= 0 for i in self.preview_samples),
                 "preview_samples", self.preview_samples, "need a list of sample indices >= 0, e.g. [0, 5]")
        return self

    def check_runnable(self) -> TrainConfig:
        """validate() plus what only a run needs (a packaged default may leave the paths empty)."""
        _require(self.stage != "hallo_speed" or bool(self.init_from), "init_from", self.init_from,
                 "the Hallo shortcut starts from a Hallo checkpoint: set init_from to its net.pth/.safetensors")
        return self.validate()

    def per_process_batch(self, processes: int) -> int:
        """Samples per process per micro step; the global batch must split evenly over processes."""
        share = self.batch_size // self.gradient_accumulation_steps
        if share % processes:
            raise InvalidConfigError(f"training config field batch_size={self.batch_size} cannot be split over "
                                     f"{processes} processes x {self.gradient_accumulation_steps} accumulation "
                                     "steps; choose a multiple")
        return share // processes


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                stage: str | None = None) -> TrainConfig:
    """A TrainConfig from a TOML file (flat keys), or the packaged default of `stage`, plus overrides."""
    if path is None:
        text = resources.files("emo_core.train").joinpath("configs", f"{stage or 'stage3'}.toml").read_text()
        where = f"the packaged {stage} config"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text, where = f.read(), str(path)
        except OSError as err:
            raise InvalidConfigError(f"training config '{path}' cannot be read: {err}") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InvalidConfigError(f"training config {where} is not valid TOML: {err}") from err
    return from_dict({**data, **(overrides or {})}, where)


def from_dict(data: dict[str, Any], where: str = "the training config") -> TrainConfig:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InvalidConfigError(f"unknown keys {unknown} in {where}; known keys are {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return TrainConfig(**kwargs).validate()
    except TypeError as err:
        raise InvalidConfigError(f"{where}: {err}") from err


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value): the value read as a TOML value, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InvalidConfigError(f"override '{text}' must look like key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip(), parsed

"""ClipSample -> what one training step feeds the network, per stage (EMO paper 3.3 / 4.1).

Every random choice of a sample (its frames, diffusion timestep, noise, CFG dropout) comes from a generator
seeded by (run seed, the sample's global position in the run), never from a process's RNG state: one process
or many, interrupted or not, sample g sees the same draws (trainer.py relies on this for exact resume and for
DDP runs that equal a one-process run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import EmoNetConfig
from ..errors import InvalidInputError
from ..plan import clip_seed
from ..speed import speed_features
from ..windows import window_frames

SD15_LATENT_SCALE = 0.18215
TRAIN_TIMESTEPS = 1000

# Scaled latents (N, 4, S/8, S/8) of frames (N, 3, S, S) in [-1, 1].
Encoder = Callable[[torch.Tensor], torch.Tensor]
# UNSCALED latents (N, 4, h, w) -> images (N, H, W, 3) in 0..1 (the sampler's VaeCodec.decode contract).
Decoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BatchSpec:
    """What a stage's batch holds. video: n + f contiguous frames (stages 2, 3, Hallo shortcut) or one reference
    and one target frame drawn separately (stage 1). speed: whether speed features are fed."""
    video: bool
    clip_frames: int
    motion_frames: int
    speed: bool
    drop_audio: float
    drop_reference: float
    seed: int


@dataclass
class StageBatch:
    """One micro batch of b samples, F target frames, latent h x w, S pixels.

    target: (b, 4, F, h, w) scaled clean latents. reference: (b, 4, h, w) scaled. motion: (b, n, 4, h, w) scaled
    or None. audio: (b, F, 2m+1, layers, hidden) windowed wav2vec2 features. speed: (b, F, 2m+1, d) windowed
    speed buckets or None. face_mask: (b, c, S, S) the face boxes of the used frames united (the paper's
    M = union of M^i), c = the face locator's channels. noise: like target. timesteps: (b,) int64 in [0, 1000).
    drop_audio / drop_reference: (b,) bool, the CFG dropout draws. index: (b,) global sample positions.
    """
    target: torch.Tensor
    reference: torch.Tensor
    motion: torch.Tensor | None
    audio: torch.Tensor
    speed: torch.Tensor | None
    face_mask: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    drop_audio: torch.Tensor
    drop_reference: torch.Tensor
    index: torch.Tensor

    def to(self, device) -> StageBatch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return StageBatch(**moved)


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The generator of global sample `position` of a run."""
    return torch.Generator().manual_seed(clip_seed(seed, position, stream=1))


def pick_frames(length: int, spec: BatchSpec, gen: torch.Generator) -> tuple[int, list[int], list[int]]:
    """(reference index, motion indices, target indices) inside a segment of `length` frames."""
    if spec.video:
        need = spec.clip_frames + spec.motion_frames
        if length < need:
            raise InvalidInputError(f"a training segment has {length} frames but this stage needs n + f = {need}; "
                                    "prepare the data with longer segments")
        start = int(torch.randint(0, length - need + 1, (1,), generator=gen))
        ref = int(torch.randint(0, length, (1,), generator=gen))
        motion = list(range(start, start + spec.motion_frames))
        return ref, motion, list(range(start + spec.motion_frames, start + need))
    # Stage 1: reference and target drawn separately from the clip (distinct when it has 2+ frames).
    ref = int(torch.randint(0, length, (1,), generator=gen))
    target = int(torch.randint(0, max(length - 1, 1), (1,), generator=gen))
    return ref, [], [target + (target >= ref and length > 1)]


def preload_picked_frames(sample, position: int, spec: BatchSpec):
    """Decode now the frames build_one will pick for `sample` at global `position` (same draw), when its frames are
    a lazy FrameStack and no latents are stored: run in DataLoader workers, so the training process never decodes."""
    if sample.latents is None and hasattr(sample.frames, "preload"):
        ref, motion, target = pick_frames(sample.frames.shape[0], spec, sample_generator(spec.seed, position))
        sample.frames.preload([ref, *motion, *target])
    return sample


def pool_encoder(frames: torch.Tensor) -> torch.Tensor:
    """Test/debug stand-in for a VAE (`vae = "none"`): frames (N, 3, S, S) average-pooled 8x, their mean as a
    4th channel. Not a latent space any real checkpoint understands; only for tiny runs without a VAE."""
    small = F.avg_pool2d(frames, 8)
    return torch.cat([small, small.mean(1, keepdim=True)], 1)


def _latents(sample, idx: list[int], encode: Encoder | None) -> torch.Tensor:
    if sample.latents is not None:
        return sample.latents[idx].float()
    if encode is None:
        raise InvalidInputError(f"sample '{sample.key}' has no precomputed latents and no VAE is configured; set "
                                "`vae` in the training config (a diffusers AutoencoderKL folder)")
    return encode(sample.frames[idx].float())


def build_one(sample, position: int, spec: BatchSpec, net_cfg: EmoNetConfig, encode: Encoder | None) -> dict:
    """One sample's tensors (no batch axis) and draws; see StageBatch for the layouts."""
    gen = sample_generator(spec.seed, position)
    length = sample.frames.shape[0]
    ref, motion, target = pick_frames(length, spec, gen)
    lat = _latents(sample, [ref, *motion, *target], encode)
    n = len(motion)
    m = (net_cfg.audio_projection.window if net_cfg.audio_projection else 5) // 2
    audio = window_frames(sample.audio.float(), m)[target]
    speed = None
    if spec.speed:
        speed = speed_features(sample.speed, net_cfg.speed)[target]
    used = [*motion, *target] if spec.video else [ref, *target]
    face = sample.face_masks[used].float().amax(0)  # (1, S, S): the union of the boxes
    face = face.expand(net_cfg.face_locator.conditioning_channels, -1, -1)
    clean = lat[1 + n:].permute(1, 0, 2, 3)  # (4, F, h, w)
    noise = torch.randn(clean.shape, generator=gen)
    timestep = torch.randint(0, TRAIN_TIMESTEPS, (), generator=gen)
    drops = torch.rand(2, generator=gen)
    return dict(target=clean, reference=lat[0], motion=lat[1:1 + n] if n else None, audio=audio, speed=speed,
                face_mask=face, noise=noise, timesteps=timestep, drop_audio=drops[0] < spec.drop_audio,
                drop_reference=drops[1] < spec.drop_reference, index=torch.tensor(position))


def collate(parts: Sequence[dict]) -> StageBatch:
    stacked = {k: (None if parts[0][k] is None else torch.stack([p[k] for p in parts])) for k in parts[0]}
    return StageBatch(**stacked)


def build_batch(samples: Sequence, positions: Sequence[int], spec: BatchSpec, net_cfg: EmoNetConfig,
                encode: Encoder | None = None) -> StageBatch:
    """ClipSamples and their global positions -> one StageBatch."""
    return collate([build_one(s, p, spec, net_cfg, encode) for s, p in zip(samples, positions)])


def hallo_masks_for(face_mask: torch.Tensor, frames: int, levels: int) -> tuple:
    """Hallo's (full, face, lip) masks from the united face boxes (b, c, S, S): each a list over levels of
    (b * frames, h_l * w_l), the lip box a fixed part of the face box (face_hallo.user_mask_boxes)."""
    from ..face_hallo import masks_from_boxes, user_mask_boxes

    per_video = []
    size = face_mask.shape[-1]
    for mask in face_mask[:, 0]:
        face_box, lip_box = user_mask_boxes(mask.cpu(), size, size)
        per_video.append(masks_from_boxes(face_box, lip_box, size, size, levels, frames=1))
    out = []
    for part in ("full", "face", "lip"):
        out.append([torch.cat([getattr(v, part)[lvl].expand(frames, -1) for v in per_video]).to(face_mask.device)
                    for lvl in range(levels)])
    return tuple(out)

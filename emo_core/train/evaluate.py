"""Held-out check that trained speed layers carry information (issue 15): the diffusion loss of a network on
held-out samples with their own head-speed labels against the same samples with speed labels shuffled across
samples. A paired comparison: both passes use the same frames, noise and timesteps per sample; only the speed
features differ. Batches and the loss are the trainer's own (batches.build_one, DiffusionObjective.predict).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import fastpath
from ..errors import InvalidInputError
from ..network import EmoNet
from ..plan import clip_seed
from .batches import TRAIN_TIMESTEPS, BatchSpec, Encoder, build_one, collate
from .objective import DiffusionObjective

log = logging.getLogger(__name__)

# Mid-to-high noise: there the clip's motion is still undecided, so knowing the head speed can help the most;
# at small t the frames are nearly given and every label predicts the noise equally well.
DEFAULT_TIMESTEPS = (400, 550, 700, 850)


@dataclass(frozen=True)
class SpeedLabelCheck:
    """true / shuffled: (samples,) float64 epsilon-MSE per held-out sample, averaged over its draws (one per
    timestep). permutation: (samples,) int64, the sample whose speed labels sample i carried when shuffled."""
    true: torch.Tensor
    shuffled: torch.Tensor
    permutation: torch.Tensor

    @property
    def differences(self) -> torch.Tensor:
        """(samples,) shuffled - true: positive where the true labels predict the noise better."""
        return self.shuffled - self.true

    def summary(self) -> dict:
        """Means, the mean paired difference, its standard error and the difference relative to the true loss."""
        d = self.differences
        se = float(d.std(unbiased=True) / math.sqrt(d.numel())) if d.numel() > 1 else float("inf")
        return {"samples": int(d.numel()), "true": float(self.true.mean()), "shuffled": float(self.shuffled.mean()),
                "difference": float(d.mean()), "standard_error": se,
                "relative": float(d.mean() / self.true.mean())}


def derangement(count: int, seed: int) -> torch.Tensor:
    """A seeded permutation of range(count) with no fixed point (a random cycle), so every sample gets another
    sample's labels; count >= 2."""
    if count < 2:
        raise InvalidInputError(f"shuffling speed labels needs at least 2 held-out samples, got {count}")
    gen = torch.Generator().manual_seed(clip_seed(seed, 0, stream=3))
    cycle = torch.randperm(count, generator=gen)
    out = torch.empty(count, dtype=torch.long)
    out[cycle] = cycle.roll(-1)
    return out


def speed_label_check(net: EmoNet, dataset, *, clip_frames: int, motion_frames: int,
                      timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0, batch_size: int = 4,
                      encode: Encoder | None = None) -> SpeedLabelCheck:
    """Per-sample held-out loss of `net` with true vs shuffled speed labels.

    dataset: map-style, items ClipSample with at least motion_frames + clip_frames frames. timesteps: one draw per
    entry, each in [0, 1000); draw k of sample i uses the trainer's frame choice and noise of global position
    i * len(timesteps) + k under `seed`, with its timestep set to timesteps[k] and no CFG dropout.
    """
    if net.config.speed is None:
        raise InvalidInputError("the network has no speed layers; load a stage-3 or hallo_speed checkpoint")
    if not timesteps or not all(0 <= t < TRAIN_TIMESTEPS for t in timesteps):
        raise InvalidInputError(f"timesteps must be a non-empty list in [0, {TRAIN_TIMESTEPS}), got {timesteps}")
    spec = BatchSpec(video=True, clip_frames=clip_frames, motion_frames=motion_frames, speed=True,
                     drop_audio=0.0, drop_reference=0.0, seed=seed)
    draws = len(timesteps)
    parts = []
    for i in range(len(dataset)):
        sample = dataset[i]
        for k, t in enumerate(timesteps):
            part = build_one(sample, i * draws + k, spec, net.config, encode)
            part["timesteps"] = torch.tensor(int(t))
            parts.append(part)
    perm = derangement(len(dataset), seed)
    swapped = [{**p, "speed": parts[int(perm[n // draws]) * draws + n % draws]["speed"]}
               for n, p in enumerate(parts)]
    objective = DiffusionObjective(net).eval()
    true, shuffled = (_losses(objective, rows, batch_size).view(-1, draws).mean(1) for rows in (parts, swapped))
    result = SpeedLabelCheck(true, shuffled, perm)
    log.info("held-out loss over %d samples x %d draws: true speed %.5f, shuffled %.5f", len(dataset), draws,
             float(true.mean()), float(shuffled.mean()))
    return result


@torch.no_grad()
def _losses(objective: DiffusionObjective, parts: list[dict], batch_size: int) -> torch.Tensor:
    """(rows,) float64 epsilon-MSE of each part, in the parts' order."""
    device = next(objective.net.parameters()).device
    out = torch.empty(len(parts), dtype=torch.float64)
    with fastpath.enabled(False):  # the trainer's computation, not the sampler's cached one
        for start in range(0, len(parts), batch_size):
            batch = collate(parts[start:start + batch_size]).to(device)
            pred, batch = objective.predict(batch)
            per_row = (pred.float() - batch.noise.float()).square().flatten(1).mean(1)
            out[batch.index.cpu()] = per_row.double().cpu()  # index: the row (position i * draws + k)
    return out

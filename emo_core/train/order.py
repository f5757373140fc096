"""Which dataset item each process trains on at each step: pure integer planning (STYLE.md section 3).

The run is one stream of global sample positions g = step * batch + slot. Epoch e = g // len(dataset) visits the
dataset in a permutation seeded by (seed, e); slot s of a step belongs to accumulation micro step
s // (batch / accumulation) and, inside it, to process (s % micro) // per_process. The order depends only on
(seed, step), so resuming at a step, or running on another number of processes, reads the same samples.
"""
from __future__ import annotations

import torch

from ..errors import InvalidInputError
from ..plan import clip_seed


def epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(clip_seed(seed, epoch, stream=2))
    return torch.randperm(size, generator=gen)


def positions(step: int, micro: int, batch: int, accumulation: int, rank: int, processes: int) -> list[int]:
    """Global sample positions of process `rank` in accumulation micro step `micro` of optimizer step `step`."""
    per_micro = batch // accumulation
    per_process = per_micro // processes
    if per_process * processes * accumulation != batch or per_process < 1:
        raise InvalidInputError(f"batch {batch} does not split into {accumulation} micro steps x {processes} "
                                "processes")
    start = step * batch + micro * per_micro + rank * per_process
    return list(range(start, start + per_process))


def dataset_indices(global_positions: list[int], seed: int, size: int) -> list[int]:
    """Dataset item of each global position."""
    if size < 1:
        raise InvalidInputError("the training data set is empty; prepare shards first (emo-prepare)")
    perms: dict[int, torch.Tensor] = {}
    out = []
    for g in global_positions:
        epoch = g // size
        if epoch not in perms:
            perms[epoch] = epoch_permutation(seed, epoch, size)
        out.append(int(perms[epoch][g % size]))
    return out

"""Sharded training (`sharding = "fsdp"`, torch FSDP2) on the CPU: two gloo processes equal one unsharded process
with the same global batch, an interrupted sharded run resumes exactly, the native files load, bad settings are
refused. Tiny network, one thread per process."""
from __future__ import annotations

import pytest
import torch

from emo_core.errors import InvalidConfigError
from test_train import DDP_SETTINGS, _assert_same_weights, _config, _dataset
from train_helpers import plain_cpu_kernels  # noqa: F401  (autouse fixture)
from train_helpers import Run, launch, read_losses

# EMA on (its shards are checkpointed and gathered too), a checkpoint at step 2, a sample clip at the last step
# (gathered network on rank 0).
RUN = dict(DDP_SETTINGS, max_steps=4, checkpoint_every=2, ema=True, sample_every=4, sample_steps=1)
SHARDED = dict(RUN, sharding="fsdp")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One unsharded process; 2 sharded processes for the whole run, then (in the same processes) resuming from a
    copy of the whole run's step-2 checkpoint (what a run stopped after step 2 leaves behind)."""
    from emo_core.train.trainer import train
    tmp = tmp_path_factory.mktemp("fsdp")
    threads = torch.get_num_threads()
    # One thread, as each launched process has: on a busy 2-core machine two spinning OpenMP threads made a
    # step 20x slower (21 s instead of 0.6 s).
    torch.set_num_threads(1)
    try:
        single = train(_config(tmp, **RUN), _dataset(), str(tmp / "one"))
    finally:
        torch.set_num_threads(threads)
    step2 = (tmp / "whole" / "checkpoints" / "step-2", tmp / "resumed" / "checkpoints" / "step-2")
    # Both in the same two processes: train() can run again after a distributed run.
    launch(tmp, [Run(tmp / "whole", SHARDED),
                 Run(tmp / "resumed", dict(SHARDED, sample_every=0), resume=True, seed=step2)])  # clips: no effect
    return single, tmp


def test_two_sharded_processes_equal_one_unsharded(runs):
    """Same losses, weights and EMA weights as one process holding the whole network (1e-6, as the DDP test:
    only the order of the gradient sums differs)."""
    from emo_core.checkpoint import load_network
    single, tmp = runs
    sharded = read_losses(tmp / "whole")
    assert sharded.keys() == single.losses.keys() == {1, 2, 3, 4}
    assert all(abs(sharded[s] - single.losses[s]) <= 1e-6 for s in sharded)
    moved = _assert_same_weights(str(tmp / "whole" / "emo_stage3.safetensors"), single.model, 1e-6)
    assert moved > 0  # the weights did train: equal weights are not the untouched start
    _assert_same_weights(str(tmp / "whole" / "emo_stage3_ema.safetensors"), single.ema_model, 1e-6)
    assert load_network(str(tmp / "whole" / "emo_stage3.safetensors")).config == load_network(single.model).config
    assert (tmp / "whole" / "samples" / "step-0000004.mp4").stat().st_size > 0


def test_sharded_checkpoint_holds_each_ranks_shards(runs):
    _, tmp = runs
    step = tmp / "whole" / "checkpoints" / "step-2"
    assert sorted(p.name for p in (step / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (step / "custom_checkpoint_0.pkl").exists()  # the LR scheduler, through accelerate as unsharded


def test_interrupted_sharded_run_resumes_exactly(runs):
    """Model, AdamW moments and EMA shadows of both ranks come back from the step-2 checkpoint: the resumed
    run's steps 3-4 and its files equal the uninterrupted sharded run's."""
    _, tmp = runs
    whole, resumed = read_losses(tmp / "whole"), read_losses(tmp / "resumed")
    assert resumed.keys() == {3, 4}
    assert all(resumed[s] == whole[s] for s in resumed)
    for name in ("emo_stage3.safetensors", "emo_stage3_ema.safetensors"):
        _assert_same_weights(str(tmp / "resumed" / name), str(tmp / "whole" / name), 0)


def test_bad_sharding_settings_are_refused(tmp_path):
    from emo_core.train.trainer import train
    with pytest.raises(InvalidConfigError, match="sharding='zero3' is invalid: choose one of"):
        _config(tmp_path, sharding="zero3")
    with pytest.raises(InvalidConfigError, match="fp16 loss scaling is not wired"):
        _config(tmp_path, sharding="fsdp", mixed_precision="fp16")
    with pytest.raises(InvalidConfigError, match="needs 2 or more processes"):
        train(_config(tmp_path, sharding="fsdp"), _dataset(), str(tmp_path / "out"))

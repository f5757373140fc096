"""Training throughput (samples/s) of the tiny configuration on this machine's CPU (or GPU when present).

Stage 3 (temporal + speed layers, EMA on) of the tests' tiny EMO network, f=4, n=2, 96 px (12x12 latents), global
batch 2, one process; the first steps and the setup are excluded. Prints one line per setting:

    python bench/train_speed.py [--steps 6] [--pixels 96]
"""
from __future__ import annotations

import argparse
import sys
import json
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny config and data of the tests

from conftest import tiny_emo_config  # noqa: E402
from train_helpers import ListDataset, data_shape, tiny_samples, write_network_config  # noqa: E402

from emo_core.train.config import load_config  # noqa: E402
from emo_core.train.trainer import train  # noqa: E402

WARMUP = 2
BATCH = 2


def _rate(net, data, steps: int, checkpointing: bool) -> float:
    """Samples/s over the steps after WARMUP, from the loss file's per-step clock."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, dict(network=str(write_network_config(net, Path(tmp) / "net.json")), batch_size=BATCH,
                                     max_steps=steps, clip_frames=net.clip_length, motion_frames=net.motion_frames,
                                     mixed_precision="no", num_workers=0, sample_every=0, checkpoint_every=0,
                                     gradient_checkpointing=checkpointing, ema=True), stage="stage3")
        train(cfg, data, str(Path(tmp) / "out"))
        lines = [json.loads(x) for x in (Path(tmp) / "out" / "loss.jsonl").read_text().splitlines()]
        return (len(lines) - WARMUP) * BATCH / (lines[-1]["seconds"] - lines[WARMUP - 1]["seconds"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pixels", type=int, default=96)
    args = p.parse_args()
    net = tiny_emo_config(clip_length=4, motion_frames=2)
    layers, hidden = data_shape(net)
    data = ListDataset(tiny_samples(4, net.clip_length + net.motion_frames + 2, args.pixels, layers, hidden))
    for checkpointing in (False, True):
        rate = _rate(net, data, WARMUP + args.steps, checkpointing)
        print(f"tiny stage3, {args.pixels} px, f={net.clip_length} n={net.motion_frames}, batch {BATCH}, gradient "
              f"checkpointing {'on' if checkpointing else 'off'}: {rate:.2f} samples/s")


if __name__ == "__main__":
    main()

"""Issue 15, section 3: what reading one training sample from a shard costs, with every frame decoded (the shards'
contract, ShardDataset's default) and with lazy frames (the trainer's: only the frames a step picks are decoded).

A shard of 512 px, 48-frame samples made from the fixture portrait (shifted per frame, so JPEG has real content to
code), stored as JPEG (emo-prepare's default) and PNG; then, per read: ShardDataset[i] plus the frames a stage
indexes (stage 2: n + f = 16, stage 1: 2), as batches.build_one does.

    python bench/sample_decode.py --portrait ../shared/fixtures/portrait_astronaut_512.png

Measured (2-core shared CPU, one thread, 48 frames at 512 px), ms a sample:
    jpeg   every frame 575   lazy stage 2 (16 frames) 251 (x0.44)   lazy stage 1 (2 frames) 103 (x0.18)
    png    every frame 1253  lazy stage 2 (16 frames) 451 (x0.36)   lazy stage 1 (2 frames) 132 (x0.11)
The rest of a lazy read is the face masks (one PNG of all 48) and the audio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FRAMES, SIZE = 48, 512
PICKS = {"stage 2 (n + f = 16)": list(range(16, 32)), "stage 1 (2 frames)": [3, 40]}


def _sample(portrait: Path, key: str):
    from PIL import Image

    from emo_core.train.shards import ClipSample

    image = np.asarray(Image.open(portrait).convert("RGB").resize((SIZE + FRAMES, SIZE + FRAMES)))
    frames = np.stack([image[i:i + SIZE, i:i + SIZE] for i in range(FRAMES)])  # a slow pan: every frame differs
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    masks = torch.zeros(FRAMES, 1, SIZE, SIZE)
    masks[:, :, 128:384, 128:384] = 1
    return ClipSample(key=key, frames=frames, face_masks=masks, audio=torch.zeros(FRAMES, 5, 16),
                      speed=torch.zeros(FRAMES, dtype=torch.float64), latents=None, fps=25.0)


def _seconds_per_read(dataset, picks: list[int] | None, reads: int) -> float:
    start = time.perf_counter()
    for i in range(reads):
        sample = dataset[i % len(dataset)]
        frames = sample.frames[picks] if picks is not None else sample.frames
        assert frames.shape[0] == (len(picks) if picks is not None else FRAMES)
    return (time.perf_counter() - start) / reads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--portrait", required=True, help="an image (the fixture portrait)")
    p.add_argument("--reads", type=int, default=6, help="timed reads per figure")
    args = p.parse_args()
    torch.set_num_threads(1)
    from emo_core.train.shard_frames import FrameCodec
    from emo_core.train.shards import ShardDataset, ShardWriter

    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("jpeg", "png"):
            path = Path(tmp) / f"{kind}.tar"
            with ShardWriter(path, FrameCodec(kind=kind)) as writer:
                for i in range(2):
                    writer.write(_sample(Path(args.portrait), f"video/{i:04d}"))
            eager, lazy = ShardDataset([path]), ShardDataset([path], lazy_frames=True)
            whole = _seconds_per_read(eager, None, args.reads)
            print(f"{kind}: every frame decoded {whole * 1000:7.1f} ms a sample")
            for stage, picks in PICKS.items():
                part = _seconds_per_read(lazy, picks, args.reads)
                print(f"{kind}: lazy, {stage:20s} {part * 1000:7.1f} ms a sample  (x{part / whole:.2f})")


if __name__ == "__main__":
    main()

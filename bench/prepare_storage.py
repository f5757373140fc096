"""Issue 15, section 2: what `emo-prepare` stores per sample in each --frames format, and its peak memory as the
video gets longer. End to end with the real command on a synthetic talking-head video (the fixture portrait):

1. bytes per sample (frames, face masks, audio) for --frames raw, png and jpeg at the default 512 px, 48 frames;
2. peak RSS of `emo-prepare` (one process per run, os.wait4's ru_maxrss) on that video looped 1x, 8x and 16x.

    EMO_MEDIAPIPE_MODELS=/tmp/emo-mediapipe-models python bench/prepare_storage.py --portrait \\
        ../shared/fixtures/portrait_astronaut_512.png --wav2vec ../shared/parity/hallo-tiny/wav2vec2

Measured (2-core shared CPU; a 4 s 512 px video, tiny wav2vec2):
    raw  50.3 MB a sample (frames 37.7 MB, masks 12.6 MB)   png 14.3 MB (14.2 MB, 11 kB)   jpeg 3.5 MB (3.4 MB, 11 kB)
    peak RSS   4 s: 1.28 GB   32 s: 1.43 GB   64 s: 1.45 GB   (before streaming: 1.16, 2.23, 3.32 GB)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FORMATS = ("raw", "png", "jpeg")


def sample_bytes(folder: Path) -> dict:
    """Mean bytes per sample of a prepared folder: whole shard, frames, face masks, audio."""
    totals = {"sample": 0, "frames": 0, "face_masks": 0, "audio": 0}
    samples = 0
    for shard in sorted(folder.glob("*.tar")):
        totals["sample"] += shard.stat().st_size
        with tarfile.open(shard) as tar:
            for member in tar:
                field = member.name.rsplit("/", 1)[-1].split(".", 2)[1]
                if field in totals:
                    totals[field] += member.size
                samples += field == "meta"
    return {k: v / max(1, samples) for k, v in totals.items()}


def prepare(videos: Path, out: Path, wav2vec: str, *extra: str) -> int:
    """Run emo-prepare in its own process; its peak RSS in bytes (Linux reports kB)."""
    command = [sys.executable, "-m", "emo_core.train.prepare_cli", str(videos), "--out", str(out), "--wav2vec",
               wav2vec, *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"emo-prepare failed ({status}): {' '.join(command)}")
    return usage.ru_maxrss * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--portrait", required=True, help="image showing one face")
    p.add_argument("--wav2vec", required=True, help="wav2vec2 folder")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the synthetic video")
    p.add_argument("--loops", default="1,8,16", help="lengths (times the video) for the memory figures")
    p.add_argument("--work", default=None, help="keep the videos and shards here (default: a temp folder)")
    args = p.parse_args()

    from emo_core.face_models import model_search_dirs
    from emo_core.train.synthetic import SyntheticSettings, generate_video, loop_video

    work = Path(args.work or tempfile.mkdtemp(prefix="emo-prepare-storage-"))
    source = work / "source" / "talk512.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    generate_video(source, args.portrait, SyntheticSettings(duration=args.seconds, size=512, max_roll=0.7, seed=5),
                   [str(d) for d in model_search_dirs(None)])
    for kind in FORMATS:
        prepare(source.parent, work / f"out-{kind}", args.wav2vec, "--frames", kind)
        b = sample_bytes(work / f"out-{kind}")
        print(f"{kind:5s} {b['sample'] / 1e6:6.2f} MB a sample: frames {b['frames'] / 1e6:.2f} MB, face masks "
              f"{b['face_masks'] / 1e3:.1f} kB, audio {b['audio'] / 1e3:.1f} kB", flush=True)
    for loops in (int(n) for n in args.loops.split(",")):
        folder = work / f"loop{loops}"
        folder.mkdir(exist_ok=True)
        loop_video(source, folder / "long.mp4", loops)
        rss = prepare(folder, work / f"out-loop{loops}", args.wav2vec)
        print(f"{loops * args.seconds:5.0f} s video: peak RSS {rss / 1e9:.2f} GB", flush=True)


if __name__ == "__main__":
    main()

"""Sampler benchmark: seconds per frame and peak memory, and peak memory for short vs long audio.

    python bench/sampler.py                         # tiny model, short vs long audio, CPU
    python bench/sampler.py --config emo --size 256 --steps 4 --frames 24 --runs single
    python bench/sampler.py --device cuda --config hallo --size 512 --steps 40 --frames 48 --runs single

Each measurement runs in a fresh subprocess so its peak (max RSS on CPU, torch's peak allocation on
CUDA) belongs to that run alone. Random weights: the figures are about compute and memory, not quality.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_net(name: str, device: str, dtype):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_emo_config
    from emo_core.config import emo_preset, hallo_preset
    from emo_core.network import EmoNet

    config = {"tiny": tiny_emo_config, "emo": emo_preset, "hallo": hallo_preset}[name]()
    torch.manual_seed(0)
    return EmoNet(config).to(device, dtype).eval()


def inputs(net, frames: int, size: int):
    import torch

    from emo_core.sampler import VideoConditions
    from emo_core.speed import constant_speed, speed_features

    cfg, h = net.config, size // 8
    ap = cfg.audio_projection
    masks = None
    if cfg.audio_attention.form == "hierarchical":
        levels = len(cfg.unet.block_out_channels)
        masks = tuple([torch.ones(1, (h // 2 ** lv) ** 2) for lv in range(levels)] for _ in range(3))
    return VideoConditions(
        reference=torch.randn(4, h, h), audio=torch.randn(frames, ap.window, ap.blocks, ap.channels),
        num_frames=frames, face_mask=torch.ones(cfg.face_locator.conditioning_channels, size, size), masks=masks,
        identity=torch.randn(cfg.identity.embedding_dim) if cfg.identity else None,
        speed=speed_features(constant_speed(1.0, frames), cfg.speed) if cfg.speed else None)


def measure(args) -> dict:
    import torch

    from emo_core.sampler import SamplerSettings, generate

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    net = build_net(args.config, args.device, dtype)
    video = inputs(net, args.frames, args.size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = generate(net, video, SamplerSettings(steps=args.steps))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"frames": out.shape[0], "clips": -(-args.frames // net.config.clip_length), "seconds": seconds,
            "seconds_per_frame": seconds / out.shape[0], "peak_mib": peak / 2**20,
            "peak_kind": "cuda allocated" if args.device.startswith("cuda") else "max RSS"}


def child(args, frames: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--config", args.config, "--size", str(args.size), "--steps",
           str(args.steps), "--frames", str(frames), "--device", args.device, "--dtype", args.dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny", "emo", "hallo"], default="tiny")
    p.add_argument("--size", type=int, default=64, help="pixel size (square)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--frames", type=int, default=24, help="frames for --runs single; the short run of 'compare'")
    p.add_argument("--long", type=int, default=240, help="frames of the long run of 'compare'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--runs", choices=["compare", "single"], default="compare")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(args)))
        return
    print(f"config={args.config} size={args.size} steps={args.steps} device={args.device} dtype={args.dtype}")
    runs = [args.frames] if args.runs == "single" else [args.frames, args.long]
    results = [child(args, n) for n in runs]
    for r in results:
        print(f"{r['frames']:5d} frames ({r['clips']} clips): {r['seconds']:.2f} s, "
              f"{r['seconds_per_frame']:.3f} s/frame, peak {r['peak_mib']:.0f} MiB ({r['peak_kind']})")
    if len(results) == 2:
        ratio = results[1]["peak_mib"] / results[0]["peak_mib"]
        print(f"long/short: {results[1]['frames'] / results[0]['frames']:.1f}x the frames, "
              f"{ratio:.3f}x the peak memory")


if __name__ == "__main__":
    main()

"""Denoising cost per output frame for each checkpoint family and sampler setting.

    python bench/families.py --threads 2                  # 24 frames at 64 px, full-size random weights, CPU
    python bench/families.py --device cuda --dtype fp16 --size 512 --frames 48

"UNet passes per frame" counts frames through the denoising UNet (a CFG forward of F frames counts 2F) over
the whole run, divided by the video's frames: Hallo 40 steps x 2 (CFG) = 80; EchoMimic 30 x 2 x the window
overlap; EchoMimic acc 6 x 1 x the overlap. Counted by a hook on the UNet in a real `generate` run, not
computed from a formula. ReferenceNet passes (once per video, plus Hallo's motion frames once per clip) are
listed apart. Seconds per frame: the wall time of that run per output frame (random full-size weights: the
figure is about compute, not quality; the first forward's warm-up included).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = (  # (name, family preset, steps, cfg)
    ("hallo", "hallo", 40, 3.5),
    ("echomimic", "echomimic", 30, 2.5),
    ("echomimic acc", "echomimic", 6, 1.0),
)


def build(family: str, device: str, dtype):
    import torch

    from emo_core.config import echomimic_preset, hallo_preset
    from emo_core.network import EmoNet

    torch.manual_seed(0)
    with torch.device("meta"):
        net = EmoNet({"hallo": hallo_preset, "echomimic": echomimic_preset}[family]())
    net = net.to_empty(device=device)
    for p in net.parameters():  # random weights at a sane scale; not a trained model
        torch.nn.init.normal_(p, std=0.02)
    return net.to(dtype).eval()


def video(net, frames: int, size: int):
    import torch

    from emo_core.sampler import VideoConditions

    cfg, h = net.config, size // 8
    if cfg.audio_projection is None:  # whisper tokens: 10 frames x 5 layers of width 384 per video frame
        audio = torch.randn(frames, 10, 5, cfg.audio_attention.audio_dim)
    else:
        ap = cfg.audio_projection
        audio = torch.randn(frames, ap.window, ap.blocks, ap.channels)
    masks = None
    if cfg.audio_attention.form == "hierarchical":
        levels = len(cfg.unet.block_out_channels)
        masks = tuple([torch.ones(1, (-(-h // 2 ** lv)) ** 2) for lv in range(levels)] for _ in range(3))
    return VideoConditions(reference=torch.randn(4, h, h), audio=audio, num_frames=frames,
                           face_mask=torch.ones(cfg.face_locator.conditioning_channels, size, size), masks=masks,
                           identity=torch.randn(cfg.identity.embedding_dim) if cfg.identity else None)


def count(net, v, steps: int, cfg: float, device: str) -> dict:
    import torch

    from emo_core.sampler import SamplerSettings, generate

    seen = {"unet": 0, "reference": 0}

    def on_unet(module, args, output):
        seen["unet"] += output.shape[0] * output.shape[2]

    def on_reference(module, args, output):
        seen["reference"] += args[0].shape[0]

    hooks = [net.denoising_unet.register_forward_hook(on_unet),
             net.reference_unet.register_forward_hook(on_reference)]
    start = time.perf_counter()
    with torch.no_grad():
        generate(net, v, SamplerSettings(steps=steps, guidance_scale=cfg, seed=0))
    if device == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    for h in hooks:
        h.remove()
    return {"passes": seen["unet"] / v.num_frames, "reference": seen["reference"], "s_per_frame": took / v.num_frames}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64, help="square image size in pixels (multiple of 8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    nets = {}
    for name, family, steps, cfg in SETTINGS:
        if family not in nets:
            nets[family] = build(family, args.device, dtype)
        net = nets[family]
        row = count(net, video(net, args.frames, args.size), steps, cfg, args.device)
        print(f"{name:14s} {steps:2d} steps, cfg {cfg:3.1f}: {row['passes']:5.1f} UNet passes per frame "
              f"({args.frames} frames), {row['reference']} ReferenceNet passes, {row['s_per_frame']:.2f} s/frame "
              f"[{args.size} px, {args.dtype}, {args.device}]", flush=True)


if __name__ == "__main__":
    main()

"""Seconds and CPU seconds per denoising step and per clip: the plain path against the fast one, same work.

    python bench/step_speed.py --threads 2                       # full-size Hallo, 128 px, 16 + 2 frames, CPU
    python bench/step_speed.py --compile --steps 3               # also torch.compile'd (inductor) steps
    python bench/step_speed.py --device cuda --dtype fp16 --size 512 --compile

Random full-size weights (bench/families.py `build`), the sampler's own inputs for the first clip (captured
from a real `generate` run: Hallo's reference copies as motion frames, CFG 3.5). "plain" runs with the
per-clip caches off (`emo_core.fastpath.enabled(False)`), "fast" with them on; both give the same latents
(the max difference is printed). A step is one `net.denoise` (both CFG halves, one batched UNet forward); a
clip (`--clip`) is a whole `generate` of one clip: ReferenceNet on the reference and the motion frames, the
per-clip caches, `--clip-steps` steps (default `--steps`). CPU seconds are the process's (all threads); the
ratio fast / plain is the figure. Each mode gets an untimed warm-up, then the modes alternate and the medians
are printed, with the median of each round's fast / plain CPU ratio (neighbouring runs: robust to a machine
whose speed drifts).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def first_step_inputs(net, video, steps: int, guidance: float):
    """(model_in, t, ClipConditions) of the sampler's first network call."""
    from emo_core.sampler import SamplerSettings, generate

    seen = []

    class Captured(Exception):
        pass

    def capture(model_in, t, cond, scale):
        seen.append((model_in, t, cond))
        raise Captured

    net.denoise = capture
    try:
        generate(net, video, SamplerSettings(steps=steps, guidance_scale=guidance))
    except Captured:
        pass
    finally:
        del net.denoise
    return seen[0]


def clock(fn) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def interleaved(modes: dict, repeats: int) -> dict:
    """{mode: (median wall, median CPU, last result, per-round CPU ratios)}: one untimed warm-up each, then the
    modes alternate, so a machine that slows down or speeds up during the run does not favour one of them. The
    ratios are each round's CPU seconds over the first mode's in the same round (None for the first mode): on a
    shared machine whose speed drifts by tens of percent within minutes, neighbouring runs compare better than
    medians taken apart."""
    for fn in modes.values():
        fn()
    runs = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, fn in modes.items():
            runs[mode].append(clock(fn))
    first = runs[next(iter(modes))]
    return {mode: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2],
                   None if rs is first else [r[1] / f[1] for r, f in zip(rs, first)])
            for mode, rs in runs.items()}


def quartiles(values: list[float]) -> str:
    """', quartiles a-b' for four values or more, else ''."""
    if len(values) < 4:
        return ""
    low, _, high = statistics.quantiles(values, n=4)
    return f", quartiles {low:.3f}-{high:.3f}"


def main() -> None:
    import torch

    from emo_core import fastpath
    from emo_core.compile import compile_unet
    from emo_core.sampler import SamplerSettings, generate
    from families import build, video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="hallo", choices=["hallo", "echomimic"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (and steps per clip)")
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time the inductor-compiled UNet (fast path)")
    p.add_argument("--clip", action="store_true", help="also time a whole clip (ReferenceNet included)")
    p.add_argument("--clip-steps", type=int, default=0,
                   help="denoising steps of the timed clip (default --steps; Hallo renders with 40)")
    p.add_argument("--clip-rounds", type=int, default=1, help="timed clips per mode (after one untimed each)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    net = build(args.family, args.device, dtype)
    cfg = net.config
    v = video(net, cfg.clip_length, args.size)
    model_in, t, cond = first_step_inputs(net, v, args.steps, args.guidance)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step():
        with torch.no_grad():
            out = net.denoise(model_in, t, cond, args.guidance)[0]
        sync()
        return out

    print(f"{args.family} full-size, {args.size} px, {cfg.clip_length} + {cfg.motion_frames} frames, CFG "
          f"{args.guidance}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads")
    def in_mode(fn, on: bool):
        def run():
            with fastpath.enabled(on):
                return fn()
        return run

    clip_steps = args.clip_steps or args.steps

    def clip():
        with torch.no_grad():
            out = generate(net, v, SamplerSettings(steps=clip_steps, guidance_scale=args.guidance, seed=1))
        sync()
        return out

    modes = {"plain": in_mode(step, False), "fast": in_mode(step, True)}
    results = interleaved(modes, args.steps)
    if args.compile:
        start = time.perf_counter()
        compile_unet(net)
        with fastpath.enabled(True):
            step()
        print(f"compile + first step: {time.perf_counter() - start:.1f} s")
        results.update(interleaved({"fast+compiled": in_mode(step, True)}, args.steps))
    clips = interleaved({"plain": in_mode(clip, False), "fast": in_mode(clip, True)}, args.clip_rounds) if args.clip else {}
    for what, table in (("step", results), (f"clip ({clip_steps} steps)", clips)):
        if not table:
            continue
        base_wall, base_cpu, base_out, _ = table["plain"]
        for mode, (wall, cpu, out, ratios) in table.items():
            diff = (out.float() - base_out.float()).abs().max().item()
            rounds = "" if not ratios else (f"; per round x{statistics.median(ratios):.3f} CPU (median of "
                                            f"{len(ratios)}, {min(ratios):.3f}-{max(ratios):.3f}"
                                            f"{quartiles(ratios)})")
            print(f"{what:>16} {mode:>14}: {wall:7.2f} s wall, {cpu:7.2f} s CPU  (x{wall / base_wall:.2f} wall, "
                  f"x{cpu / base_cpu:.2f} CPU{rounds})  max |diff| vs plain {diff:.2e}")


if __name__ == "__main__":
    main()

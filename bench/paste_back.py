"""Paste-back cost at phone-photo sizes: time per frame, and the peak host memory of a long video pasted back
while it is written (EMO Save Video (Streaming) with EMO Face Crop's crop) against EMO Paste Back's IMAGE.

    python bench/paste_back.py time   --sizes 1080x1920 3024x4032 --frames 12
    python bench/paste_back.py stream --frames 250 1000       # EMO Save Video (Streaming) + crop, 1080x1920
    python bench/paste_back.py node   --frames 50 100         # EMO Paste Back's IMAGE output, 1080x1920

Each run of `stream` and `node` is a fresh process (ru_maxrss is that run's peak). The photo is smooth noise, the
square is 512 px around a face-sized box in the upper third; the "VAE" turns each latent into a 512 px frame by
upsampling (no network: the figures are the paste back's and the encoder's). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def photo_and_crop(height: int, width: int, size: int = 512):
    import torch
    import torch.nn.functional as F

    from emo_core.face_crop import plan_crop

    g = torch.Generator().manual_seed(0)
    photo = F.interpolate(torch.rand(1, 3, height // 16, width // 16, generator=g), size=(height, width),
                          mode="bilinear").permute(0, 2, 3, 1).contiguous()
    face = 0.22 * min(height, width)
    box = (width / 2 - face / 2, height / 3 - face / 2, width / 2 + face / 2, height / 3 + face / 2)
    return photo, plan_crop(box, (height, width), size, 1.65)


class UpsamplingVAE:
    """ComfyUI's VAE.decode: (n, 4, h, w) -> (n, 8h, 8w, 3), by upsampling (a stand-in for the network)."""

    def decode(self, latent):
        import torch
        import torch.nn.functional as F

        return torch.sigmoid(F.interpolate(latent[:, :3], scale_factor=8, mode="bilinear")).permute(0, 2, 3, 1)


def time_per_frame(sizes: list[str], frames: int) -> None:
    import torch

    from emo_core.face_crop import crop_image
    from emo_core.paste_back import Paster, PasteSettings

    for size in sizes:
        width, height = (int(v) for v in size.split("x"))
        photo, crop = photo_and_crop(height, width)
        anim = crop_image(photo[0], crop) + 0.05 * torch.rand(crop.size, crop.size, 3)
        for settings in (PasteSettings(), PasteSettings(keep_detail=False), PasteSettings(match_colors=True)):
            paster, out = Paster(photo, crop, settings), torch.empty(height, width, 3)
            paster.paste_into(out, anim, 0)  # the reference crop, its upscale and detail: once per still
            times = []
            for _ in range(frames):
                start = time.perf_counter()
                paster.paste_into(out, anim, 0)
                times.append(time.perf_counter() - start)
            print(f"{width}x{height}, square {crop.side} px: {statistics.median(times) * 1000:.0f} ms/frame "
                  f"(median of {frames}; keep_detail {settings.keep_detail}, match_colors {settings.match_colors})")


def one_run(mode: str, frames: int, out_dir: str) -> dict:
    import os

    import torch

    sys.path[:0] = [str(ROOT / "tests")]
    from conftest import load_pack

    pack = load_pack()
    os.environ["EMO_OUTPUT_DIR"] = out_dir
    photo, crop = photo_and_crop(1920, 1080)
    handle = pack.nodes.handles.CropHandle(crop, photo)
    start, before = time.perf_counter(), rss_mib()
    if mode == "stream":
        latent = {"samples": torch.randn(frames, 4, 64, 64, generator=torch.Generator().manual_seed(1))}
        pack.NODE_CLASS_MAPPINGS["EMO_SaveVideo"]().save(latent, UpsamplingVAE(), 25.0, "bench/photo", crop=handle)
        what = "EMO Save Video (Streaming) with the crop, incl. H.264 encode"
    else:
        frames_in = torch.rand(frames, 512, 512, 3)
        (out,) = pack.NODE_CLASS_MAPPINGS["EMO_PasteBack"]().paste(photo, frames_in, handle, 0.1, True, False)
        what = "EMO Paste Back (IMAGE output held)"
    return {"mode": mode, "frames": frames, "seconds": time.perf_counter() - start, "rss_before_mib": before,
            "peak_rss_mib": rss_mib(), "what": what}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("time", "stream", "node"))
    parser.add_argument("--sizes", nargs="+", default=["1080x1920", "3024x4032"])
    parser.add_argument("--frames", nargs="+", type=int, default=[12])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT)]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "time":
        time_per_frame(args.sizes, args.frames[0])
    elif args.child:
        with tempfile.TemporaryDirectory() as out_dir:
            print(json.dumps(one_run(args.mode, args.frames[0], out_dir)))
    else:
        for frames in args.frames:
            cmd = [sys.executable, __file__, args.mode, "--child", "--frames", str(frames), "--threads", str(args.threads)]
            result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"{result['what']}: {frames} frames at 1080x1920 in {result['seconds']:.1f} s "
                  f"({result['seconds'] / frames * 1000:.0f} ms/frame), peak RSS {result['peak_rss_mib']:.0f} MiB "
                  f"({result['rss_before_mib']:.0f} MiB before)")


if __name__ == "__main__":
    main()

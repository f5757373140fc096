"""emo-prepare: turn a folder (or a list) of talking-head videos into training shards.

    emo-prepare VIDEOS --out DIR --wav2vec PATH [--mediapipe-models DIR] [--vae FOLDER] [--size 512]
                [--fps 25] [--segment-frames 48] [--shard-samples 16] [--expand-ratio 1.6] [--workers 1]
                [--frames jpeg|png|raw] [--jpeg-quality 95]

Also `python -m emo_core.train.prepare_cli`. Exit status 0 when the run finished (skipped videos are listed
in the manifest, not errors), 2 on bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import EmoError
from .console import log_to_stderr
from .prepare import PrepareSettings
from .shard_frames import FRAME_FORMATS

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    d = PrepareSettings()
    p = argparse.ArgumentParser(prog="emo-prepare", description="Videos -> EMO training shards (webdataset tar).")
    p.add_argument("videos", help="a folder of videos, or a text file listing one video path a line")
    p.add_argument("--out", required=True, help="output folder (shards, records/, manifest.json); rerun to resume")
    p.add_argument("--wav2vec", required=True, help="wav2vec2 folder or .safetensors (audio features)")
    p.add_argument("--mediapipe-models", default=None,
                   help="folder with MediaPipe's face detector and landmarker (default: EMO_MEDIAPIPE_MODELS)")
    p.add_argument("--vae", default=None, help="diffusers AutoencoderKL folder: also store VAE latents")
    p.add_argument("--size", type=int, default=d.size, help="crop side in pixels (multiple of 8)")
    p.add_argument("--fps", type=float, default=d.fps, help="output frame rate")
    p.add_argument("--segment-frames", type=int, default=d.segment_frames, help="frames per stored sample")
    p.add_argument("--shard-samples", type=int, default=d.shard_samples, help="samples per shard file")
    p.add_argument("--expand-ratio", type=float, default=d.expand_ratio,
                   help="crop side / longer side of the segment's face box")
    p.add_argument("--frames", dest="frame_format", choices=FRAME_FORMATS, default=d.frame_format,
                   help="how shards store frames: jpeg (smallest, lossy), png (lossless) or raw (uint8 arrays)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality 1..100 (--frames jpeg)")
    p.add_argument("--workers", type=int, default=1, help="processes working on videos in parallel")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress per video")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..face_models import model_search_dirs
    from .prepare_run import list_videos, run_prepare

    args = build_parser().parse_args(argv)
    log_to_stderr(logging.INFO if args.verbose else logging.WARNING, "%(message)s", "emo-prepare")
    settings = PrepareSettings(size=args.size, fps=args.fps, segment_frames=args.segment_frames,
                               shard_samples=args.shard_samples, expand_ratio=args.expand_ratio,
                               frame_format=args.frame_format, jpeg_quality=args.jpeg_quality)
    try:
        manifest = run_prepare(list_videos(args.videos), args.out, settings, wav2vec=args.wav2vec,
                               model_dirs=[str(d) for d in model_search_dirs(args.mediapipe_models)],
                               vae=args.vae, workers=args.workers)
    except EmoError as err:
        sys.stderr.write(f"emo-prepare: {err}\n")
        return 2
    totals = manifest["totals"]
    sys.stdout.write(f"{totals['prepared']} of {totals['videos']} videos prepared ({totals['segments']} segments "
                     f"in {totals['shards']} shards); skipped: {totals['skipped'] or 'none'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`emo-render PORTRAIT AUDIO -o out.mp4` or `emo-render --jobs jobs.csv --out DIR`: render without ComfyUI.

Exit status: 0 when the video (every job) is written; 1 when the render failed with one of the pack's
sentences (e.g. no face in the portrait) or any job failed; 2 for a bad option, a missing input file, an
existing output without --overwrite or a bad job list; 3 when a model file is missing, damaged or of the
wrong kind (the sentence names the `emo-models` command that fixes it); 130 when interrupted (Ctrl-C or
SIGTERM): no partial video is left, a job list resumes when run again.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ..errors import (CorruptFileError, EmoError, IncompatibleCheckpointError, InvalidInputError,
                      MissingDependencyError, MissingWeightsError)
from ..model_files.catalog import FAMILIES
from .settings import DEVICES, DTYPES, RenderSettings

log = logging.getLogger("emo_core.render")
MODEL_ERRORS = (MissingWeightsError, CorruptFileError, IncompatibleCheckpointError, MissingDependencyError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo-render", description="Animate a portrait with an audio track (EMO / "
                                "Hallo / Hallo2 / EchoMimic weights) into an H.264 + AAC MP4, without ComfyUI.")
    p.add_argument("portrait", nargs="?", type=Path, help="portrait image (PNG, JPEG, ...)")
    p.add_argument("audio", nargs="?", type=Path, help="speech or song (WAV, FLAC, MP3, ...)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.mp4", help="the video to write")
    p.add_argument("--jobs", type=Path, metavar="FILE", help="a CSV or JSON job list in emo-batch's format")
    p.add_argument("--out", type=Path, metavar="DIR", help="with --jobs: where videos go, as <name>.mp4")
    g = p.add_argument_group("models")
    g.add_argument("--family", default="hallo", choices=[*FAMILIES, "emo"], help="checkpoint family (default hallo)")
    g.add_argument("--models", metavar="DIR", help="models folder laid out as emo-models fetch places it (ComfyUI's "
                   "models/ works); default $EMO_MODELS_DIR, else ./models")
    g.add_argument("--model", metavar="FILE", help="a network file instead of the family's (needed for emo)")
    g.add_argument("--acc", action="store_true", help="EchoMimic's 6-step weights (emo-models fetch --with acc)")
    g.add_argument("--identity", default="auto", metavar="auto|off|FILE",
                   help="Hallo's face-identity model: auto (when fetched and onnxruntime is installed), off, or a file")
    g.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default auto)")
    g.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="network precision (default auto: "
                   "fp16 on CUDA, else fp32)")
    s = p.add_argument_group("video")
    s.add_argument("--steps", type=int, default=0, help="denoising steps per clip (0 = the family's)")
    s.add_argument("--cfg", type=float, default=-1.0, help="guidance scale; <= 1 turns it off (-1 = the family's)")
    s.add_argument("--seed", type=int, default=0, help="clip k's noise depends only on (seed, k)")
    s.add_argument("--fps", type=float, default=0.0, help="frame rate (0 = the family's: 25, EchoMimic 24)")
    s.add_argument("--speed", type=float, default=1.0, help="head speed in rad/s (EMO weights only)")
    s.add_argument("--size", type=int, default=512, help="the portrait's centred square is resized to this (512)")
    s.add_argument("--sampler", default="ddim", help="ddim, dpmpp_2m, euler, euler_ancestral or unipc")
    s.add_argument("--expand-ratio", type=float, default=1.2, help="grow the face box about its centre (1.2)")
    s.add_argument("--face-mask", metavar="FILE", help="an image whose white area is the face, instead of detection")
    s.add_argument("--pose-weight", type=float, default=1.0, help="Hallo: audio's weight on the head pose")
    s.add_argument("--face-weight", type=float, default=1.0, help="Hallo: audio's weight on the expression")
    s.add_argument("--lip-weight", type=float, default=1.0, help="Hallo: audio's weight on the lips")
    s.add_argument("--crf", type=int, default=19, help="H.264 quality, lower is better (19)")
    s.add_argument("--chunk-frames", type=int, default=16, help="frames decoded at once while writing (16)")
    s.add_argument("--overwrite", action="store_true", help="replace existing videos")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v: every module's messages, -vv: debug")
    return p


def settings_from(args) -> RenderSettings:
    return RenderSettings(steps=args.steps, cfg=args.cfg, seed=args.seed, fps=args.fps, speed=args.speed,
                          size=args.size, sampler=args.sampler, expand_ratio=args.expand_ratio,
                          motion_scale=(args.pose_weight, args.face_weight, args.lip_weight), crf=args.crf,
                          chunk_frames=args.chunk_frames, device=args.device, dtype=args.dtype).validate()


def main(argv: list[str] | None = None, *, stream: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs is None and (args.portrait is None or args.audio is None or args.output is None):
        parser.error("give PORTRAIT AUDIO -o OUT.mp4, or --jobs FILE --out DIR")
    if args.jobs is not None and (args.out is None or args.portrait is not None or args.output is not None):
        parser.error("--jobs takes --out DIR (and no PORTRAIT, AUDIO or -o)")
    from .progress import RenderDisplay

    display = RenderDisplay(stream=stream if stream is not None else sys.stderr)
    with _logging(display, args.verbose), _sigterm_interrupts():
        try:
            return _run(args, display)
        except KeyboardInterrupt:
            display.close()
            log.warning("interrupted: no partial video was left%s", "; run the same command again to resume"
                        if args.jobs else "")
            return 130
        finally:
            display.close()


def _run(args, display) -> int:
    from ..model_files.layout import models_root
    from .pipeline import check_output

    try:
        settings = settings_from(args)
        root = models_root(directory=args.models)
        if args.jobs is not None:
            from ..batch.jobs import load_jobs
            jobs = load_jobs(args.jobs)
        else:
            check_output(args.output, args.overwrite)
            for what, path in (("portrait", args.portrait), ("audio file", args.audio), ("face mask", args.face_mask)):
                if path is not None and not Path(path).is_file():
                    raise InvalidInputError(f"the {what} {path} does not exist")
    except EmoError as err:
        log.error("%s", err)
        return 2
    display.phase(f"loading the {args.family} models from {root}")
    try:
        from .models import load_models
        models = load_models(root, args.family, settings, model=args.model, acc=args.acc, identity=args.identity)
    except EmoError as err:
        log.error("%s", err)
        return 3 if isinstance(err, MODEL_ERRORS) else 2
    if args.jobs is not None:
        return _run_jobs(jobs, args, models, settings, display)
    return _render_one(args, models, settings, display)


def _render_one(args, models, settings, display) -> int:
    from .pipeline import prepare_portrait, render

    try:
        display.phase("portrait: face, reference")
        portrait = prepare_portrait(models, args.portrait, settings, args.face_mask)
        out = render(models, portrait, args.audio, args.output, settings, display)
    except EmoError as err:
        display.close()
        from ..face import NoFaceError
        log.error("%s%s", err, " (here: pass a mask image with --face-mask FILE)" if isinstance(err, NoFaceError) else "")
        return 3 if isinstance(err, MODEL_ERRORS) else 1
    except Exception as err:  # e.g. CUDA out of memory: one line, the traceback with -vv
        display.close()
        log.debug("render failed", exc_info=True)
        log.error("%s: %s (run with -vv for the traceback)", type(err).__name__, err)
        return 1
    display.close()
    log.info("wrote %s", out)
    return 0


def _run_jobs(jobs, args, models, settings, display) -> int:
    from .jobs import run_jobs

    result = run_jobs(jobs, args.out, models, settings, display, overwrite=args.overwrite, face_mask=args.face_mask)
    display.close()
    for name, why in result.failed.items():
        log.warning("failed %s: %s", name, why)
    log.info("%d done (%d rendered now), %d failed", len(result.done) + len(result.kept), len(result.done),
             len(result.failed))
    return 1 if result.failed else 0


@contextmanager
def _logging(display, verbose: int):
    """Log lines above the progress line: the command's own at INFO, every module's with -v, debug with -vv.
    The command owns its process, so it installs its own handler (library code never does)."""
    from ..batch.progress import DisplayHandler

    handler = DisplayHandler(display)
    handler.setFormatter(logging.Formatter("%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("emo_core")
    saved = package.level, package.propagate, log.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    package.propagate = False
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if verbose == 0:
        _quiet_libraries()
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        log.setLevel(saved[2])


def _quiet_libraries() -> None:
    """transformers' and diffusers' loading bars and advice (e.g. to install accelerate) would garble the progress
    line; -v keeps them."""
    for name in ("transformers", "diffusers"):
        try:
            module = __import__(f"{name}.utils.logging", fromlist=["logging"])
        except ImportError:
            continue
        module.set_verbosity_error()
        if hasattr(module, "disable_progress_bar"):
            module.disable_progress_bar()


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (a cluster scheduler's stop) acts as Ctrl-C, so it too leaves no partial video."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

"""`emo-batch` / `python -m emo_core.batch`: render a list of portrait + audio jobs on ComfyUI servers.

Exit status: 0 when every job is done, 1 when any job failed, 2 for a bad job list, workflow or
option, 130 when interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

from ..errors import EmoError
from .client import DEFAULT_JOB_TIMEOUT, DEFAULT_MAX_DOWNLOAD, ComfyServer, require_websockets
from .jobs import load_jobs, pair_folders
from .manifest import MANIFEST_NAME, Manifest, plan_jobs
from .progress import BatchDisplay, DisplayHandler
from .render import RenderSettings
from .scheduler import Batch
from .workflow import FIELDS, REQUIRED, bind, check_reference_branch, load_workflow, parse_bind

log = logging.getLogger("emo_core.batch")  # the package logger: the command shows every module's messages

DEFAULT_SERVER = "http://127.0.0.1:8188"
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "api" / "emo_portrait_audio.api.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emo-batch", description="Render portrait + audio jobs through ComfyUI's API with the EMO "
        "API workflow. Rerunning the same command resumes: finished jobs are skipped.")
    p.add_argument("--server", action="append", metavar="URL",
                   help=f"ComfyUI server; repeat for several (jobs go to whichever is free). Default {DEFAULT_SERVER}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jobs", type=Path, metavar="FILE",
                     help="CSV or JSON job list: portrait, audio and optional seed, speed, steps, name")
    src.add_argument("--portraits", type=Path, metavar="DIR|FILE",
                     help="folder of portraits paired with --audio files by name, or one portrait for all")
    p.add_argument("--audio", type=Path, metavar="DIR", help="folder of audio files (with --portraits)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where videos go, as <name>.mp4")
    p.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, metavar="FILE",
                   help="API-format workflow (default: the pack's example_workflows/api/emo_portrait_audio.api.json)")
    p.add_argument("--bind", action="append", default=[], metavar="FIELD=NODE_ID.INPUT",
                   help=f"put a job field into this node input instead of finding it by node type; fields: "
                        f"{', '.join(FIELDS)}; repeatable")
    p.add_argument("--overwrite", action="store_true", help="render every job again and replace existing videos")
    p.add_argument("--manifest", type=Path, metavar="FILE", help=f"job state file (default <out>/{MANIFEST_NAME})")
    p.add_argument("--attempts", type=int, default=3, help="tries per job when servers go away (default 3)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an HTTP answer (default 30)")
    p.add_argument("--job-timeout", type=float, default=DEFAULT_JOB_TIMEOUT / 3600, metavar="HOURS",
                   help="a job still running after this many hours is cancelled and fails (default "
                        f"{DEFAULT_JOB_TIMEOUT / 3600:g})")
    p.add_argument("--max-download-mb", type=float, default=DEFAULT_MAX_DOWNLOAD / 2**20, metavar="MB",
                   help=f"largest video accepted from a server (default {DEFAULT_MAX_DOWNLOAD / 2**20:g} MiB)")
    p.add_argument("--poll", type=float, default=5.0,
                   help="seconds without websocket news before the queue is checked (default 5)")
    p.add_argument("--upload-subfolder", default="emo_batch", help="subfolder of ComfyUI's input folder for uploads")
    p.add_argument("--output-prefix", default="emo_batch", help="subfolder of ComfyUI's output folder for renders")
    p.add_argument("--dry-run", action="store_true", help="check jobs and workflow, show the plan, render nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    return p


def main(argv: list[str] | None = None, *, stream: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.portraits is None) != (args.audio is None):
        parser.error("--portraits and --audio go together")
    if args.attempts < 1:
        parser.error("--attempts must be at least 1")
    if not args.job_timeout > 0 or not args.max_download_mb > 0:
        parser.error("--job-timeout and --max-download-mb must be > 0")
    stream = stream if stream is not None else sys.stderr
    # The command owns its process, so it installs its own handler (library code never does).
    handler = DisplayHandler(BatchDisplay([], stream=stream, tty=False))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    try:
        return _run(args, stream, handler)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


def _run(args, stream: TextIO, handler: DisplayHandler) -> int:
    try:
        require_websockets()
        jobs = load_jobs(args.jobs) if args.jobs else pair_folders(args.portraits, args.audio)
        workflow = load_workflow(args.workflow)
        binding = bind(workflow, dict(parse_bind(b) for b in args.bind))
        used = {f for job in jobs for f in job.overrides()}
        binding.require(REQUIRED + tuple(sorted(used)))
        urls = args.server or [DEFAULT_SERVER]
        servers = [ComfyServer(u, timeout=args.timeout, poll_interval=args.poll, job_timeout=args.job_timeout * 3600,
                               max_download=int(args.max_download_mb * 2**20)) for u in urls]
        manifest = Manifest.load(args.manifest or args.out / MANIFEST_NAME)
    except (EmoError, ValueError) as err:
        log.error("%s", err)
        return 2
    report = check_reference_branch(workflow, binding)
    log.log(logging.DEBUG if report.ok else logging.WARNING, "reference branch: %s", report.describe())
    log.debug("bindings: %s", ", ".join(f"{f}={t}" for f, t in binding.targets.items()))
    plan = plan_jobs(jobs, manifest, args.out, args.overwrite)
    log.info("%d jobs: %d to render, %d already done, %d refused; manifest %s", len(jobs), len(plan.todo),
             len(plan.kept), len(plan.conflicts), manifest.path)
    if args.dry_run:
        for job in plan.todo:
            log.info("would render %s: %s + %s %s", job.name, job.portrait, job.audio, job.overrides() or "")
        return 1 if plan.conflicts else 0
    display = BatchDisplay([j.name for j in jobs], stream=stream)
    handler.display = display
    display.add_done(len(plan.kept))
    for job, why in plan.conflicts:
        display.job_finished(job.name, "failed", why)
    settings = RenderSettings(workflow, binding, args.out, upload_subfolder=args.upload_subfolder,
                              output_prefix=args.output_prefix, overwrite=args.overwrite)
    try:
        result = Batch(servers, settings, manifest, display, attempts=args.attempts).run(plan.todo)
    except KeyboardInterrupt:
        display.close()
        log.warning("interrupted; rerun the same command to resume (finished jobs are kept)")
        return 130
    display.close()
    failed = {**{job.name: why for job, why in plan.conflicts}, **result.failed}
    for name, why in failed.items():
        log.warning("failed %s: %s", name, why)
    log.info("%d done (%d rendered now), %d failed", len(result.done) + len(plan.kept), len(result.done), len(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`emo-render --jobs jobs.csv --out DIR`: the job list `emo-batch` reads, rendered here instead of on ComfyUI servers.

The same list, the same `<out>/<name>.mp4` outputs and the same manifest (`<out>/emo_batch_manifest.json`), so
one job list drives either ComfyUI servers or local renders, and either command resumes the other's batch:
a video already made from the same inputs is kept, one made from other inputs is refused unless `overwrite`.
A job's seed, steps and speed replace the command's; the portrait's encoding is reused while it repeats.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..batch.jobs import Job
from ..batch.manifest import MANIFEST_NAME, Manifest, plan_jobs
from ..errors import EmoError
from .models import RenderModels
from .pipeline import Portrait, portrait_key, prepare_portrait, render
from .settings import RenderSettings

log = logging.getLogger(__name__)


@dataclass
class JobsResult:
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_jobs(jobs: list[Job], out_dir: Path, models: RenderModels, settings: RenderSettings, display, *,
             overwrite: bool = False, face_mask: str | None = None,
             check_cancel: Callable[[], None] = lambda: None) -> JobsResult:
    """Render every job not already done; a failing job is recorded with its sentence and the next one runs.
    KeyboardInterrupt stops at once: the running job goes back to pending and leaves no partial file."""
    manifest = Manifest.load(out_dir / MANIFEST_NAME)
    plan = plan_jobs(jobs, manifest, out_dir, overwrite)
    result = JobsResult(kept=[j.name for j in plan.kept], failed={j.name: why for j, why in plan.conflicts})
    log.info("%d jobs: %d to render, %d already done, %d refused; manifest %s", len(jobs), len(plan.todo),
             len(plan.kept), len(plan.conflicts), manifest.path)
    portrait: Portrait | None = None
    for i, job in enumerate(plan.todo, 1):
        display.start_job(f"job {i}/{len(plan.todo)} {job.name}")
        manifest.update(job.name, state="running", server="local", error=None)
        job_settings = settings.with_job(job.seed, job.steps, job.speed)
        try:
            if portrait is None or portrait.key != portrait_key(job.portrait, job_settings, face_mask):
                display.phase("portrait: face, reference")
                portrait = prepare_portrait(models, job.portrait, job_settings, face_mask)
            out = render(models, portrait, job.audio, out_dir / f"{job.name}.mp4", job_settings, display, check_cancel)
        except KeyboardInterrupt:
            manifest.update(job.name, state="pending")
            raise
        except EmoError as err:
            _failed(result, manifest, display, job, str(err))
            continue
        except Exception as err:  # e.g. CUDA out of memory: this job fails, the batch goes on
            log.debug("job %s", job.name, exc_info=True)
            _failed(result, manifest, display, job, f"{type(err).__name__}: {err}")
            continue
        manifest.update(job.name, state="done", output=out.name, error=None)
        result.done.append(job.name)
        display.phase(f"done: {out}")
    display.start_job("")
    return result


def _failed(result: JobsResult, manifest: Manifest, display, job: Job, why: str) -> None:
    manifest.update(job.name, state="failed", error=why)
    result.failed[job.name] = why
    display.phase(f"failed: {why}")

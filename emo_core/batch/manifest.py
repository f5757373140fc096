"""The batch manifest: one small JSON file recording each job's state, so a rerun resumes.

`{"version": 1, "jobs": {name: {"state": "pending"|"running"|"done"|"failed", "fingerprint", "portrait",
"audio", "seed", "speed", "steps", "output", "error", "server", "prompt_id", "attempts", "updated"}}}`.
`output` is the file name inside the output folder. Every change rewrites the file atomically (a temporary
file, then os.replace), so a crash leaves the previous or the new state, never half of one.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInputError
from ..json_file import write_json_atomic
from .jobs import Job, fingerprint

STATES = ("pending", "running", "done", "failed")
# What video workflows save (SaveVideo, SaveAnimatedWEBP/PNG, VideoHelperSuite); nothing else is downloaded.
OUTPUT_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp", ".png")
MANIFEST_NAME = "emo_batch_manifest.json"


class Manifest:
    """Job states by job name; thread-safe; saved after every update."""

    def __init__(self, path: Path, jobs: dict[str, dict] | None = None):
        self.path = Path(path)
        self._jobs = jobs or {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            jobs = data["jobs"]
            if not isinstance(jobs, dict):
                raise TypeError("jobs is not an object")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InvalidInputError(f"manifest {path} cannot be read ({err}); move it away to start the "
                                    "batch afresh") from err
        return cls(path, jobs)

    def entry(self, name: str) -> dict | None:
        with self._lock:
            e = self._jobs.get(name)
            return dict(e) if e is not None else None

    def update(self, name: str, *, save: bool = True, **fields) -> None:
        """Merge `fields` into the job's record and save (unless `save=False`; call `save()` later)."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        with self._lock:
            record = self._jobs.setdefault(name, {})
            record.update(fields)
            record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            if save:
                self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, {"version": 1, "jobs": self._jobs})

    def states(self) -> dict[str, str]:
        with self._lock:
            return {name: e.get("state", "pending") for name, e in self._jobs.items()}


def existing_output(out_dir: Path, name: str, entry: dict | None) -> Path | None:
    """The downloaded file of job `name`, if one is there (the recorded one, else `<name>.<output ext>`)."""
    if entry and entry.get("output") and (out_dir / entry["output"]).is_file():
        return out_dir / entry["output"]
    for ext in OUTPUT_EXTS:
        if (out_dir / (name + ext)).is_file():
            return out_dir / (name + ext)
    return None


@dataclass
class Plan:
    """What a run does: jobs to render, jobs kept from before, jobs refused (their output is someone else's)."""
    todo: list[Job] = field(default_factory=list)
    kept: list[Job] = field(default_factory=list)
    conflicts: list[tuple[Job, str]] = field(default_factory=list)


def plan_jobs(jobs: list[Job], manifest: Manifest, out_dir: Path, overwrite: bool) -> Plan:
    """Decide each job: an existing output from the same inputs is kept; from other inputs it is refused
    unless `overwrite`; everything else (pending, running when a run stopped, failed) is rendered."""
    plan = Plan()
    for job in jobs:
        fp = fingerprint(job)
        entry = manifest.entry(job.name)
        found = existing_output(out_dir, job.name, entry)
        same_inputs = entry is None or entry.get("fingerprint") in (None, fp)
        if found is None or overwrite:
            plan.todo.append(job)
        elif same_inputs:
            plan.kept.append(job)
            manifest.update(job.name, save=False, **_describe(job, fp), state="done", output=found.name, error=None)
        else:
            why = (f"{found} was rendered from other inputs (portrait, audio, seed, speed or steps changed); "
                   "pass --overwrite to replace it or give this job another name")
            plan.conflicts.append((job, why))
            manifest.update(job.name, save=False, state="failed", error=why)
    for job in plan.todo:
        manifest.update(job.name, save=False, **_describe(job, fingerprint(job)), state="pending", error=None)
    manifest.save()
    return plan


def _describe(job: Job, fp: str) -> dict:
    return {"fingerprint": fp, "portrait": str(job.portrait), "audio": str(job.audio),
            "seed": job.seed, "speed": job.speed, "steps": job.steps}

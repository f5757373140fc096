"""One job on one server: upload inputs, substitute them, queue, follow progress, download the video."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .client import ComfyServer
from .errors import JobFailed, OutputConflict
from .jobs import Job, file_digest
from .manifest import OUTPUT_EXTS
from .outcome import JobProgress, ProgressTracker, history_outcome
from .workflow import Binding, substitute


@dataclass(frozen=True)
class RenderSettings:
    """What every job shares: the API workflow, where fields go, the output folder and server-side names."""
    workflow: dict
    binding: Binding
    out_dir: Path
    upload_subfolder: str = "emo_batch"  # inside ComfyUI's input folder
    output_prefix: str = "emo_batch"  # SaveVideo filename_prefix folder inside ComfyUI's output folder
    overwrite: bool = False

    def sampler_steps(self, job: Job) -> tuple[str | None, int | None]:
        """(sampler node id, steps per clip) for reading progress, where the workflow tells."""
        target = self.binding.get("steps") or self.binding.get("seed")
        if target is None:
            return None, None
        if job.steps is not None:
            return target.node, job.steps
        steps_target = self.binding.get("steps")
        value = self.workflow[steps_target.node]["inputs"].get(steps_target.input) if steps_target else None
        return target.node, value if isinstance(value, int) and not isinstance(value, bool) else None


def output_suffix(ref: dict, url: str) -> str:
    """The extension of the server's output file, if it is one a video workflow produces (the server,
    not us, names the file, so `.sh` or `.exe` must never land in the output folder)."""
    suffix = Path(str(ref.get("filename", ""))).suffix.lower()
    if suffix not in OUTPUT_EXTS:
        raise JobFailed(f"{url} named the job's output {ref.get('filename')!r}; only {', '.join(OUTPUT_EXTS)} "
                        "files are downloaded, so nothing was saved (check the workflow's save node)")
    return suffix


def upload_name(path: Path, digest: str) -> str:
    """A server-side name that is plain ASCII and unique per content: `<stem>-<sha256[:12]><ext>`.

    ComfyUI keeps an existing file of the same name and content instead of writing a copy, so reruns and
    other clients re-uploading the same portrait land on the same input file (and the same cache entry).
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:60] or "file"
    return f"{stem}-{digest[:12]}{path.suffix.lower()}"


def ensure_uploaded(server: ComfyServer, path: Path, subfolder: str) -> str:
    """Upload `path` once per server (by content); return the name the loader node takes."""
    digest = file_digest(path)
    if digest not in server.uploaded:
        server.uploaded[digest] = server.upload(path, upload_name(path, digest), subfolder)
    return server.uploaded[digest]


def render_job(server: ComfyServer, job: Job, settings: RenderSettings, *,
               on_queued: Callable[[str], None] = lambda prompt_id: None,
               on_progress: Callable[[JobProgress], None] = lambda p: None) -> Path:
    """Render `job` on `server` and return the downloaded file (`<out_dir>/<job name><ext>`).

    Raises `JobFailed` with ComfyUI's message when the prompt is rejected or fails, `ServerUnavailable`
    when the server cannot be reached or goes away.
    """
    server.ensure_connected()  # before queueing, so no event of the prompt is missed
    values = {
        "portrait": ensure_uploaded(server, job.portrait, settings.upload_subfolder),
        "audio": ensure_uploaded(server, job.audio, settings.upload_subfolder),
        "output": f"{settings.output_prefix}/{job.name}" if settings.output_prefix else job.name,
        **job.overrides(),
    }
    prompt = substitute(settings.workflow, settings.binding, values)
    prompt_id = server.queue_prompt(prompt)
    on_queued(prompt_id)
    tracker = ProgressTracker(prompt_id, *settings.sampler_steps(job))

    def follow(message: dict) -> None:
        progress = tracker.update(message)
        if progress is not None:
            on_progress(progress)

    server.current_prompt = prompt_id
    try:
        entry = server.wait(prompt_id, follow)
    finally:
        server.current_prompt = None
    outcome = history_outcome(entry, settings.binding["output"].node)
    if outcome.error is not None:
        raise JobFailed(outcome.error)
    ref = outcome.files[0]
    dest = settings.out_dir / (job.name + output_suffix(ref, server.url))
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not settings.overwrite:
        raise OutputConflict(f"{dest} appeared while the job ran; it is kept (pass --overwrite to replace it)")
    server.download(ref, dest)
    return dest

"""Jobs over servers: one thread per server takes the next job from a shared pool.

A free server takes the next job, preferring one with the portrait it rendered last (ComfyUI keeps
that ReferenceNet encoding cached). A job whose server goes away is put back for another server, at most
`attempts` times in all; that server leaves the batch. A job ComfyUI fails is recorded and the batch
goes on.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .client import ComfyServer
from .errors import BatchError, ServerUnavailable
from .jobs import Job, file_digest
from .manifest import Manifest
from .progress import BatchDisplay
from .render import RenderSettings, render_job

log = logging.getLogger(__name__)


class JobPool:
    """Pending jobs shared by the server threads. `take` blocks while other threads still hold jobs
    (one may come back) and returns None when nothing is left to do."""

    def __init__(self, jobs: list[Job]):
        self._pending = list(jobs)
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()

    def take(self, prefer: str | None = None) -> Job | None:
        with self._cond:
            while not self._closed:
                if self._pending:
                    same = (k for k, j in enumerate(self._pending) if prefer and file_digest(j.portrait) == prefer)
                    i = next(same, 0)
                    self._busy += 1
                    return self._pending.pop(i)
                if self._busy == 0:
                    return None
                self._cond.wait()
            return None

    def finish(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def give_back(self, job: Job) -> None:
        with self._cond:
            self._pending.insert(0, job)
            self._busy -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def remaining(self) -> list[Job]:
        with self._cond:
            return list(self._pending)


@dataclass
class BatchResult:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class Batch:
    """Runs jobs on servers, recording every state change in the manifest."""

    def __init__(self, servers: list[ComfyServer], settings: RenderSettings, manifest: Manifest,
                 display: BatchDisplay, *, attempts: int = 3):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.servers, self.settings, self.manifest, self.display = servers, settings, manifest, display
        self.attempts = attempts
        self.result = BatchResult()
        self._tries: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(self, jobs: list[Job]) -> BatchResult:
        pool = JobPool(jobs)
        threads = [threading.Thread(target=self._work, args=(s, pool), name=f"emo-batch {s.url}", daemon=True)
                   for s in self.servers]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins keep Ctrl-C responsive
        except KeyboardInterrupt:
            pool.close()
            for server in self.servers:
                if server.current_prompt:
                    server.cancel(server.current_prompt)
            raise
        for job in pool.remaining():
            why = self._last_error.get(job.name, "no server could be reached")
            self._fail(job, f"no ComfyUI server left to run it (last error: {why})")
        return self.result

    def _work(self, server: ComfyServer, pool: JobPool) -> None:
        try:
            server.queue()
            server.ensure_connected()
        except BatchError as err:
            log.warning("leaving %s out of this batch: %s", server.url, err)
            return
        last_portrait = None
        try:
            while (job := pool.take(prefer=last_portrait)) is not None:
                if not self._run_one(server, job, pool):
                    return
                last_portrait = file_digest(job.portrait)
        finally:
            server.close()

    def _run_one(self, server: ComfyServer, job: Job, pool: JobPool) -> bool:
        """Render one job; False when the server went away (the thread then stops)."""
        with self._lock:
            tries = self._tries[job.name] = self._tries.get(job.name, 0) + 1
        self.manifest.update(job.name, state="running", server=server.url, attempts=tries, prompt_id=None, error=None)
        self.display.job_started(job.name, server.url)
        try:
            path = render_job(server, job, self.settings,
                              on_queued=lambda pid: self.manifest.update(job.name, prompt_id=pid),
                              on_progress=lambda p: self.display.job_progress(job.name, p))
        except ServerUnavailable as err:
            log.warning("leaving %s out of this batch: %s", server.url, err)
            self._last_error[job.name] = str(err)
            if tries < self.attempts:
                self.manifest.update(job.name, state="pending", error=f"retrying after: {err}")
                self.display.job_retried(job.name)
                pool.give_back(job)
            else:
                self._fail(job, f"gave up after {tries} attempts: {err}")
                pool.finish()
            return False
        except (BatchError, OSError) as err:
            self._fail(job, str(err))
        except Exception as err:  # a bug must not stop the other jobs; it is logged with its traceback
            log.exception("job %s failed unexpectedly", job.name)
            self._fail(job, f"unexpected error: {err!r}")
        else:
            self.manifest.update(job.name, state="done", output=path.name, error=None)
            with self._lock:
                self.result.done.append(job.name)
            self.display.job_finished(job.name, "done", str(path))
        pool.finish()
        return True

    def _fail(self, job: Job, why: str) -> None:
        self.manifest.update(job.name, state="failed", error=why)
        with self._lock:
            self.result.failed[job.name] = why
        self.display.job_finished(job.name, "failed", why)

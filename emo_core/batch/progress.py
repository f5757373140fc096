"""The batch progress bar on stderr, in plain text.

On a terminal one line is redrawn with \\r: `[####------] 3/10 done, 1 failed | job 4/10 anna: clip 2/5
step 7/25`. Elsewhere (a log file, CI) one line is written per finished job.
"""
from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO

from .outcome import JobProgress

BAR_WIDTH = 20
REDRAW_INTERVAL = 0.1  # seconds between redraws caused by step updates


class BatchDisplay:
    """Thread-safe batch progress: jobs done / total and each running job's clip and step."""

    def __init__(self, names: list[str], *, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.index = {name: k for k, name in enumerate(names, 1)}
        self.total = len(names)
        self.done = self.failed = 0
        self.running: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._drawn = 0

    def add_done(self, count: int) -> None:
        """Count jobs finished by an earlier run."""
        with self._lock:
            self.done += count

    def job_started(self, name: str, server: str) -> None:
        with self._lock:
            self.running[name] = f"starting on {server}"
            self._draw(force=True)

    def job_progress(self, name: str, progress: JobProgress) -> None:
        with self._lock:
            self.running[name] = progress.text()
            self._draw()

    def job_retried(self, name: str) -> None:
        with self._lock:
            self.running.pop(name, None)
            self._draw(force=True)

    def job_finished(self, name: str, state: str, detail: str) -> None:
        with self._lock:
            self.running.pop(name, None)
            if state == "done":
                self.done += 1
            else:
                self.failed += 1
            if not self.tty:
                self.stream.write(f"job {self._label(name)}: {state}: {detail} ({self._counts()})\n")
                self.stream.flush()
            self._draw(force=True)

    def write_line(self, text: str) -> None:
        """Print a line above the bar (log messages)."""
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            if self.tty and self._drawn:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = 0

    def _label(self, name: str) -> str:
        return f"{self.index.get(name, '?')}/{self.total} {name}"

    def _counts(self) -> str:
        return f"{self.done}/{self.total} done" + (f", {self.failed} failed" if self.failed else "")

    def line(self) -> str:
        finished = self.done + self.failed
        filled = round(BAR_WIDTH * finished / self.total) if self.total else BAR_WIDTH
        parts = [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self._counts()}"]
        parts += [f"job {self._label(name)}: {state}" for name, state in self.running.items()]
        return " | ".join(parts)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL:
            return
        self._last_draw = now
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        text = self.line()[:width]
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)) + "\r" + text)
        self.stream.flush()
        self._drawn = len(text)


class DisplayHandler(logging.Handler):
    """Log records written above the progress bar, so bar and messages do not garble each other."""

    def __init__(self, display: BatchDisplay, level: int = logging.NOTSET):
        super().__init__(level)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.write_line(self.format(record))
        except Exception:  # logging must never raise into the caller
            self.handleError(record)

"""emo-render's progress on the terminal, in plain text.

On a terminal one line on stderr is redrawn: `[job 2/5 anna] clip 2/5 · step 7/25 · 31% · 0:42 elapsed ·
ETA 1:33`, then `writing video 64/154 frames`. Redirected to a file, one line per finished clip and per phase.
The ETA is the sampling time so far divided by the steps done, times the steps left.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, TextIO

REDRAW_INTERVAL = 0.1  # seconds between redraws caused by step updates


def clock_text(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def step_text(clip: int, clips: int, step: int, steps: int, done: int, total: int, elapsed: float) -> str:
    """The sampling part of the line, from a sampler Progress and the seconds since sampling began."""
    eta = elapsed / done * (total - done) if done else None
    percent = 100 * done // total if total else 0
    return (f"clip {clip}/{clips} · step {step}/{steps} · {percent}% · {clock_text(elapsed)} elapsed · "
            f"ETA {'?' if eta is None else clock_text(eta)}")


class RenderDisplay:
    """Receives phases, sampler steps (`on_step`) and written frames (`on_frames`); `write_line` prints a log
    line above the redrawn one. `prefix` names the job in a job list."""

    def __init__(self, *, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.prefix = ""
        self._text = ""
        self._drawn = 0
        self._last_draw = 0.0
        self._sampling_since: float | None = None

    def start_job(self, prefix: str) -> None:
        self.prefix, self._sampling_since = prefix, None

    def phase(self, text: str) -> None:
        self._show(text, force=True, line=True)

    def begin_sampling(self) -> None:
        """Start the clock the ETA is measured with (right before the sampler runs)."""
        self._sampling_since = self.clock()

    def on_step(self, p) -> None:
        """A sampler Progress (emo_core.sampler.Progress): clip, clips, step, steps, done, total."""
        now = self.clock()
        if self._sampling_since is None:
            self._sampling_since = now
        text = step_text(p.clip, p.clips, p.step, p.steps, p.done, p.total, now - self._sampling_since)
        self._show(text, force=p.step == p.steps, line=p.step == p.steps)

    def on_frames(self, done: int, total: int) -> None:
        self._show(f"writing video {done}/{total} frames", force=done == total, line=done == total)

    def write_line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self._redraw()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn, self._text = 0, ""

    def _show(self, text: str, force: bool, line: bool) -> None:
        """Redraw on a terminal (at most every REDRAW_INTERVAL unless `force`); elsewhere write `line`s only."""
        self._text = f"[{self.prefix}] {text}" if self.prefix else text
        if not self.tty:
            if line:
                self.stream.write(self._text + "\n")
                self.stream.flush()
            return
        now = self.clock()
        if force or now - self._last_draw >= REDRAW_INTERVAL:
            self._last_draw = now
            self._redraw()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _redraw(self) -> None:
        if not self.tty or not self._text:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        text = self._text[:width]
        self.stream.write("\r" + text + " " * max(0, self._drawn - len(text)) + "\r" + text)
        self.stream.flush()
        self._drawn = len(text)

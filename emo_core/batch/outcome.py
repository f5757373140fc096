"""Reading ComfyUI's JSON: rejected prompts, history entries and websocket progress. Pure functions.

Shapes (ComfyUI server.py / execution.py / main.py):
- POST /prompt 400: `{"error": {"type", "message", "details", "extra_info"}, "node_errors": {id:
  {"errors": [{"type", "message", "details", "extra_info"}], "dependent_outputs": [...], "class_type"}}}`
- GET /history/<id>: `{id: {"prompt": [...], "outputs": {node id: ui output}, "status": {"status_str":
  "success"|"error", "completed": bool, "messages": [[event, data], ...]}, "meta": {...}}}`; an
  `execution_error` message's data has node_id, node_type, exception_message, exception_type, traceback.
- SaveVideo's ui output: `{"images": [{"filename", "subfolder", "type": "output"}], "animated": [true]}`.
- websocket `progress` data: `{"value", "max", "prompt_id", "node"}`; our sampler also sends
  `emo.progress` data: `{"prompt_id", "node", "clip", "clips", "step", "steps"}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

OUTPUT_FILE_KEYS = ("images", "videos", "gifs")


def rejection_message(body) -> str:
    """One line from a POST /prompt 400 body: the error and each node's reasons."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the prompt: {body!r}"[:500]
    error = body.get("error")
    parts = []
    if isinstance(error, dict):
        parts.append(error.get("message") or error.get("type") or "prompt rejected")
    elif error:
        parts.append(str(error))
    for node_id, info in (body.get("node_errors") or {}).items():
        for reason in info.get("errors", []):
            parts.append(f"{info.get('class_type', '?')} (node {node_id}): {reason.get('message', '')}"
                         f"{': ' + reason['details'] if reason.get('details') else ''}")
    if len(parts) == 1 and isinstance(error, dict) and error.get("details"):
        parts.append(str(error["details"]))
    return "; ".join(p for p in parts if p) or "ComfyUI rejected the prompt"


def execution_error_message(data: dict) -> str:
    """`"<exception message> (<node type> node <id>)"` from an execution_error message's data."""
    text = str(data.get("exception_message") or data.get("exception_type") or "unknown error").strip()
    return f"{text} ({data.get('node_type', '?')} node {data.get('node_id', '?')})"


@dataclass(frozen=True)
class Outcome:
    """A finished prompt: `error` is None on success and `files` lists the output node's saved files."""
    error: str | None
    files: tuple[dict, ...] = ()


def history_outcome(entry: dict, output_node: str) -> Outcome:
    """Success with the output node's files, or the failure message ComfyUI recorded."""
    status = entry.get("status") or {}
    messages = [m for m in status.get("messages", []) if isinstance(m, (list, tuple)) and len(m) == 2]
    for event, data in messages:
        if event == "execution_error":
            return Outcome(execution_error_message(data))
        if event == "execution_interrupted":
            return Outcome(f"interrupted on the server ({data.get('node_type', '?')} node {data.get('node_id', '?')})")
    if status and (status.get("status_str") != "success" or not status.get("completed", True)):
        return Outcome(f"ComfyUI reported status {status.get('status_str')!r} without an error message")
    ui = (entry.get("outputs") or {}).get(output_node) or {}
    files = tuple(f for key in OUTPUT_FILE_KEYS for f in ui.get(key, [])
                  if isinstance(f, dict) and f.get("filename") and f.get("type", "output") == "output")
    if not files:
        got = ", ".join(sorted(entry.get("outputs") or {})) or "none"
        return Outcome(f"the output node {output_node} saved no file (nodes with outputs: {got})")
    return Outcome(None, files)


@dataclass(frozen=True)
class JobProgress:
    """Progress of the running job. clip/clips/step/steps are None where they cannot be derived."""
    value: int
    max: int
    node: str | None = None
    clip: int | None = None
    clips: int | None = None
    step: int | None = None
    steps: int | None = None

    def text(self) -> str:
        if self.clip is not None and self.step is not None:
            return f"clip {self.clip}/{self.clips} step {self.step}/{self.steps}"
        if self.step is not None:
            return f"step {self.step}/{self.steps}"
        return f"node {self.node} {self.value}/{self.max}"


class ProgressTracker:
    """Turns the websocket messages of one prompt into `JobProgress`.

    Our sampler reports ComfyUI progress over all clips x steps; with the job's step count known that
    gives clip and step. An `emo.progress` message carries them directly and wins once seen.
    """

    def __init__(self, prompt_id: str, sampler_node: str | None, steps: int | None):
        self.prompt_id, self.sampler_node, self.steps = prompt_id, sampler_node, steps
        self._emo_seen = False

    def update(self, message: dict) -> JobProgress | None:
        kind, data = message.get("type"), message.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") != self.prompt_id:
            return None
        if kind == "emo.progress":
            self._emo_seen = True
            clip, clips, step, steps = (_int(data.get(k)) for k in ("clip", "clips", "step", "steps"))
            total = (clips or 1) * (steps or 1)
            done = ((clip or 1) - 1) * (steps or 0) + (step or 0)
            return JobProgress(done, total, data.get("node"), clip, clips, step, steps)
        if kind != "progress":
            return None
        value, top, node = _int(data.get("value")) or 0, _int(data.get("max")) or 0, data.get("node")
        if node is not None and node == self.sampler_node:
            if self._emo_seen:
                return None
            return self._derive(value, top, node)
        return JobProgress(value, top, node)

    def _derive(self, value: int, top: int, node: str) -> JobProgress:
        steps = self.steps
        if not steps or top <= 0 or top % steps:
            return JobProgress(value, top, node, step=value, steps=top)
        clips = top // steps
        clip = min(max(1, math.ceil(value / steps)), clips)
        return JobProgress(value, top, node, clip, clips, value - (clip - 1) * steps, steps)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

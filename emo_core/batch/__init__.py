"""API-mode batch rendering: drive ComfyUI servers over HTTP + websocket with the EMO API workflow.

A pure client (standard library + `websockets`); it never imports torch or ComfyUI. Entry point:
`emo-batch` / `python -m emo_core.batch` (see `__main__.py`).
"""
from .errors import BatchError, JobFailed, JobSpecError, OutputConflict, ServerUnavailable, WorkflowError
from .jobs import Job, load_jobs, pair_folders
from .workflow import bind, check_reference_branch, load_workflow, parse_bind, substitute

__all__ = [
    "BatchError", "Job", "JobFailed", "JobSpecError", "OutputConflict", "ServerUnavailable", "WorkflowError",
    "bind", "check_reference_branch", "load_jobs", "load_workflow", "pair_folders", "parse_bind", "substitute",
]

"""Typed errors of the batch client. Messages say what was wrong, the value seen and what to do."""
from __future__ import annotations

from ..errors import EmoError, InvalidInputError


class JobSpecError(InvalidInputError):
    """A job list (CSV, JSON or folder pair) names a missing file or holds a bad value."""


class WorkflowError(InvalidInputError):
    """The API workflow cannot be read or a job field cannot be bound to one of its nodes."""


class BatchError(EmoError):
    """A job could not be rendered; the batch records it and goes on."""


class JobFailed(BatchError):
    """ComfyUI rejected or failed the prompt (validation error, node exception, interruption)."""


class OutputConflict(BatchError):
    """An output file exists from other inputs and --overwrite was not given."""


class ServerUnavailable(BatchError):
    """The server cannot be reached or went away; the job is retried on another server."""

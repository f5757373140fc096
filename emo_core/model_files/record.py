"""The local record of fetched model files: `<models root>/emo_models.json`.

`{"version": 1, "files": {"<folder>/<path>": {"size", "sha256", "mtime_ns", "source", "revision",
"checked_against", "converted_from", "fetched"}}}`. `emo-models fetch` writes an entry when it places a file
(after checking the bytes against the source's digest); `emo-models list` compares sizes with it and
`emo-models verify` digests. Every change rewrites the file atomically (temporary file, then os.replace).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import InvalidInputError
from ..json_file import write_json_atomic

RECORD_NAME = "emo_models.json"


class Record:
    """Entries by path under the models root ('/'-separated)."""

    def __init__(self, path: Path, files: dict[str, dict] | None = None):
        self.path = Path(path)
        self.files = files or {}

    @classmethod
    def load(cls, root: str | os.PathLike) -> Record:
        path = Path(root) / RECORD_NAME
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"]
            if not isinstance(files, dict):
                raise TypeError("'files' is not an object")
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"the model record {path} cannot be read ({err}); move it away and run "
                                    "emo-models fetch again") from err
        return cls(path, files)

    def get(self, relpath: str) -> dict | None:
        return self.files.get(relpath)

    def put(self, relpath: str, **fields) -> None:
        self.files[relpath] = {**fields, "fetched": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def drop(self, relpath: str) -> None:
        if self.files.pop(relpath, None) is not None:
            self.save()

    def save(self) -> None:
        write_json_atomic(self.path, {"version": 1, "files": self.files})


def size_problem(path: Path, entry: dict | None, pinned: int | None = None) -> str | None:
    """Why a present file's size is wrong (against the record, then the pinned size), or None."""
    size = path.stat().st_size
    for expected, where in ((None if entry is None else entry.get("size"), "recorded"), (pinned, "pinned")):
        if expected is not None and size != expected:
            return f"{size} bytes, {where} {expected}"
    return None

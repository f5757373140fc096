"""`emo-models list` (present / missing / corrupt by size) and `emo-models verify` (SHA-256 against the record and
the pinned digests), plus the quick check emo-render runs before it loads a file.

A file that fails verification is renamed `<name>.corrupt` (so neither the nodes nor emo-render load it, and the
next `emo-models fetch` gets a fresh copy) and its record entry is dropped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFileError, MissingWeightsError
from .catalog import Family, ModelFile, fetch_hint
from .digests import sha256_file
from .layout import file_path
from .record import Record, size_problem

CORRUPT_SUFFIX = ".corrupt"


@dataclass(frozen=True)
class FileStatus:
    """state: "ok", "missing", "corrupt" or "unchecked" (present but neither recorded nor pinned)."""
    file: ModelFile
    path: Path
    state: str
    size: int | None = None
    detail: str = ""


def list_files(fam: Family, root: Path, record: Record, extras=frozenset(), every: bool = True) -> list[FileStatus]:
    """Status by size of the family's files (`every`: the optional ones too)."""
    files = fam.files if every else fam.selected(extras)
    return [_by_size(f, file_path(root, f.relpath), record.get(f.relpath)) for f in files]


def _by_size(file: ModelFile, path: Path, entry: dict | None) -> FileStatus:
    if not path.is_file():
        return FileStatus(file, path, "missing")
    size = path.stat().st_size
    problem = size_problem(path, entry, file.size)
    if problem is not None:
        return FileStatus(file, path, "corrupt", size, problem)
    if entry is None and file.sha256 is None:
        return FileStatus(file, path, "unchecked", size, "placed by hand; not in the record")
    return FileStatus(file, path, "ok", size)


def verify_files(fam: Family, root: Path, record: Record, quarantine: bool = True) -> list[FileStatus]:
    """Digest every present file of the family against the record and the pinned values; corrupt ones are
    renamed `<name>.corrupt` (unless not `quarantine`) and dropped from the record."""
    out = []
    for file in fam.files:
        status = _by_digest(file, file_path(root, file.relpath), record.get(file.relpath))
        if status.state == "corrupt" and quarantine:
            os.replace(status.path, status.path.with_name(status.path.name + CORRUPT_SUFFIX))
            record.drop(file.relpath)
            status = FileStatus(file, status.path, "corrupt", status.size,
                                f"{status.detail}; moved to {status.path.name}{CORRUPT_SUFFIX}")
        out.append(status)
    return out


def _by_digest(file: ModelFile, path: Path, entry: dict | None) -> FileStatus:
    by_size = _by_size(file, path, entry)
    if by_size.state in ("missing", "corrupt", "unchecked"):
        return by_size
    digest = sha256_file(path)
    for expected, where in ((None if entry is None else entry.get("sha256"), "recorded"), (file.sha256, "pinned")):
        if expected is not None and digest != expected:
            return FileStatus(file, path, "corrupt", by_size.size,
                              f"SHA-256 {digest[:12]}..., {where} {expected[:12]}...")
    return FileStatus(file, path, "ok", by_size.size, "SHA-256 matches")


def require_files(fam: Family, root: Path, relpaths: list[str]) -> None:
    """Before loading: every file under `relpaths` (files, or folders meaning the catalog's files inside them)
    must be there, and no recorded or pinned size may differ (a cheap check; `emo-models verify` digests)."""
    record = Record.load(root)
    wanted = [f for f in fam.files if any(f.relpath == p or f.relpath.startswith(p.rstrip("/") + "/")
                                          for p in relpaths)]
    hint = fetch_hint(fam.name, f" --dir {root}")
    for file in wanted:
        status = _by_size(file, file_path(root, file.relpath), record.get(file.relpath))
        if status.state == "missing":
            raise MissingWeightsError(f"{file.what} '{file.relpath}' not found in the models folder {root}; "
                                      f"download it with {hint}")
        if status.state == "corrupt":
            raise CorruptFileError(f"{file.what} '{file.relpath}' in {root} is damaged ({status.detail}) and was not "
                                   f"used; run `emo-models verify --dir {root}`, then {hint}")

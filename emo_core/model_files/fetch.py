"""`emo-models fetch`: get a family's files, check them, convert pickles once, place them and record them.

Per file: a recorded file that is still whole is kept (a changed size or modification time makes it hashed
again; a mismatch fetches it anew); a file placed by hand is left alone unless `force`. A new file is placed
through `<name>.partial` and a rename, so an interruption never leaves a half file under the real name.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CorruptFileError, EmoError
from .catalog import Family, HubSource, LandmarkerBundle, ModelFile, WheelMember
from .digests import sha256_file
from .layout import file_path
from .record import Record, size_problem
from .wheel import WheelCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchOptions:
    """extras: optional groups to fetch too (catalog.ModelFile.extra). force: replace files placed by hand or
    recorded ones. mediapipe_wheel: a local copy of the pinned MediaPipe wheel instead of pip download."""
    extras: frozenset[str] = field(default_factory=frozenset)
    force: bool = False
    mediapipe_wheel: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: state "fetched", "present", "kept" (placed by hand, left alone) or "failed"."""
    relpath: str
    state: str
    detail: str = ""
    size: int | None = None


def fetch_family(fam: Family, root: Path, options: FetchOptions = FetchOptions(), *,
                 report: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Fetch every file `fam` needs (plus `options.extras`) under `root`; a failure is reported and the next
    file is tried. KeyboardInterrupt stops at once, leaving no partial file placed."""
    record = Record.load(root)
    wheels = WheelCache(options.mediapipe_wheel)
    outcomes = []
    try:
        for file in fam.selected(options.extras):
            outcome = _fetch_one(file, root, record, wheels, options)
            outcomes.append(outcome)
            report(outcome)
    finally:
        wheels.close()
    return outcomes


def _fetch_one(file: ModelFile, root: Path, record: Record, wheels: WheelCache, options: FetchOptions) -> Outcome:
    dest = file_path(root, file.relpath)
    if dest.is_file() and not options.force:
        kept = _existing(file, dest, record)
        if kept is not None:
            return kept
    try:
        fields = _obtain(file, dest, wheels)
    except EmoError as err:
        log.debug("fetching %s failed", file.relpath, exc_info=True)
        return Outcome(file.relpath, "failed", str(err))
    stat = dest.stat()
    record.put(file.relpath, size=stat.st_size, mtime_ns=stat.st_mtime_ns, **fields)
    return Outcome(file.relpath, "fetched", fields["checked_against"], stat.st_size)


def _existing(file: ModelFile, dest: Path, record: Record) -> Outcome | None:
    """An Outcome when the file on disk stays, None when it must be fetched again (it is damaged)."""
    entry = record.get(file.relpath)
    size = dest.stat().st_size
    if entry is None:
        if file.sha256 is not None and sha256_file(dest) == file.sha256:
            stat = dest.stat()
            record.put(file.relpath, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=file.sha256,
                       source=file.source.describe(), checked_against="the pinned SHA-256")
            return Outcome(file.relpath, "present", "placed by hand, matches the pinned SHA-256", size)
        return Outcome(file.relpath, "kept", "placed by hand, not fetched by emo-models: left as it is and not "
                                             "checked (--force replaces it)", size)
    problem = size_problem(dest, entry, file.size)
    if problem is None and dest.stat().st_mtime_ns == entry.get("mtime_ns"):
        return Outcome(file.relpath, "present", "", size)
    if problem is None and sha256_file(dest) == entry.get("sha256"):
        record.put(file.relpath, **{**entry, "mtime_ns": dest.stat().st_mtime_ns})
        return Outcome(file.relpath, "present", "", size)
    log.warning("%s differs from what was fetched (%s); fetching it again", file.relpath, problem or "other bytes")
    return None


def _obtain(file: ModelFile, dest: Path, wheels: WheelCache) -> dict:
    """Get `file` to `dest` (through a partial file); -> the record fields describing where it came from."""
    source = file.source
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, HubSource):
        from .hub import fetch_hub_file

        fetched = fetch_hub_file(source)
        fields = {"source": source.describe(), "revision": fetched.revision, "checked_against": fetched.checked_against}
        if file.convert:
            _convert(fetched.path, dest)
            return {**fields, "converted_from": {"sha256": fetched.sha256, "size": fetched.size},
                    "sha256": sha256_file(dest)}
        _place(fetched.path, dest)
        return {**fields, "sha256": fetched.sha256}
    partial = dest.with_name(dest.name + ".partial")
    try:
        if isinstance(source, WheelMember):
            wheels.member(source, partial)
            against = "the pinned SHA-256"
        elif isinstance(source, LandmarkerBundle):
            wheels.bundle(source, partial)
            against = "the pinned SHA-256 of its two parts"
        else:
            raise TypeError(f"unknown source {source!r}")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    sha256 = sha256_file(dest)
    if file.sha256 is not None and sha256 != file.sha256:
        dest.unlink()
        raise CorruptFileError(f"{file.relpath} was built with SHA-256 {sha256[:12]}... where {file.sha256[:12]}... "
                               "is pinned; it was removed")
    return {"source": source.describe(), "checked_against": against, "sha256": sha256}


def _place(src: Path, dest: Path) -> None:
    """A hard link to the cached file where the file system allows it (no second copy of gigabytes), else a copy;
    through a partial name and a rename."""
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        try:
            os.link(os.path.realpath(src), partial)
        except OSError:
            shutil.copyfile(src, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _convert(src: Path, dest: Path) -> None:
    """The pickle `src` as .safetensors at `dest`, read with torch.load(weights_only=True) (emo_core.convert)."""
    from ..convert import convert

    partial = dest.with_name(dest.stem + ".partial.safetensors")
    partial.unlink(missing_ok=True)
    try:
        log.info("converting %s to %s (once)", src.name, dest.name)
        convert(str(src), str(partial))
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)

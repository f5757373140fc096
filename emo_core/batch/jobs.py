"""Job lists: a CSV or JSON file of jobs, or a portraits folder and an audio folder paired by file name.

Every source gives the same validated `Job` records. Relative paths in a job file are relative to that
file's folder. A job's name is its output file name without extension (default: the audio file's stem).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import JobSpecError

COLUMNS = ("portrait", "audio", "seed", "speed", "steps", "name")
ALIASES = {"output": "name", "output_name": "name"}
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
AUDIO_EXTS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"})
SEED_MAX = 2**64 - 1  # ComfyUI's INT seed widgets go up to 0xffffffffffffffff
STEPS_MAX = 10_000


@dataclass(frozen=True)
class Job:
    """One clip to render. `seed`, `speed` and `steps` left as None keep the workflow's own values."""
    name: str
    portrait: Path
    audio: Path
    seed: int | None = None
    speed: float | None = None
    steps: int | None = None

    def overrides(self) -> dict[str, int | float]:
        """The optional fields this job sets, by field name (seed, speed, steps)."""
        return {k: v for k, v in (("seed", self.seed), ("speed", self.speed), ("steps", self.steps))
                if v is not None}


def load_jobs(path: str | Path) -> list[Job]:
    """Read a `.csv` or `.json` job list and validate it."""
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(f"job list {path} does not exist; pass a .csv or .json file to --jobs")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix == ".json":
        rows = _read_json(path)
    else:
        raise JobSpecError(f"job list {path} has extension {suffix!r}; use .csv or .json")
    jobs = [job_from_row(row, base=path.parent, where=f"{path.name} job {i}") for i, row in enumerate(rows, 1)]
    return validate_jobs(jobs)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise JobSpecError(f"{path} is empty; the first row must name the columns {', '.join(COLUMNS)}")
        rows = []
        for row in reader:
            if None in row:
                raise JobSpecError(f"{path} line {reader.line_num} has more cells than the header")
            if any((v or "").strip() for v in row.values()):
                rows.append(row)
        return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JobSpecError(f"{path} is not valid JSON: {err}") from err
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise JobSpecError(f"{path} must hold a list of job objects (or {{\"jobs\": [...]}})")
    return data


def job_from_row(row: dict, *, base: Path, where: str) -> Job:
    """Build a Job from one CSV/JSON row; unknown keys and bad values raise `JobSpecError`."""
    fields: dict = {}
    for key, value in row.items():
        key = ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if key not in COLUMNS:
            raise JobSpecError(f"{where}: unknown column {key!r}; known: {', '.join(COLUMNS)}")
        if isinstance(value, str):
            value = value.strip()
        if value not in (None, ""):
            fields[key] = value
    for key in ("portrait", "audio"):
        if key not in fields:
            raise JobSpecError(f"{where}: no {key!r} given")
    portrait = _resolve(fields["portrait"], base)
    audio = _resolve(fields["audio"], base)
    return Job(
        name=str(fields.get("name", audio.stem)),
        portrait=portrait,
        audio=audio,
        seed=_integer(fields, "seed", 0, SEED_MAX, where),
        speed=_speed(fields, where),
        steps=_integer(fields, "steps", 1, STEPS_MAX, where),
    )


def _resolve(value, base: Path) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _integer(fields: dict, key: str, lo: int, hi: int, where: str) -> int | None:
    if key not in fields:
        return None
    raw = fields[key]
    if isinstance(raw, bool) or isinstance(raw, float):
        raise JobSpecError(f"{where}: {key} must be a whole number, got {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError) as err:
        raise JobSpecError(f"{where}: {key} must be a whole number, got {raw!r}") from err
    if not lo <= value <= hi:
        raise JobSpecError(f"{where}: {key}={value} is outside {lo}..{hi}")
    return value


def _speed(fields: dict, where: str) -> float | None:
    if "speed" not in fields:
        return None
    raw = fields["speed"]
    try:
        value = float(raw)
    except (TypeError, ValueError) as err:
        raise JobSpecError(f"{where}: speed must be a number, got {raw!r}") from err
    if isinstance(raw, bool) or not math.isfinite(value) or value < 0:
        raise JobSpecError(f"{where}: speed must be a finite number >= 0, got {raw!r}")
    return value


def pair_folders(portraits: str | Path, audio: str | Path) -> list[Job]:
    """Pair each audio file with the portrait of the same stem (`anna.wav` + `anna.png` -> job `anna`).

    `portraits` may also be one image file: every audio file is then spoken by that portrait.
    Portraits without audio are ignored; audio without a portrait is an error naming the files.
    """
    portraits, audio = Path(portraits), Path(audio)
    if not audio.is_dir():
        raise JobSpecError(f"audio folder {audio} does not exist")
    sounds = _listing(audio, AUDIO_EXTS)
    if not sounds:
        raise JobSpecError(f"no audio files ({', '.join(sorted(AUDIO_EXTS))}) in {audio}")
    if portraits.is_file():
        return validate_jobs([Job(name=s.stem, portrait=portraits, audio=s) for s in sounds])
    if not portraits.is_dir():
        raise JobSpecError(f"portrait folder or file {portraits} does not exist")
    by_stem: dict[str, Path] = {}
    for p in _listing(portraits, IMAGE_EXTS):
        if p.stem in by_stem:
            raise JobSpecError(f"two portraits share the name {p.stem!r}: {by_stem[p.stem].name}, {p.name}")
        by_stem[p.stem] = p
    unmatched = [s.name for s in sounds if s.stem not in by_stem]
    if unmatched:
        raise JobSpecError(f"no portrait in {portraits} with the same name as {', '.join(unmatched[:10])}"
                           f"{' ...' if len(unmatched) > 10 else ''}; name each image like its audio file")
    return validate_jobs([Job(name=s.stem, portrait=by_stem[s.stem], audio=s) for s in sounds])


def _listing(folder: Path, exts: frozenset[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)


def validate_jobs(jobs: list[Job]) -> list[Job]:
    """Check names are usable file names and unique and that every input file exists."""
    if not jobs:
        raise JobSpecError("the job list is empty")
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs, 1):
        _check_name(job.name, i)
        if job.name in seen:
            raise JobSpecError(f"jobs {seen[job.name]} and {i} both have the name {job.name!r}; give each job "
                               "its own 'name' (the output file name)")
        seen[job.name] = i
        for kind, exts in (("portrait", IMAGE_EXTS), ("audio", AUDIO_EXTS)):
            p = getattr(job, kind)
            # Only media are uploaded: a job list from elsewhere must not send e.g. ~/.ssh/id_rsa to a server.
            if p.suffix.lower() not in exts:
                raise JobSpecError(f"job {i} ({job.name}): {kind} {p.name!r} is not a {kind} file; use one of "
                                   f"{', '.join(sorted(exts))}")
            if not p.is_file():
                raise JobSpecError(f"job {i} ({job.name}): {kind} file {p} does not exist")
    return jobs


# Names Windows reserves for devices, with or without an extension ("con.mp4" too); the output may be
# written on a Windows client or server, and there such a name opens a device, not a file.
WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                              *(f"{d}{n}" for d in ("com", "lpt") for n in (*"0123456789", "¹", "²", "³"))})


def _check_name(name: str, i: int) -> None:
    bad = (not name or name in (".", "..") or name.startswith(".") or len(name) > 200
           or any(c in name for c in "/\\:*?\"<>|") or any(ord(c) < 32 for c in name)
           or name[-1] in ". " or name.split(".")[0].strip().lower() in WINDOWS_RESERVED)
    if bad:
        raise JobSpecError(f"job {i}: name {name!r} is not a usable file name on every system (no path "
                           "separators or <>:\"|?*, no leading dot, no trailing dot or space, not a Windows "
                           "device name such as CON or COM1, at most 200 characters)")


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex), cached while the file's size and mtime stay the same."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def fingerprint(job: Job) -> str:
    """What the job's output depends on: input contents and the values it sets (not paths or name)."""
    data = {"portrait": file_digest(job.portrait), "audio": file_digest(job.audio), **job.overrides()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

"""Helpers of the batch client tests: small input files, the fixture API workflow, running the CLI."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from fake_comfy_server import NO_FACE, FakeComfy

from emo_core.batch.__main__ import main

FIXTURE_WORKFLOW = Path(__file__).resolve().parent / "fixtures" / "emo_batch.api.json"


def load_fixture_workflow() -> dict:
    return json.loads(FIXTURE_WORKFLOW.read_text())


def portrait(path: Path, label: str, *, face: bool = True) -> Path:
    """Stand-in image bytes (the fake server never decodes them); without a face it carries NO_FACE."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + label.encode() + (b"" if face else NO_FACE))
    return path


def audio(path: Path, label: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + label.encode())
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


def simple_jobs(root: Path, names: list[str], *, no_face: tuple[str, ...] = (), same_portrait: bool = False) -> Path:
    """A CSV of jobs `name` = portraits/<name>.png (or one shared portrait) + audio/<name>.wav."""
    rows = []
    for i, name in enumerate(names):
        p = portrait(root / "portraits" / f"{'shared' if same_portrait else name}.png",
                     "shared" if same_portrait else name, face=name not in no_face)
        a = audio(root / "audio" / f"{name}.wav", name)
        rows.append({"portrait": str(p.relative_to(root)), "audio": str(a.relative_to(root)), "seed": 100 + i})
    return write_csv(root / "jobs.csv", rows)


def run_cli(*args, stream=None) -> tuple[int, str]:
    stream = stream if stream is not None else io.StringIO()
    code = main(["--workflow", str(FIXTURE_WORKFLOW), "--poll", "0.5", *map(str, args)], stream=stream)
    return code, stream.getvalue()


def servers_args(*fakes: FakeComfy) -> list[str]:
    return [x for f in fakes for x in ("--server", f.url)]


@contextlib.contextmanager
def fake_servers(*configs: dict):
    fakes = [FakeComfy(**c).start() for c in configs]
    try:
        yield fakes
    finally:
        for f in fakes:
            f.stop()


def manifest_jobs(out: Path) -> dict:
    return json.loads((out / "emo_batch_manifest.json").read_text())["jobs"]


def video_info(path: Path) -> dict:
    """The fake server's video: a header, then JSON naming the inputs it was rendered from."""
    raw = path.read_bytes()
    return json.loads(raw[raw.index(b"FAKE") + 4:])

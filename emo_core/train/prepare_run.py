"""Preparing many videos: listing the inputs, a process pool, resuming, and the manifest.

Output folder layout:
    <out>/<video id>-NNNN.tar   shards (webdataset tar, see .shards); written as .partial, then renamed
    <out>/records/<id>.json     one video's manifest entry, written atomically after all its shards
    <out>/manifest.json         settings + every record (prepared and skipped), rebuilt at the end of a run

A video is done when its record exists and every shard it names does; a rerun skips it. What an interrupted
run leaves (`*.partial`, shards of a video without a record) is removed and that video is redone. Each video
is processed alone, with the same code and seed-free maths in any worker, and torch on one thread (its
float sums are ordered by the thread count), so the shards are byte-identical whatever the number of
workers: parallelism comes from --workers, one video per process.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

from ..errors import InvalidInputError
from ..json_file import write_json_atomic
from .prepare import Models, PrepareSettings, prepare_video, video_id
from .prepare_media import SkipVideo

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
MANIFEST = "manifest.json"
RECORDS = "records"
# what a manifest written before frames were encoded implies: raw frames (its jpeg_quality played no part)
LEGACY_SETTINGS = {"frame_format": "raw", "jpeg_quality": PrepareSettings.jpeg_quality}


def list_videos(source: str | os.PathLike) -> list[Path]:
    """Videos of a folder (sorted, by suffix) or of a text file listing one path a line (relative paths are
    relative to the list's folder; blank lines and lines starting with # are ignored)."""
    source = Path(source)
    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    elif source.is_file():
        lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines()]
        videos = [source.parent / ln for ln in lines if ln and not ln.startswith("#")]
    else:
        raise InvalidInputError(f"{source} is neither a folder of videos nor a text file listing them")
    if not videos:
        raise InvalidInputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {source}")
    return videos


def load_models(wav2vec: str, model_dirs: Sequence[str], vae: str | None) -> Models:
    """The encoders a worker needs, on the CPU in float32 (the same numbers in every worker)."""
    from ..wav2vec import load_wav2vec

    vae_model = None
    if vae:
        from ..render.models import load_vae
        folder = Path(vae)
        if not folder.is_dir():
            raise InvalidInputError(f"--vae {vae} is not a folder; pass a diffusers AutoencoderKL folder "
                                    "(config.json + weights)")
        vae_model = load_vae(folder, "cpu")
    return Models(load_wav2vec(wav2vec), list(model_dirs), vae_model)


def check_settings(out: Path, record: dict) -> None:
    """Refuse to mix shards of different settings (or encoders) in one folder: a resume must use the same
    options."""
    manifest = out / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text(encoding="utf-8")).get("settings")
        if isinstance(old, dict) and "frame_format" not in old:
            old = {**old, **LEGACY_SETTINGS}
        if old != record:
            raise InvalidInputError(f"{out} was prepared with other settings {old}; use the same options to "
                                    f"resume, or a new --out folder for {record}")


def done_records(out: Path) -> dict[str, dict]:
    """Records of finished videos; removes partial shards and shards no record claims (an interrupted video)."""
    records = {}
    for path in sorted((out / RECORDS).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if all((out / name).is_file() for name in record.get("shards", [])):
            records[record["id"]] = record
    claimed = {name for r in records.values() for name in r.get("shards", [])}
    for path in list(out.glob("*.partial")) + [p for p in out.glob("*.tar") if p.name not in claimed]:
        log.info("removing %s left by an interrupted run", path.name)
        path.unlink()
    return records


_WORKER: dict = {}


def _init_worker(wav2vec: str, model_dirs: Sequence[str], vae: str | None) -> None:
    import torch
    torch.set_num_threads(1)
    _WORKER["models"] = load_models(wav2vec, model_dirs, vae)


def _run_one(path: str, out: str, settings: PrepareSettings) -> dict:
    """Prepare one video and write its record; a refusal becomes a "skipped" record with its reason."""
    start = time.monotonic()
    try:
        record = prepare_video(path, out, settings, _WORKER["models"])
    except SkipVideo as err:
        log.info("skipping %s: %s", path, err)
        record = {"id": video_id(path), "source": str(path), "status": "skipped", "reason": err.reason,
                  "message": str(err), "shards": []}
    write_json_atomic(Path(out) / RECORDS / f"{record['id']}.json", record)
    log.info("%s: %s in %.1f s", Path(path).name, record["status"], time.monotonic() - start)
    return record


def run_prepare(videos: Sequence[str | os.PathLike], out: str | os.PathLike, settings: PrepareSettings, *,
                wav2vec: str, model_dirs: Sequence[str], vae: str | None = None, workers: int = 1) -> dict:
    """Prepare every video not already done into `out`; returns the manifest (also written to manifest.json).

    workers: processes (spawned, each loads the encoders once); 1 runs in this process.
    """
    settings.validate()
    if workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {**settings.record(), "wav2vec": str(wav2vec), "vae": None if vae is None else str(vae)}
    check_settings(out, options)
    records = done_records(out)
    todo = [str(v) for v in videos if video_id(v) not in records]
    log.info("%d video(s): %d done before, %d to prepare with %d worker(s)", len(videos),
             len(videos) - len(todo), len(todo), workers)
    args = (wav2vec, [str(d) for d in model_dirs], vae)
    if workers == 1 or len(todo) <= 1:
        _run_here(todo, out, settings, args, records)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=args) as pool:
            for future in as_completed([pool.submit(_run_one, p, str(out), settings) for p in todo]):
                record = future.result()
                records[record["id"]] = record
    return write_manifest(out, options, [records[video_id(v)] for v in videos if video_id(v) in records])


def _run_here(todo: Sequence[str], out: Path, settings: PrepareSettings, args: tuple, records: dict) -> None:
    """The videos in this process, on one torch thread as in a worker (restored afterwards)."""
    import torch

    if not todo:
        return
    threads = torch.get_num_threads()
    try:
        _init_worker(*args)
        for path in todo:
            record = _run_one(path, str(out), settings)
            records[record["id"]] = record
    finally:
        torch.set_num_threads(threads)
        _WORKER.clear()


def write_manifest(out: Path, settings: dict, records: Sequence[dict]) -> dict:
    """manifest.json: settings, totals, and every video's record (skipped ones with their reason)."""
    prepared = [r for r in records if r["status"] == "prepared"]
    skipped: dict[str, int] = {}
    for r in records:
        if r["status"] == "skipped":
            skipped[r["reason"]] = skipped.get(r["reason"], 0) + 1
    manifest = {"settings": settings, "videos": list(records),
                "totals": {"videos": len(records), "prepared": len(prepared), "skipped": skipped,
                           "segments": sum(r["segments"] for r in prepared),
                           "frames": sum(r["frames"] for r in prepared),
                           "shards": sum(len(r["shards"]) for r in prepared)}}
    write_json_atomic(out / MANIFEST, manifest)
    log.info("manifest %s: %d prepared, skipped %s", out / MANIFEST, len(prepared), skipped or "none")
    return manifest

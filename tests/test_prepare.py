"""Data preparation (emo_core.train.prepare*) on synthetic talking-head videos with known truth
(emo_core.train.synthetic): shard contents against the shards contract, measured speed against the true
speed, edge cases skipped with their reason, resume, interruption and worker-count independence, and the
streamed reading against a whole-video reading (same samples, memory that does not grow with the length)."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_core.errors import InvalidInputError
from emo_core.speed_pose import smooth_series
from emo_core.train.prepare import PrepareSettings, video_id
from emo_core.train.prepare_faces import SPEED_SMOOTHING
from emo_core.train.prepare_media import VideoFrames, resample_indices, resample_stream
from emo_core.train.shards import ClipSample, ShardDataset, ShardWriter, shard_paths
from tests.conftest import shared_file, wav2vec_shape

SETTINGS = PrepareSettings(size=64, fps=25.0, segment_frames=16, shard_samples=2, expand_ratio=1.6)
CASES = {  # file stem -> (synthetic kind, fps, seed); the skip reasons below are the spec, not measurements
    "talk_a": ("talking", 25.0, 1), "talk_b": ("talking", 25.0, 2), "odd_fps": ("talking", 29.97, 3),
    "two_faces": ("two_faces", 25.0, 4), "noface": ("noface", 25.0, 5), "silent": ("silent", 25.0, 6),
    "no_audio": ("no_audio", 25.0, 7)}
EXPECTED_SKIPS = {"two_faces": "several_faces", "noface": "no_face", "silent": "silent_audio",
                  "no_audio": "no_audio"}


def wav2vec_path() -> str:
    return str(shared_file("parity", "hallo-tiny", "wav2vec2", "config.json").parent)


@pytest.fixture(scope="module")
def videos(tmp_path_factory, model_dirs):
    from emo_core.train.synthetic import SyntheticSettings, generate_video

    portrait = shared_file("fixtures", "portrait_astronaut_512.png")
    noface = shared_file("fixtures", "noface_coffee_512.png")
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for stem, (kind, fps, seed) in CASES.items():
        settings = SyntheticSettings(duration=2.0, fps=fps, size=96, kind=kind, max_roll=0.7, seed=seed)
        path = root / f"{stem}.mp4"
        out[stem] = (path, generate_video(path, noface if kind == "noface" else portrait, settings, model_dirs))
    return out


def prepare(paths, out, model_dirs, settings=SETTINGS, **kw):
    from emo_core.train.prepare_run import run_prepare
    return run_prepare([str(p) for p in paths], out, settings, wav2vec=wav2vec_path(),
                       model_dirs=[str(d) for d in model_dirs], **kw)


@pytest.fixture(scope="module")
def prepared(videos, model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare([p for p, _ in videos.values()], out, model_dirs)
    return out, manifest


def record_of(manifest, path) -> dict:
    return next(r for r in manifest["videos"] if r["id"] == video_id(path))


def samples_of(out, path) -> list[ClipSample]:
    data = ShardDataset(shard_paths(out))
    return [s for s in (data[i] for i in range(len(data))) if s.meta["video"] == video_id(path)]


# -- generator -----------------------------------------------------------------------------------
def test_generator_video_decodes_with_its_truth(videos):
    import av

    path, truth = videos["talk_a"]
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(c.streams.audio) == 1
    assert len(frames) == truth["frames"] == len(truth["speed"]) == len(truth["loudness"])
    # the mouth darkens as the audio gets louder
    dark = [f[round(y) - 1:round(y) + 2, round(x) - 2:round(x) + 3].mean()
            for f, [(x, y)] in zip(frames, truth["mouth_centres"])]
    assert np.corrcoef(truth["loudness"], dark)[0, 1] < -0.6
    assert max(truth["speed"]) > 2 * min(truth["speed"])  # the speed varies over the clip
    with av.open(str(videos["no_audio"][0])) as c:
        assert not c.streams.audio


# -- prepared shards -----------------------------------------------------------------------------
def test_samples_follow_the_shards_contract(prepared, videos):
    out, manifest = prepared
    layers, hidden = wav2vec_shape()
    L, S = SETTINGS.segment_frames, SETTINGS.size
    data = ShardDataset(shard_paths(out))
    ok = [r for r in manifest["videos"] if r["status"] == "prepared"]
    assert len(data) == manifest["totals"]["segments"] == sum(r["frames"] // L for r in ok) > 0
    for i in range(len(data)):
        s = data[i]
        assert s.frames.shape == (L, 3, S, S) and s.frames.dtype == torch.float32
        assert -1 <= s.frames.min() and s.frames.max() <= 1
        assert s.face_masks.shape == (L, 1, S, S) and set(s.face_masks.unique().tolist()) <= {0.0, 1.0}
        assert s.audio.shape == (L, layers, hidden) and s.audio.dtype == torch.float32
        assert s.speed.shape == (L,) and s.speed.dtype == torch.float64
        assert s.latents is None and s.fps == SETTINGS.fps
        assert s.key == f"{s.meta['video']}/{s.meta['segment']:04d}"


def test_lazy_frames_decode_only_what_is_indexed_and_equal_the_whole_decode(prepared, monkeypatch):
    """The trainer's ShardDataset(lazy_frames=True): every form of index gives the eagerly decoded frames, and a
    step that picks k frames decodes k of the segment's L."""
    import emo_core.train.shard_frames as shard_frames

    paths = shard_paths(prepared[0])
    eager, lazy = ShardDataset(paths)[0], ShardDataset(paths, lazy_frames=True)[0]
    L = eager.frames.shape[0]
    assert lazy.frames.shape == eager.frames.shape and len(lazy.frames) == L
    decoded = []
    real = shard_frames.decode_image
    monkeypatch.setattr(shard_frames, "decode_image", lambda data: decoded.append(1) or real(data))
    picks = [L - 1, 0, L // 2]
    assert torch.equal(lazy.frames[picks], eager.frames[picks]) and len(decoded) == len(picks)
    assert torch.equal(lazy.frames[L - 1], eager.frames[L - 1])
    assert torch.equal(lazy.frames[1:3], eager.frames[1:3]) and torch.equal(lazy.frames.float(), eager.frames)
    assert all(torch.equal(getattr(lazy, f), getattr(eager, f)) for f in ("face_masks", "audio", "speed"))


def test_workers_decode_the_frames_a_step_picks_and_the_step_decodes_none(prepared, monkeypatch):
    """The trainer's loader preloads, in its workers, exactly the frames build_one will draw for that position; the
    sample crosses to the training process (pickled) with them, and indexing them there decodes nothing."""
    import pickle

    import emo_core.train.shard_frames as shard_frames
    from emo_core.train.batches import BatchSpec, pick_frames, preload_picked_frames, sample_generator

    paths = shard_paths(prepared[0])
    eager, lazy = ShardDataset(paths)[0], ShardDataset(paths, lazy_frames=True)[0]
    L = eager.frames.shape[0]
    spec = BatchSpec(video=True, clip_frames=max(1, L // 4), motion_frames=1, speed=False, drop_audio=0.0,
                     drop_reference=0.0, seed=7)
    arrived = pickle.loads(pickle.dumps(preload_picked_frames(lazy, 5, spec)))
    ref, motion, target = pick_frames(L, spec, sample_generator(spec.seed, 5))
    picked = [ref, *motion, *target]

    def refuse(data):
        raise AssertionError("a frame was decoded in the training process")
    monkeypatch.setattr(shard_frames, "decode_image", refuse)
    assert torch.equal(arrived.frames[picked], eager.frames[picked])
    unpicked = next(i for i in range(L) if i not in picked)
    with pytest.raises(AssertionError, match="decoded in the training process"):
        arrived.frames[unpicked]


@pytest.mark.parametrize("stem", ["talk_a", "talk_b"])
def test_measured_speed_follows_the_true_speed(prepared, videos, stem):
    path, truth = videos[stem]
    samples = sorted(samples_of(prepared[0], path), key=lambda s: s.meta["start"])
    measured = torch.cat([s.speed for s in samples]).numpy()
    # the truth smoothed as the estimate is, so the comparison is about the pose, not the filter
    true = smooth_series(torch.tensor(truth["speed"][:len(measured)]), SPEED_SMOOTHING).numpy()
    assert np.corrcoef(measured, true)[0, 1] > 0.7


def test_face_mask_covers_the_mouth(prepared, videos):
    path, truth = videos["talk_a"]
    for s in samples_of(prepared[0], path):
        left, top, right, _ = s.meta["crop"]
        scale = SETTINGS.size / (right - left)
        for f in range(SETTINGS.segment_frames):
            (x, y), = truth["mouth_centres"][s.meta["start"] + f]
            assert s.face_masks[f, 0, int((y - top) * scale), int((x - left) * scale)] == 1
        assert s.face_masks.mean() < 0.9  # the box, not the whole crop


def test_edge_cases_are_listed_with_their_reason(prepared, videos):
    manifest = prepared[1]
    for stem, (path, _) in videos.items():
        record = record_of(manifest, path)
        assert record["status"] == ("skipped" if stem in EXPECTED_SKIPS else "prepared"), record
        assert record.get("reason") == EXPECTED_SKIPS.get(stem)
    assert manifest["totals"]["skipped"] == {r: 1 for r in EXPECTED_SKIPS.values()}


def test_odd_fps_is_resampled_to_the_target_rate(prepared, videos):
    path, truth = videos["odd_fps"]
    record = record_of(prepared[1], path)
    assert record["frames_in"] == truth["frames"] and record["fps_in"] == pytest.approx(truth["fps"], rel=1e-3)
    assert record["frames_resampled"] == math.floor(truth["frames"] / record["fps_in"] * SETTINGS.fps + 1e-6)


def test_too_short_and_undecodable_videos_are_skipped(videos, model_dirs, tmp_path):
    path, truth = videos["talk_a"]
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video" * 100)
    long = PrepareSettings(size=64, segment_frames=truth["frames"] + 1)
    manifest = prepare([path, garbage], tmp_path / "out", model_dirs, settings=long)
    assert [r.get("reason") for r in manifest["videos"]] == ["too_short", "decode_error"]
    assert shard_paths(tmp_path / "out") == []


# -- resume, interruption, workers ---------------------------------------------------------------
def test_a_second_run_does_nothing_new(prepared, videos, model_dirs, monkeypatch):
    import emo_core.train.prepare_run as run

    out, manifest = prepared
    before = {p: Path(p).stat().st_mtime_ns for p in shard_paths(out)}
    monkeypatch.setattr(run, "prepare_video", lambda *a, **k: pytest.fail("a finished video was redone"))
    again = prepare([p for p, _ in videos.values()], out, model_dirs)
    assert again == manifest
    with pytest.raises(InvalidInputError, match="other settings"):  # a resume never mixes settings
        prepare([p for p, _ in videos.values()], out, model_dirs, settings=replace(SETTINGS, size=32))
    assert {p: Path(p).stat().st_mtime_ns for p in shard_paths(out)} == before


def test_interrupted_work_is_redone_and_never_looks_finished(prepared, videos, model_dirs, tmp_path, monkeypatch):
    path = videos["talk_b"][0]
    reference = {Path(p).name: Path(p).read_bytes() for p in shard_paths(prepared[0])
                 if Path(p).name.startswith(video_id(path))}
    calls = {"n": 0}
    real_write = ShardWriter.write

    def dying_write(self, sample):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of a shard
        real_write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        prepare([path], tmp_path, model_dirs)
    monkeypatch.undo()
    assert shard_paths(tmp_path) == [] and not list(tmp_path.glob("*.partial"))
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").iterdir())
    # a kill -9 leaves a partial file and an unclaimed shard: both are removed and the video redone
    name = next(iter(reference))
    (tmp_path / f"{name}.partial").write_bytes(b"half a shard")
    (tmp_path / name).write_bytes(b"a shard whose video has no record")
    prepare([path], tmp_path, model_dirs)
    assert {Path(p).name: Path(p).read_bytes() for p in shard_paths(tmp_path)} == reference
    assert not list(tmp_path.glob("*.partial"))


def test_shards_are_the_same_whatever_the_worker_count(prepared, videos, model_dirs, tmp_path):
    paths = [videos[s][0] for s in ("talk_a", "odd_fps")]
    manifest = prepare(paths, tmp_path, model_dirs, workers=2)
    assert manifest["settings"]["size"] == SETTINGS.size and manifest["settings"]["frame_format"] == "jpeg"
    mine = {Path(p).name: Path(p).read_bytes() for p in shard_paths(tmp_path)}
    ids = {video_id(p) for p in paths}
    theirs = {Path(p).name: Path(p).read_bytes() for p in shard_paths(prepared[0]) if Path(p).name[:16] in ids}
    assert sorted(mine) == sorted(theirs) and mine
    for name in mine:  # the encoded frames too: byte for byte
        assert mine[name] == theirs[name], name


# -- command line --------------------------------------------------------------------------------
def test_cli_with_a_list_file_and_a_vae(videos, model_dirs, tmp_path, capsys):
    from diffusers import AutoencoderKL

    from emo_core.train.prepare_cli import main

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4
                  ).save_pretrained(tmp_path / "vae")
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# training set\n{videos['talk_a'][0]}\n\n{videos['noface'][0]}\n")
    argv = [str(listing), "--out", str(tmp_path / "out"), "--wav2vec", wav2vec_path(), "--vae",
            str(tmp_path / "vae"), "--size", str(SETTINGS.size), "--segment-frames", str(SETTINGS.segment_frames),
            "--mediapipe-models", str(model_dirs[0]), "--frames", "png"]
    assert main(argv) == 0
    assert "1 of 2 videos prepared" in capsys.readouterr().out
    data = ShardDataset(shard_paths(tmp_path / "out"))
    side = SETTINGS.size // 8
    assert data[0].latents.shape == (SETTINGS.segment_frames, 4, side, side)
    assert data[0].meta["frame_format"] == "png"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["frame_format"] == "png"
    assert main(argv[:-2] + ["--frames", "jpeg", "--jpeg-quality", "0"]) == 2
    assert "jpeg_quality" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--wav2vec", wav2vec_path()]) == 2
    assert "neither a folder" in capsys.readouterr().err


def test_a_failure_after_some_shards_leaves_none_of_that_video(videos, model_dirs, tmp_path, monkeypatch):
    """The second reading can fail after a shard is finished (a file changed mid-run): that video is skipped
    and its finished shards go too, so the folder never holds samples of a video the manifest skipped."""
    from emo_core.train.prepare_media import SkipVideo

    calls = {"n": 0}
    real_write = ShardWriter.write

    def failing_write(self, sample):
        calls["n"] += 1
        if calls["n"] > SETTINGS.shard_samples:  # the first shard is complete by now
            raise SkipVideo("decode_error", "gave fewer frames when read again")
        real_write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    manifest = prepare([videos["talk_a"][0]], tmp_path, model_dirs)
    assert calls["n"] > SETTINGS.shard_samples
    assert [r.get("reason") for r in manifest["videos"]] == ["decode_error"]
    assert shard_paths(tmp_path) == [] and not list(tmp_path.glob("*.partial"))


def test_a_folder_prepared_before_encoding_resumes_with_raw_frames(tmp_path):
    from emo_core.train.prepare_run import check_settings

    old = {k: v for k, v in replace(SETTINGS, frame_format="raw").record().items()
           if k not in ("frame_format", "jpeg_quality")}
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {**old, "wav2vec": "w", "vae": None}}))
    check_settings(tmp_path, {**replace(SETTINGS, frame_format="raw").record(), "wav2vec": "w", "vae": None})
    with pytest.raises(InvalidInputError, match="other settings"):
        check_settings(tmp_path, {**SETTINGS.record(), "wav2vec": "w", "vae": None})


# -- streaming against the whole-video reading ---------------------------------------------------
def read_whole_video(path, fps: float) -> tuple[np.ndarray, float, int]:
    """The reading before streaming: every frame decoded into memory, sorted by time, then resampled."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or stream.guessed_rate)
        images, times = [], []
        for frame in container.decode(stream):
            images.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    order = np.argsort(times, kind="stable")
    picked = resample_indices(torch.tensor(times, dtype=torch.float64)[order], source_fps, fps)
    return np.stack([images[order[i]] for i in picked.tolist()]), source_fps, len(images)


def test_streamed_resampling_picks_what_the_closed_form_picks():
    rng = random.Random(0)
    rates = [(29.97, 25.0), (60.0, 25.0), (100.0, 25.0), (12.5, 25.0), (24.0, 25.0), (25.0, 25.0), (50.0, 24.0),
             (23.976, 30.0), (7.0, 120.0), (120.0, 1.0)]
    for case in range(400):
        source_fps, fps = rates[case % len(rates)] if case < 200 else (rng.uniform(1, 120), rng.uniform(1, 120))
        count = rng.randint(1, 90)
        jitter = 0.3 / source_fps if case % 3 else 0.0  # rounded or uneven timestamps, still increasing
        start = rng.uniform(0, 2)
        times = sorted(start + i / source_fps + rng.uniform(-jitter, jitter) for i in range(count))
        times[1:] = [t if case % 7 else round(t, 2) for t in times[1:]]  # coarse time bases make ties
        times = sorted(times)
        expected = resample_indices(torch.tensor(times, dtype=torch.float64), source_fps, fps).tolist()
        got = list(resample_stream(zip(times, range(count)), source_fps, fps))
        assert got == expected, (case, source_fps, fps, count)
    assert list(resample_stream([], 25.0, 25.0)) == []


@pytest.mark.parametrize("stem", ["talk_a", "odd_fps"])
def test_streamed_frames_equal_the_whole_video_reading(videos, stem):
    path = videos[stem][0]
    whole, source_fps, frames_in = read_whole_video(path, SETTINGS.fps)
    video = VideoFrames(path, SETTINGS.fps)
    count = 0
    for image, expected in zip(video, whole):
        assert np.array_equal(image, expected), count
        count += 1
    assert count == video.frames_out == len(whole) and video.frames_in == frames_in
    assert video.source_fps == source_fps and video.size == (whole.shape[2], whole.shape[1])


def test_streamed_preparation_equals_the_whole_video_pipeline(videos, model_dirs, tmp_path):
    """Shards from the streamed, chunked preparation hold what the whole-video pipeline (all frames in memory,
    one face search over all of them) computes: same crops, masks, speeds, frame for frame."""
    from emo_core.audio import frame_count, to_mono_16k
    from emo_core.train.prepare import crop_segment, plan_segments
    from emo_core.train.prepare_faces import track_face
    from emo_core.train.prepare_media import read_audio_track

    paths = [videos[s][0] for s in ("talk_a", "odd_fps")]
    prepare(paths, tmp_path, model_dirs, settings=replace(SETTINGS, frame_format="raw"))
    for path in paths:
        frames, _, _ = read_whole_video(path, SETTINGS.fps)
        audio, _ = read_audio_track(path)
        usable = min(len(frames), frame_count(to_mono_16k(audio).numel(), SETTINGS.fps))
        track = track_face(torch.from_numpy(frames[:usable]), SETTINGS.fps, model_dirs)
        samples = sorted(samples_of(tmp_path, path), key=lambda s: s.meta["start"])
        segments = plan_segments(usable, SETTINGS.segment_frames)
        assert [s.meta["start"] for s in samples] == [seg.start for seg in segments] and segments
        for sample, seg in zip(samples, segments):
            images, masks, crop = crop_segment(torch.from_numpy(frames[seg.start:seg.stop]),
                                               track.boxes[seg.start:seg.stop], SETTINGS)
            stored = ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # the uint8 a shard keeps
            assert torch.equal(sample.frames, stored) and torch.equal(sample.face_masks, masks)
            assert torch.equal(sample.speed, track.speed[seg.start:seg.stop]) and sample.meta["crop"] == list(crop.box)


def test_memory_does_not_grow_with_the_video_length(videos, model_dirs, tmp_path, monkeypatch):
    """Peak traced memory (tracemalloc: the decoded frames and segment buffers are numpy's) of preparing a
    video and the same video four times longer: the longer one adds less than a tenth of its extra frames'
    bytes (that is its longer audio track; no frames), and stays far below holding the video. The face search
    is replaced by the first frame's result, so the test times the reading and cutting, not MediaPipe."""
    import tracemalloc

    import emo_core.train.prepare as prepare_module
    from emo_core.train.prepare import prepare_video
    from emo_core.train.prepare_faces import detect_faces
    from emo_core.train.prepare_media import frame_chunks
    from emo_core.train.prepare_run import load_models
    from emo_core.train.synthetic import loop_video

    source = videos["talk_a"][0]
    short = loop_video(source, tmp_path / "short.mp4", 1, scale=2)
    long = loop_video(source, tmp_path / "long.mp4", 4, scale=2)
    first = next(iter(frame_chunks(VideoFrames(long, SETTINGS.fps), 1)))
    face = detect_faces(first, model_dirs)[0]
    assert face.box is not None
    monkeypatch.setattr(prepare_module, "detect_faces", lambda frames, dirs: [face] * len(frames))
    models = load_models(wav2vec_path(), [str(d) for d in model_dirs], None)
    prepare_video(source, tmp_path / "warm", SETTINGS, models)  # first-call imports stay out of the measure
    figures = {}
    for name, path in (("short", short), ("long", long)):
        tracemalloc.start()
        try:
            record = prepare_video(path, tmp_path / name, SETTINGS, models)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        figures[name] = (peak, record["frames_resampled"] * first[0].numel(), record["frames_resampled"])
    (short_peak, short_bytes, _), (long_peak, long_bytes, long_frames) = figures["short"], figures["long"]
    frame_bytes = first[0].numel()
    print(f"peak traced: {short_peak / 1e6:.1f} MB for {figures['short'][2]} frames, {long_peak / 1e6:.1f} MB "
          f"({long_peak / frame_bytes:.0f} frames' worth) for {long_frames} frames ({long_bytes / 1e6:.1f} MB)")
    assert long_peak - short_peak < 0.1 * (long_bytes - short_bytes)
    assert long_peak < long_bytes / 3

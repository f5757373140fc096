"""`emo-render` with tiny random weights (the Hallo parity fixture set's network and wav2vec2, a random tiny VAE):
a playable H.264 MP4 with ceil(duration x fps) frames and the input's audio, job lists in emo-batch's format,
the nodes' one-sentence errors with documented exit codes, and no half file after Ctrl-C or SIGINT."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from conftest import ROOT, mediapipe_models_or_skip, parity_dir, shared_file, write_parity_checkpoint
from emo_core.render import cli
from emo_core.render.progress import RenderDisplay, clock_text, step_text

FPS = 10.0  # a low frame rate keeps the tiny renders to one or two clips
SIZE = 64


@pytest.fixture(scope="module")
def models(parity, tmp_path_factory):
    """A models folder laid out as `emo-models fetch --family hallo` places it, with tiny random models."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("models")
    (root / "emo" / "hallo").mkdir(parents=True)
    write_parity_checkpoint(root / "emo" / "hallo" / "net.safetensors", parity[2])
    shutil.copytree(parity_dir() / "wav2vec2", root / "audio_encoders" / "wav2vec2-base-960h")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4
                  ).save_pretrained(root / "vae" / "sd-vae-ft-mse")
    return root


@pytest.fixture
def env(models, monkeypatch):
    mediapipe_models_or_skip()  # EMO_MEDIAPIPE_MODELS, as CI sets it
    monkeypatch.setenv("EMO_MODELS_DIR", str(models))
    return models


def clip_of(name: str, seconds: float, dest: Path) -> tuple[Path, int, np.ndarray]:
    """The first `seconds` of a fixture recording as a WAV file -> (path, rate, samples (T, C) or (T,))."""
    rate, data = wavfile.read(shared_file("fixtures", name))
    data = data[: int(rate * seconds)]
    wavfile.write(dest, rate, data)
    return dest, rate, data


def portrait() -> str:
    return str(shared_file("fixtures", "portrait_astronaut_512.png"))


def render(*args, stream=None) -> int:
    return cli.main([*map(str, args), "--size", str(SIZE), "--fps", str(FPS), "--steps", "2"],
                    stream=stream or io.StringIO())


def decoded_audio(path: Path, layout: str, rate: int) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        return np.concatenate([f.to_ndarray() for frame in container.decode(audio=0)
                               for f in resampler.resample(frame)], axis=1)


def test_a_video_with_every_frame_and_the_input_audio(env, tmp_path):
    audio, rate, data = clip_of("speech_en_44k_stereo.wav", 0.55, tmp_path / "speech.wav")
    frames = math.ceil(data.shape[0] / rate * FPS)
    out, progress = tmp_path / "out" / "talk.mp4", io.StringIO()
    assert render(portrait(), audio, "-o", out, stream=progress) == 0, progress.getvalue()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial file left
    with av.open(str(out)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and float(video.average_rate) == FPS
        assert (video.width, video.height) == (SIZE, SIZE)
        assert sum(1 for _ in container.decode(video=0)) == frames
        assert sound.codec_context.name == "aac" and sound.rate == rate
        channels = 1 if data.ndim == 1 else data.shape[1]
        assert sound.channels == channels
        meta = json.loads(container.metadata["comment"])["emo_render"]
        assert meta["family"] == "hallo" and meta["steps"] == 2 and meta["fps"] == FPS
    # The sound track is the input (AAC is lossy: compared by correlation), whole, cut to the video's length.
    source = (data.T if data.ndim == 2 else data[None]).astype(np.float32) / 32768
    got = decoded_audio(out, "stereo" if channels == 2 else "mono", rate)
    assert source.shape[1] <= got.shape[1] < source.shape[1] + 2048  # AAC pads to whole 1024-sample frames
    assert np.corrcoef(source.ravel(), got[:, :source.shape[1]].ravel())[0, 1] > 0.9
    clips = progress.getvalue()
    assert "clip 1/" in clips and "ETA" in clips and f"writing video {frames}/{frames} frames" in clips


def test_ctrl_c_while_writing_leaves_no_file(env, tmp_path, monkeypatch):
    from emo_core.video_writer import StreamingVideoWriter

    audio, _, _ = clip_of("speech_en_16k_mono.wav", 0.55, tmp_path / "speech.wav")
    out = tmp_path / "talk.mp4"
    seen, write = [], StreamingVideoWriter.write

    def interrupted(self, images):
        write(self, images)
        seen.append(self.partial.exists())
        raise KeyboardInterrupt  # as Ctrl-C between two chunks

    monkeypatch.setattr(StreamingVideoWriter, "write", interrupted)
    assert render(portrait(), audio, "-o", out, "--chunk-frames", "2") == 130
    assert seen == [True]  # a half-written file existed when Ctrl-C came
    assert list(tmp_path.glob("talk.mp4*")) == []


def test_ctrl_c_while_sampling_leaves_no_file(env, tmp_path, monkeypatch):
    import emo_core.render.pipeline as pipeline

    audio, _, _ = clip_of("speech_en_16k_mono.wav", 0.55, tmp_path / "speech.wav")
    out = tmp_path / "talk.mp4"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C during a denoising step

    monkeypatch.setattr(pipeline, "generate", interrupted)
    assert render(portrait(), audio, "-o", out) == 130
    assert list(tmp_path.glob("talk.mp4*")) == []


def test_sigint_to_the_command_stops_it_with_130_and_no_file(env, tmp_path):
    """The installed command in its own process, interrupted by SIGINT (Ctrl-C) once sampling is under way."""
    audio, _, _ = clip_of("speech_en_16k_mono.wav", 2.0, tmp_path / "speech.wav")
    out = tmp_path / "talk.mp4"
    command = [sys.executable, "-m", "emo_core.render", portrait(), str(audio), "-o", str(out), "--size", str(SIZE),
               "--fps", str(FPS), "--steps", "3"]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "EMO_MODELS_DIR": str(env)})
    lines = []
    try:
        for line in proc.stderr:  # not a terminal: one line per finished clip
            lines.append(line)
            if line.startswith("clip 1/"):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert any(line.startswith("clip 1/") for line in lines), "".join(lines)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert list(tmp_path.glob("talk.mp4*")) == []


def test_job_list_renders_and_resumes_like_emo_batch(env, tmp_path, monkeypatch):
    from emo_core.batch.manifest import MANIFEST_NAME

    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    shutil.copy(portrait(), jobs_dir / "anna.png")
    durations = {}
    for name, seconds in (("a1", 0.25), ("a2", 0.35)):
        _, rate, data = clip_of("speech_en_16k_mono.wav", seconds, jobs_dir / f"{name}.wav")
        durations[name] = data.shape[0] / rate
    (jobs_dir / "jobs.csv").write_text("portrait,audio,seed,steps,name\nanna.png,a1.wav,7,1,first\n"
                                       "anna.png,a2.wav,,,second\n")
    out = tmp_path / "renders"
    assert render("--jobs", jobs_dir / "jobs.csv", "--out", out) == 0
    for name, audio in (("first", "a1"), ("second", "a2")):
        with av.open(str(out / f"{name}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == math.ceil(durations[audio] * FPS)
    manifest = json.loads((out / MANIFEST_NAME).read_text())["jobs"]
    assert {n: (e["state"], e["server"]) for n, e in manifest.items()} == {"first": ("done", "local"),
                                                                          "second": ("done", "local")}
    first = json.loads(av.open(str(out / "first.mp4")).metadata["comment"])["emo_render"]
    assert (first["seed"], first["steps"]) == (7, 1)  # the job's own values

    # Run again: both are kept, nothing is rendered.
    import emo_core.render.jobs as jobs
    monkeypatch.setattr(jobs, "render", lambda *a, **k: pytest.fail("a finished job was rendered again"))
    stream = io.StringIO()
    assert render("--jobs", jobs_dir / "jobs.csv", "--out", out, stream=stream) == 0
    assert "2 done (0 rendered now), 0 failed" in stream.getvalue()


def test_a_failing_job_is_recorded_and_the_rest_render(env, tmp_path):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    shutil.copy(shared_file("fixtures", "noface_coffee_512.png"), jobs_dir / "cup.png")
    shutil.copy(portrait(), jobs_dir / "anna.png")
    clip_of("speech_en_16k_mono.wav", 0.25, jobs_dir / "a.wav")
    (jobs_dir / "jobs.csv").write_text("portrait,audio,name\ncup.png,a.wav,cup\nanna.png,a.wav,anna\n")
    out, stream = tmp_path / "renders", io.StringIO()
    assert render("--jobs", jobs_dir / "jobs.csv", "--out", out, stream=stream) == 1
    assert (out / "anna.mp4").is_file() and not list(out.glob("cup.mp4*"))
    assert "failed cup: no face found" in stream.getvalue()


def test_errors_are_the_nodes_sentences_with_their_exit_codes(env, tmp_path):
    audio, _, _ = clip_of("speech_en_16k_mono.wav", 0.25, tmp_path / "a.wav")
    out = tmp_path / "v.mp4"
    stream = io.StringIO()  # no face: the sentence the face locator node gives, exit 1
    assert render(shared_file("fixtures", "noface_coffee_512.png"), audio, "-o", out, stream=stream) == 1
    assert "no face found in the image" in stream.getvalue() and "--face-mask" in stream.getvalue()
    stream = io.StringIO()  # the models folder lacks the network: exit 3, naming the command that fetches it
    assert render(portrait(), audio, "-o", out, "--models", tmp_path / "empty", stream=stream) == 3
    assert f"emo-models fetch --family hallo --dir {tmp_path / 'empty'}" in stream.getvalue()
    out.write_bytes(b"")
    stream = io.StringIO()  # an existing output is kept: exit 2
    assert render(portrait(), audio, "-o", out, stream=stream) == 2 and "--overwrite" in stream.getvalue()
    stream = io.StringIO()
    assert render(tmp_path / "nobody.png", audio, "-o", tmp_path / "w.mp4", stream=stream) == 2
    assert "does not exist" in stream.getvalue()
    assert not list(tmp_path.glob("w.mp4*"))


def test_a_file_damaged_since_it_was_fetched_is_not_used(env, tmp_path):
    """emo-models' record says how large each fetched file is; a truncated one stops the render (exit 3)."""
    from emo_core.model_files.record import Record

    root = tmp_path / "models"
    shutil.copytree(env, root)
    record = Record.load(root)
    vae = "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
    size = (root / vae).stat().st_size
    record.put(vae, size=size, sha256="0" * 64)
    with open(root / vae, "r+b") as f:
        f.truncate(size // 2)
    audio, _, _ = clip_of("speech_en_16k_mono.wav", 0.25, tmp_path / "a.wav")
    stream = io.StringIO()
    assert render(portrait(), audio, "-o", tmp_path / "v.mp4", "--models", root, stream=stream) == 3
    assert "damaged" in stream.getvalue() and vae in stream.getvalue() and "emo-models verify" in stream.getvalue()


def test_progress_line_counts_clips_steps_and_eta():
    assert step_text(2, 5, 3, 4, 7, 20, 14.0) == "clip 2/5 · step 3/4 · 35% · 0:14 elapsed · ETA 0:26"
    assert clock_text(3725) == "1:02:05"
    now = [100.0]
    stream = io.StringIO()
    display = RenderDisplay(stream=stream, tty=False, clock=lambda: now[0])

    class P:  # a sampler Progress
        def __init__(self, step, done):
            self.clip, self.clips, self.step, self.steps, self.done, self.total = 1, 2, step, 2, done, 4

    display.begin_sampling()
    now[0] = 105.0
    display.on_step(P(1, 1))  # mid-clip: nothing written when not on a terminal
    now[0] = 110.0
    display.on_step(P(2, 2))
    assert stream.getvalue() == "clip 1/2 · step 2/2 · 50% · 0:10 elapsed · ETA 0:10\n"
    tty = io.StringIO()
    display = RenderDisplay(stream=tty, tty=True, clock=lambda: now[0])
    display.on_step(P(1, 1))
    display.write_line("a log line")
    assert tty.getvalue().startswith("\rclip 1/2") and "a log line\n" in tty.getvalue()

"""EMO Save Video (Streaming): latents decoded chunk by chunk into an H.264 + AAC MP4 in the output folder,
read back with PyAV; cancel and errors leave no file; only chunk-sized pixel tensors exist."""
from __future__ import annotations

import math

import av
import pytest
import torch

from comfy_fakes import TinyVAE, load_audio
from conftest import load_pack

pack = load_pack()
services = pack.nodes.comfy_services
errors = pack.emo_core.errors
SaveVideo = pack.NODE_CLASS_MAPPINGS["EMO_SaveVideo"]


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path / "output"


class RecordingVAE(TinyVAE):
    """TinyVAE that records how many frames each decode call got."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def decode(self, latent):
        self.batches.append(latent.shape[0])
        return super().decode(latent)


def latents(frames, h=8, w=8, seed=0):
    return {"samples": torch.randn(frames, 4, h, w, generator=torch.Generator().manual_seed(seed))}


def save(vae, lat, **kwargs):
    args = dict(latent=lat, vae=vae, fps=25.0, filename_prefix="EMO/clip", chunk_frames=8, crf=23)
    args.update(kwargs)
    return SaveVideo().save(**args)


def test_video_with_audio_reads_back_with_frame_count_fps_and_audio_length(out_dir):
    frames, fps, chunk = 21, 25.0, 8
    audio = load_audio("speech_en_44k_stereo.wav", 2.0)  # longer than the video: cut to its length
    vae = RecordingVAE()
    ui = save(vae, latents(frames), fps=fps, audio=audio, chunk_frames=chunk, extra_pnginfo={"workflow": {"n": 1}})
    (entry,) = ui["ui"]["images"]
    assert ui["ui"]["animated"] == (True,) and entry["type"] == "output" and entry["subfolder"] == "EMO"
    path = out_dir / entry["subfolder"] / entry["filename"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .partial left behind
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert float(video.average_rate) == fps and (video.width, video.height) == (64, 64)
        assert sound.codec_context.name == "aac" and sound.rate == audio["sample_rate"]
        assert sound.channels == audio["waveform"].shape[1]
        assert abs(float(sound.duration * sound.time_base) - frames / fps) < 1024 / sound.rate
        assert "workflow" in container.metadata
        assert sum(1 for _ in container.decode(video=0)) == frames
    # Memory: the VAE only ever saw chunk-sized batches, every frame once.
    assert max(vae.batches) == chunk and sum(vae.batches) == frames


def test_every_pixel_tensor_is_chunk_sized(out_dir, monkeypatch):
    """What reaches the encoder is one chunk at a time (never the whole video's frames)."""
    writer = pack.emo_core.video_writer.StreamingVideoWriter
    seen, write = [], writer.write
    monkeypatch.setattr(writer, "write", lambda self, images: (seen.append(images.shape[0]), write(self, images)))
    save(TinyVAE(), latents(19), chunk_frames=5)
    assert seen == [5, 5, 5, 4]


def test_without_audio_there_is_no_audio_stream_and_numbers_count_up(out_dir):
    first = save(TinyVAE(), latents(3))["ui"]["images"][0]["filename"]
    second = save(TinyVAE(), latents(3))["ui"]["images"][0]["filename"]
    assert first != second and sorted([first, second]) == [first, second]
    with av.open(str(out_dir / "EMO" / second)) as container:
        assert len(container.streams.audio) == 0 and len(container.streams.video) == 1


def test_cancel_between_chunks_leaves_no_file(out_dir, monkeypatch):
    calls = []

    class Cancelled(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled()

    monkeypatch.setattr(services, "check_interrupt", interrupt)
    with pytest.raises(Cancelled):
        save(TinyVAE(), latents(40), chunk_frames=8, audio=load_audio("speech_en_16k_mono.wav", 2.0))
    assert len(calls) == 3
    assert not any(p.is_file() for p in out_dir.rglob("*"))


def test_a_failing_decode_leaves_no_file(out_dir):
    class Broken(TinyVAE):
        def decode(self, latent):
            if getattr(self, "done", False):
                raise RuntimeError("out of VRAM")
            self.done = True
            return super().decode(latent)

    with pytest.raises(RuntimeError, match="VRAM"):
        save(Broken(), latents(20), chunk_frames=8)
    assert not any(p.is_file() for p in out_dir.rglob("*"))


@pytest.mark.parametrize("prefix", ["../escape", "EMO/../../escape", "/tmp/abs", "C:/video", "", "a/.."])
def test_prefix_must_stay_inside_the_output_folder(out_dir, prefix):
    with pytest.raises(errors.InvalidInputError, match="filename_prefix"):
        save(TinyVAE(), latents(2), filename_prefix=prefix)
    assert not out_dir.exists() or not any(p.is_file() for p in out_dir.rglob("*"))


def test_a_symlink_out_of_the_output_folder_is_refused(out_dir, tmp_path):
    out_dir.mkdir(parents=True)
    (out_dir / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(errors.InvalidInputError, match="outside the output folder"):
        save(TinyVAE(), latents(2), filename_prefix="link/video")


def test_bad_latent_is_one_sentence(out_dir):
    with pytest.raises(errors.InvalidInputError, match="latent must be"):
        save(TinyVAE(), {"samples": torch.zeros(0, 4, 8, 8)})
    assert math.isclose(SaveVideo.INPUT_TYPES()["required"]["fps"][1]["default"], 25.0)

"""Host-memory estimates made before a run, and the one-sentence early failure (with a faked amount of RAM)."""
from __future__ import annotations

import pytest

from emo_core import memory
from emo_core.errors import InsufficientMemoryError
from emo_core.memory import GIB, MemoryEstimate, audio_features_bytes, check_host_memory, sampling_bytes

from conftest import parity_dir


def test_decoding_every_frame_grows_with_length_streaming_does_not():
    short, long = 750, 15000  # 30 s and 10 min at 25 fps
    a, b = (sampling_bytes(n, (64, 64), "vae_decode") for n in (short, long))
    assert b["decoded frames"] == a["decoded frames"] * long // short
    assert a["decoded frames"] == short * 512 * 512 * 3 * 4  # float32 IMAGE at 512x512
    s, t = (sampling_bytes(n, (64, 64), "streaming", chunk_frames=16) for n in (short, long))
    assert s["decoded chunk"] == t["decoded chunk"] == 16 * 512 * 512 * 3 * 4
    assert t["latents"] == long * 4 * 64 * 64 * 4
    with pytest.raises(ValueError):
        sampling_bytes(10, (8, 8), "preview")


def test_too_little_memory_is_one_sentence_with_length_estimate_available_and_remedy(monkeypatch):
    monkeypatch.delenv("EMO_SKIP_MEMORY_CHECK", raising=False)
    est = MemoryEstimate(sampling_bytes(15000, (64, 64), "vae_decode"), "a 600 s video (15000 frames at 512x512)")
    available = 8 * GIB
    with pytest.raises(InsufficientMemoryError) as err:
        check_host_memory(est, "use EMO Save Video (Streaming)", available=available)
    text = str(err.value)
    assert "600 s" in text and f"{est.total / GIB:.1f} GiB" in text and "8.0 GiB" in text
    assert "EMO Save Video (Streaming)" in text and ". " not in text.rstrip(".")
    check_host_memory(est, "-", available=est.total)  # fits exactly: no error
    monkeypatch.setattr(memory, "available_host_bytes", lambda: None)  # unknown: never fails
    check_host_memory(est, "-")
    monkeypatch.setenv("EMO_SKIP_MEMORY_CHECK", "1")
    check_host_memory(est, "-", available=1)


def test_available_memory_is_read_from_the_system():
    value = memory.available_host_bytes()
    assert value is None or value > 0
    try:
        open("/proc/meminfo").close()
    except OSError:
        pytest.skip("no /proc/meminfo on this system")
    assert value is not None


def test_audio_estimate_counts_the_features_the_extractor_really_makes():
    """The features part equals what extract_audio_features stores, for the fixture's wav2vec2 shape."""
    import torch

    from emo_core.audio import AudioSettings, extract_audio_features
    from emo_core.wav2vec import load_wav2vec

    folder = parity_dir() / "wav2vec2"
    if not (folder / "config.json").is_file():
        pytest.skip(f"no wav2vec2 fixture in {folder} (set EMO_PARITY_DIR)")
    model = load_wav2vec(str(folder))
    cfg, rate, fps, clip = model.config, 44100, 25.0, 16
    audio = {"waveform": torch.randn(1, 2, int(rate * 1.3)) * 0.1, "sample_rate": rate}
    feats = extract_audio_features(model, audio, AudioSettings(fps=fps, clip_length=clip))
    parts = audio_features_bytes(audio["waveform"].shape[-1], rate, fps, cfg.num_hidden_layers, cfg.hidden_size,
                                 conv_channels=cfg.conv_dim[-1], clip_length=clip)
    assert parts["audio features"] == feats.hidden.numel() * feats.hidden.element_size()
    assert parts["audio processing"] > 8 * feats.duration * 16000  # at least the float64 normalisation copy


def test_long_audio_features_are_counted_on_disk_not_in_ram():
    """Past one transformer chunk the features go to a temporary file: the RAM estimate stops growing with them,
    and the disk they need is checked up front with one sentence."""
    rate, fps = 44100, 25.0
    short, long = (audio_features_bytes(int(s * rate), rate, fps, 12, 768) for s in (30, 600))
    assert short["audio features"] == 750 * 12 * 768 * 4
    assert "audio features" not in long
    assert memory.features_spill(1501, fps, 60.0) and not memory.features_spill(1500, fps, 60.0)


def test_the_audio_node_refuses_long_audio_when_the_temporary_disk_is_full(monkeypatch):
    import torch
    from transformers import Wav2Vec2Config

    from conftest import load_pack

    pack = load_pack()
    checks = __import__(f"{pack.__name__}.nodes.memory_check", fromlist=["check_audio_features"])
    frame_file = __import__(f"{pack.__name__}.emo_core.frame_file", fromlist=["shutil"])
    errors = __import__(f"{pack.__name__}.emo_core.errors", fromlist=["InsufficientMemoryError"])

    class Usage:
        free = 10 * 2 ** 20

    class Encoder:
        config = Wav2Vec2Config()

    monkeypatch.setattr(frame_file.shutil, "disk_usage", lambda folder: Usage)
    audio = {"waveform": torch.zeros(1, 1, 16000 * 600), "sample_rate": 16000}
    cfg = Encoder.config
    needed = 15008 * cfg.num_hidden_layers * cfg.hidden_size * 4 / 2 ** 30  # padded to whole 16-frame clips
    with pytest.raises(errors.InsufficientMemoryError, match=r"the features of 600 s of audio \(15000 frames at 25 fps\) "
                                                      rf"need {needed:.2f} GiB of temporary disk space"):
        checks.check_audio_features(audio, 25.0, 16, Encoder(), available=64 * GIB)
    checks.check_audio_features(dict(audio, waveform=torch.zeros(1, 1, 16000 * 30)), 25.0, 16, Encoder(),
                                available=64 * GIB)  # short audio stays in RAM: no disk needed

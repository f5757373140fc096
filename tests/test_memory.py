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
    assert parts["audio processing"] > 8 * audio["waveform"].shape[-1]  # at least the float64 mono copy

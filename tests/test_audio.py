"""Audio features: Hallo parity, real media at other rates, frame counts, bad input, long audio, loading."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from emo_core.audio import AudioSettings, extract_audio_features, frame_count, normalise, to_mono_16k
from emo_core.errors import InvalidInputError, MissingWeightsError
from emo_core.frame_file import FrameFile
from emo_core.wav2vec import load_wav2vec

from conftest import parity_dir, shared_file, wav2vec_shape

AUDIO_TOL = dict(atol=5e-4, rtol=1e-4)


def read_wav(path: Path) -> dict:
    """A WAV file as ComfyUI's LoadAudio gives it: {"waveform": [1, C, T] in -1..1, "sample_rate"}."""
    from scipy.io import wavfile
    if not path.is_file():
        pytest.skip(f"audio fixture {path} not found (the ../shared checkout is missing)")
    rate, data = wavfile.read(str(path))
    data = data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32)
    data = data.reshape(data.shape[0], -1).T
    return {"waveform": torch.from_numpy(data.copy())[None], "sample_rate": int(rate)}


@pytest.fixture(scope="module")
def tiny_wav2vec(parity):
    return load_wav2vec(str(parity_dir() / "wav2vec2"))


def test_hallo_audio_parity(parity, tiny_wav2vec):
    _, cases, meta = parity
    settings = AudioSettings(fps=float(meta["fps"]), clip_length=int(meta["clip_length"]))
    waveform = cases["audio.waveform"]
    assert_close(normalise(waveform), cases["audio.input_values"], **AUDIO_TOL)
    feats = extract_audio_features(tiny_wav2vec, waveform, settings)
    assert feats.num_frames == int(cases["audio.audio_length"])
    assert feats.padded_frames == int(cases["audio.seq_len"])
    assert_close(feats.hidden, cases["audio.hidden_states"], **AUDIO_TOL)
    assert_close(feats.windowed(), cases["audio.windowed"], **AUDIO_TOL)
    clip = int(meta["clip_length"])
    assert_close(feats.windowed(clip, 2 * clip), cases["audio.windowed"][clip:2 * clip], **AUDIO_TOL)


def test_frame_count_is_ceil_of_duration_times_fps():
    assert frame_count(16000, 25) == 25
    assert frame_count(16001, 25) == 26
    assert frame_count(1, 25) == 1
    assert frame_count(36800, 25) == 58
    assert frame_count(16000, 30) == 30


def test_padding_to_whole_clips_and_windows_clamp(tiny_wav2vec):
    feats = extract_audio_features(tiny_wav2vec, torch.randn(16000 * 2 + 5), AudioSettings(fps=25, clip_length=12))
    assert feats.num_frames == 51 and feats.padded_frames == 60
    w = feats.windowed(0, 12)
    assert w.shape == (12, 5, *wav2vec_shape())
    assert torch.equal(w[0, 0], feats.hidden[0]) and torch.equal(w[0, 4], feats.hidden[2])
    last = feats.windowed(48, 60)
    assert torch.equal(last[-1, -1], feats.hidden[-1])


def test_stereo_44k_gives_the_same_signal_as_mono_16k():
    mono = to_mono_16k(read_wav(shared_file("fixtures", "speech_en_16k_mono.wav")))
    stereo = to_mono_16k(read_wav(shared_file("fixtures", "speech_en_44k_stereo.wav")))
    assert abs(mono.numel() - stereo.numel()) <= 1
    n = min(mono.numel(), stereo.numel())
    corr = torch.corrcoef(torch.stack([mono[:n], stereo[:n]]))[0, 1]
    assert corr > 0.99


def test_real_speech_features(tiny_wav2vec):
    audio = read_wav(shared_file("fixtures", "speech_en_44k_stereo.wav"))
    feats = extract_audio_features(tiny_wav2vec, audio, AudioSettings(fps=25, clip_length=16))
    duration = audio["waveform"].shape[-1] / audio["sample_rate"]
    assert feats.num_frames == math.ceil(round(duration * 16000) / 16000 * 25)
    assert feats.padded_frames % 16 == 0 and torch.isfinite(feats.hidden).all()


def test_silence_gives_finite_features(tiny_wav2vec):
    feats = extract_audio_features(tiny_wav2vec, read_wav(shared_file("fixtures", "silence_2s_16k.wav")))
    assert feats.num_frames == 50 and torch.isfinite(feats.hidden).all()


@pytest.mark.parametrize("audio, says", [
    ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, "empty"),
    ({"waveform": torch.full((1, 2, 100), float("nan")), "sample_rate": 16000}, "NaN"),
    ({"waveform": torch.zeros(5), "sample_rate": 16000}, r"\[batch, channels, samples\]"),
    ({"samples": torch.zeros(1, 1, 10)}, "ComfyUI AUDIO"),
])
def test_bad_audio_gets_clear_errors(tiny_wav2vec, audio, says):
    with pytest.raises(InvalidInputError, match=says):
        extract_audio_features(tiny_wav2vec, audio)


def test_long_audio_in_chunks_matches_single_pass_in_the_middle(tiny_wav2vec):
    audio = read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))
    seconds = audio["waveform"].shape[-1] / audio["sample_rate"]
    whole = extract_audio_features(tiny_wav2vec, audio, AudioSettings(chunk_seconds=seconds + 60))
    chunk = max(seconds / 3, 0.4)  # at least three chunks, whatever the fixture's length
    chunked = extract_audio_features(tiny_wav2vec, audio, AudioSettings(chunk_seconds=chunk, context_seconds=chunk / 3))
    assert isinstance(whole.hidden, torch.Tensor) and isinstance(chunked.hidden, FrameFile)
    assert chunked.hidden.shape == whole.hidden.shape
    # Only the transformer's attention reach is limited by chunking; with this random tiny model (diffuse
    # attention) that moves the features by ~13 %; a misaligned chunk would move them by ~100 %.
    rel = (chunked.rows() - whole.rows()).norm() / whole.rows().norm()
    assert rel < 0.2, f"chunked features drift {rel:.3f} from the single pass"


def test_spilled_features_give_the_same_windows_as_in_memory(tiny_wav2vec):
    """Features on disk (long audio) cut the same windows, at every clip boundary and both ends."""
    audio = read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))
    seconds = audio["waveform"].shape[-1] / audio["sample_rate"]
    chunk = max(seconds / 3, 0.4)
    spilled = extract_audio_features(tiny_wav2vec, audio, AudioSettings(chunk_seconds=chunk, context_seconds=0.1,
                                                                        clip_length=7))
    assert isinstance(spilled.hidden, FrameFile)
    memory = dataclasses.replace(spilled, hidden=spilled.rows())
    assert torch.equal(memory.hidden, spilled.hidden.read(0, spilled.padded_frames))
    for start in range(0, spilled.padded_frames, 7):
        assert torch.equal(spilled.windowed(start, start + 7), memory.windowed(start, start + 7))
    assert torch.equal(spilled.windowed(), memory.windowed())
    assert spilled.on_host() is spilled


def test_non_finite_spilled_features_are_refused(tiny_wav2vec):
    feats = extract_audio_features(tiny_wav2vec, torch.randn(16000 * 3) * 0.1,
                                   AudioSettings(chunk_seconds=1.0, context_seconds=0.2))
    feats.require_finite("the audio", "recompute it")
    row = feats.hidden.read(feats.padded_frames - 1, feats.padded_frames)
    row[0, -1, -1] = float("nan")
    feats.hidden.write(feats.padded_frames - 1, row)
    with pytest.raises(InvalidInputError, match=r"the audio holds non-finite values \(1 NaN"):
        feats.require_finite("the audio", "recompute it")


@pytest.mark.parametrize("name", ["speech_en_44k_stereo.wav", "speech_en_16k_mono.wav"])
def test_resampling_in_blocks_equals_one_pass(monkeypatch, name):
    """Mix-down and resampling run a block at a time (bounded memory); the result is the one-pass result."""
    from emo_core import audio as audio_mod
    audio = read_wav(shared_file("fixtures", name))
    wave, rate = audio["waveform"][0], audio["sample_rate"]
    whole = audio_mod.resample(audio_mod._mix_down(wave), rate).to(torch.float32)
    for block in (0.013, 0.5, 1000.0):  # many tiny blocks, a few, one
        monkeypatch.setattr(audio_mod, "RESAMPLE_BLOCK_SECONDS", block)
        assert torch.equal(to_mono_16k(audio), whole), block


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
def test_resampling_in_blocks_is_exact_at_other_rates(monkeypatch, rate):
    from emo_core import audio as audio_mod
    monkeypatch.setattr(audio_mod, "RESAMPLE_BLOCK_SECONDS", 0.05)
    wave = torch.randn(2, int(rate * 0.37) + 3, generator=torch.Generator().manual_seed(rate)) * 0.3
    whole = audio_mod.resample(audio_mod._mix_down(wave), rate).to(torch.float32)
    assert torch.equal(to_mono_16k({"waveform": wave[None], "sample_rate": rate}), whole)


def test_cnn_in_chunks_is_exact(tiny_wav2vec):
    from emo_core.wav2vec import cnn_features
    signal = normalise(to_mono_16k(read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))))
    whole = cnn_features(tiny_wav2vec, signal, chunk_samples=10 ** 9)
    reference = tiny_wav2vec.feature_extractor(signal[None]).transpose(1, 2)[0]
    assert_close(whole, reference, atol=1e-5, rtol=1e-5)
    assert_close(cnn_features(tiny_wav2vec, signal, chunk_samples=7000), whole, atol=1e-5, rtol=1e-5)


def test_cnn_rows_on_demand_equal_the_whole_pass(tiny_wav2vec):
    """Long audio asks the CNN for one transformer chunk's rows at a time, with whole-signal statistics."""
    from emo_core.wav2vec import cnn_features, cnn_length, cnn_stats
    signal = normalise(to_mono_16k(read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))))
    whole = cnn_features(tiny_wav2vec, signal, chunk_samples=7000)
    total = cnn_length(tiny_wav2vec, signal.numel())
    assert whole.shape[0] == total
    stats = cnn_stats(tiny_wav2vec, signal, 7000)
    for a, b in ((0, total // 3), (total // 3, total // 3 + 1), (total // 2, total), (5, 5)):
        assert_close(cnn_features(tiny_wav2vec, signal, 7000, rows=(a, b), stats=stats), whole[a:b],
                     atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        cnn_features(tiny_wav2vec, signal, 7000, rows=(0, total + 1), stats=stats)


def test_single_file_safetensors_with_prefix_loads_like_the_folder(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=128, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64,
                            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    ref = Wav2Vec2Model(config).eval()
    folder = tmp_path / "hf"
    ref.save_pretrained(folder)
    file = tmp_path / "wav2vec2_tiny.safetensors"
    save_file({f"wav2vec2.{k}": v.contiguous() for k, v in ref.state_dict().items()}, str(file))
    x = torch.randn(16000, generator=torch.Generator().manual_seed(3))
    from_file = extract_audio_features(load_wav2vec(str(file)), x).hidden
    assert from_file.shape == (25, 2, 128)
    assert_close(from_file, extract_audio_features(load_wav2vec(str(folder)), x).hidden)


def test_missing_model_names_the_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        load_wav2vec(str(tmp_path / "wav2vec2-base-960h.safetensors"))


def test_encoder_layers_are_what_transformers_reports_as_hidden_states(tiny_wav2vec):
    """At the CNN's own frame rate (no interpolation) the stacked layers are `hidden_states[1:]` of the
    whole model, as Hallo stacks them (the stable-layer-norm encoder's last one after its final norm)."""
    from emo_core.wav2vec import cnn_features, encode_frames
    signal = normalise(to_mono_16k(read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))))[:16000]
    cnn = cnn_features(tiny_wav2vec, signal)
    ours = encode_frames(tiny_wav2vec, cnn, cnn.shape[0])
    with torch.no_grad():
        out = tiny_wav2vec(signal[None], output_hidden_states=True)
    expected = list(out.hidden_states[1:])
    if tiny_wav2vec.config.do_stable_layer_norm:
        expected[-1] = out.last_hidden_state
    assert ours.shape == (cnn.shape[0], tiny_wav2vec.config.num_hidden_layers, tiny_wav2vec.config.hidden_size)
    assert_close(ours, torch.stack(expected, dim=2)[0], atol=1e-5, rtol=1e-5)


def test_concurrent_encodes_on_one_model_do_not_mix_layers(tiny_wav2vec):
    """ComfyUI may run two prompts' audio nodes on the same cached encoder at once: every thread gets
    exactly its single-threaded result."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from emo_core.wav2vec import cnn_features, encode_frames
    signal = normalise(to_mono_16k(read_wav(shared_file("fixtures", "speech_en_16k_mono.wav"))))
    cnn = cnn_features(tiny_wav2vec, signal)
    sizes = [cnn.shape[0] // 2 + 7 * k for k in range(8)]  # different lengths: mixed-up layers cannot stack
    alone = [encode_frames(tiny_wav2vec, cnn, n) for n in sizes]
    start = threading.Barrier(len(sizes))

    def encode(n):
        start.wait()
        return [encode_frames(tiny_wav2vec, cnn, n) for _ in range(3)]

    with ThreadPoolExecutor(len(sizes)) as pool:
        results = list(pool.map(encode, sizes))
    for n, single, repeats in zip(sizes, alone, results):
        for got in repeats:
            assert torch.equal(got, single), f"{n} frames: a concurrent encode differs from the single one"


PEAK_SCRIPT = r'''
import resource, sys, torch
from emo_core.audio import normalise, to_mono_16k
wave = torch.rand(1, 2, 16000 * 600) - 0.5  # 10 min of 16 kHz stereo, float32 (77 MB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = normalise(to_mono_16k({"waveform": wave, "sample_rate": 16000}))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / wave.numel() / 4)
'''


def test_mixdown_and_normalise_need_no_float64_copy_of_every_channel():
    """Extra peak memory of mixing 10 min of stereo down and normalising it, in input sizes: the float64
    mono signal (1x the stereo float32 input) and the float32 result; not a float64 stereo copy (2x) plus
    three float64 temporaries."""
    import subprocess
    import sys

    from conftest import ROOT
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.8, f"peak grew by {float(out.stdout):.2f}x the input"


CNN_PEAK_SCRIPT = r'''
import resource, torch
from transformers import Wav2Vec2Config, Wav2Vec2Model
from emo_core.wav2vec import cnn_features
torch.manual_seed(0)
model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                     conv_dim=(128,) * 7, num_conv_pos_embedding_groups=4)).eval()
signal = torch.randn(16000 * 40)
conv = model.feature_extractor.conv_layers[0].conv
first = (signal.numel() // conv.stride[0]) * conv.out_channels * 4  # the first layer's float32 output
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cnn_features(model, signal, chunk_samples=signal.numel())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / first)
'''


def test_cnn_first_layer_group_norm_holds_one_float64_copy():
    """The first layer's exact GroupNorm (float64) is the extraction's largest transient: the conv output, its
    float64 copy normalised in place and the float32 result (4x the output), not three float64 copies (7x)."""
    import subprocess
    import sys

    from conftest import ROOT
    out = subprocess.run([sys.executable, "-c", CNN_PEAK_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 5.5, f"peak grew by {float(out.stdout):.2f}x the first layer's output"

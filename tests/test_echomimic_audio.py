"""EchoMimic v1's audio front end (whisper) against the echomimic-tiny parity cases `audio.*` and `audio_long.*`,
through both the OpenAI .pt file and the Hugging Face folder; the README's pitfalls, and bad input."""
from __future__ import annotations

import json
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import echomimic_file
from emo_core import pickle_safety
from emo_core.errors import EmoError, IncompatibleCheckpointError, InvalidInputError, MissingWeightsError
from emo_core.frame_file import FrameFile
from emo_core.whisper_audio import (LEFT, RIGHT, SEGMENT_FRAMES, _layer_kwargs, encode_segment, extract_whisper_features, log_mel,
                                    token_frame_count, token_frame_index)
from emo_core.whisper_model import is_whisper, load_whisper

MEL_TOL, FEATURE_TOL = 2e-4, 1e-4  # README section 6
SOURCES = ("whisper_tiny.pt", "whisper-hf")


@pytest.fixture(scope="module")
def cases():
    """(audio.* and audio_long.* tensors, metadata) of the fixture's cases.safetensors."""
    from safetensors import safe_open

    with safe_open(str(echomimic_file("cases.safetensors")), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("audio.", "audio_long."))}
        meta = dict(f.metadata())
    return tensors, meta


@pytest.fixture(scope="module", params=SOURCES)
def encoder(request):
    torch.backends.cuda.matmul.allow_tf32 = False
    return load_whisper(str(echomimic_file(request.param)), dtype=torch.float32)


def fps_of(meta) -> float:
    return float(meta["fps"])


def close(actual, expected, tol):
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def far(actual, expected, tol) -> bool:
    """True when `actual` would fail the parity comparison at `tol` (a pitfall is caught)."""
    return not torch.allclose(actual, expected, atol=tol, rtol=tol)


def long_waveform(tensors, meta) -> torch.Tensor:
    """audio_long's clip, rebuilt by the rule in the metadata (the waveform is not stored)."""
    rule = json.loads(meta["audio_long_rule"])
    wave = tensors["audio.waveform"]
    tail = wave[: rule["tail"]] * torch.tensor(rule["gain"], dtype=torch.float32)
    out = torch.cat([wave.repeat(rule["tiles"]), tail])
    assert out.numel() == int(tensors["audio_long.num_samples"])
    return out


def test_encoder_shape_matches_the_fixture_dims(encoder, cases):
    dims = json.loads(cases[1]["whisper_dims"])
    assert len(encoder.layers) + 1 == int(cases[1]["whisper_layers"]) == dims["n_audio_layer"] + 1
    assert encoder.config.d_model == dims["n_audio_state"] and encoder.config.num_mel_bins == dims["n_mels"]


def test_log_mel_matches_whisper(cases):
    tensors, meta = cases
    assert int(meta["sample_rate"]) == 16000
    close(log_mel(tensors["audio.waveform"], tensors["audio.mel"].shape[0]), tensors["audio.mel"], MEL_TOL)
    rule = json.loads(meta["audio_long_rule"])
    mel = log_mel(long_waveform(tensors, meta), tensors["audio.mel"].shape[0])
    close(mel[:, rule["mel_tail_offset"]:], tensors["audio_long.mel_tail"], MEL_TOL)


def test_log_mel_blocks_give_the_one_pass_stft(cases):
    """The blockwise STFT (no padded copy of the track) equals torch.stft(center=True) over the whole clip."""
    wave = cases[0]["audio.waveform"]
    whole = torch.stft(wave, 400, 160, window=torch.hann_window(400), return_complex=True)[:, :-1].abs() ** 2
    from emo_core.whisper_audio import mel_filters
    ref = torch.clamp(mel_filters(80) @ whole, min=1e-10).log10()
    ref = (torch.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
    close(log_mel(wave, 80, block_frames=7), ref, 1e-6)
    close(log_mel(wave, 80, block_frames=7), log_mel(wave, 80), 1e-6)


def test_features_tokens_and_counts_match_echomimic(encoder, cases):
    tensors, meta = cases
    feats = extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta))
    assert feats.feature_rows == int(tensors["audio.num_features"])
    assert feats.token_frames == feats.padded_frames == int(tensors["audio.num_frames"])
    close(feats.rows(), tensors["audio.features"], FEATURE_TOL)
    assert torch.equal(feats.frame_index(), tensors["audio.token_frame_index"])
    close(feats.windowed().flatten(1, 2), tensors["audio.tokens"], FEATURE_TOL)
    duration = tensors["audio.waveform"].numel() / int(meta["sample_rate"])
    assert feats.duration == duration
    assert feats.num_frames == min(math.ceil(duration * fps_of(meta)), int(tensors["audio.num_frames"]))


@pytest.mark.parametrize("spill", [False, True], ids=["in_memory", "spilled"])
def test_long_audio_takes_30s_segments(encoder, cases, spill):
    """> 30 s: two encoder windows; the second's rows depend on its own zero padding, the mel on the global max."""
    tensors, meta = cases
    rule, wave = json.loads(meta["audio_long_rule"]), long_waveform(tensors, meta)
    duration = wave.numel() / int(meta["sample_rate"])
    feats = extract_whisper_features(encoder, wave, fps_of(meta), spill_seconds=duration / 2 if spill else 1e9)
    assert isinstance(feats.hidden, FrameFile) == spill
    assert feats.feature_rows == int(tensors["audio_long.num_features"])
    assert feats.token_frames == int(tensors["audio_long.num_frames"])
    close(feats.rows(rule["features_tail_offset"]), tensors["audio_long.features_tail"], FEATURE_TOL)
    tokens = torch.stack([feats.windowed(int(i), int(i) + 1)[0].flatten(0, 1)
                          for i in tensors["audio_long.token_frame_sel"]])
    close(tokens, tensors["audio_long.tokens_sel"], FEATURE_TOL)
    feats.require_finite("whisper features", "unused")


def test_windows_of_a_range_are_the_rows_of_the_whole(encoder, cases):
    tensors, meta = cases
    feats = extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta))
    whole = feats.windowed()
    n = feats.padded_frames
    for start, stop in [(0, 1), (3, 17), (n - 5, n)]:
        assert torch.equal(feats.windowed(start, stop), whole[start:stop])
    assert whole.shape[1] == LEFT + RIGHT + 1 == feats.window
    for bad in [(0, n + 1), (5, 5), (-1, 3)]:
        with pytest.raises(InvalidInputError, match="outside"):
            feats.windowed(*bad)
    host = feats.on_host()
    assert host.hidden.device.type == "cpu" and host.hidden.dtype == torch.float32
    feats.hidden[3, 1, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="1 NaN"):
        feats.require_finite("the whisper features", "re-run it")


def test_token_frame_count_is_echomimics_loop():
    """N = 1 + min{i : int(i * 50 / fps) > T}, checked against EchoMimic's feature2chunks loop itself."""
    def feature2chunks_count(rows, fps):
        multiplier, i, count = 50. / fps, 0, 0
        while True:
            start = int(i * multiplier)
            count += 1
            i += 1
            if start > rows:
                return count

    for fps in (12, 23.976, 24, 25, 29.97, 30, 60):
        for rows in (1, 2, 49, 50, 125, 1562, 30001):
            assert token_frame_count(rows, fps) == feature2chunks_count(rows, fps), (rows, fps)


def test_token_index_clamps_at_both_ends():
    index = token_frame_index(range(0, 3), 25.0, 7)
    assert index[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert index[2].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6]  # centre int(2 * 50 / 25) = 4


def test_two_threads_on_one_encoder_get_their_own_layers(encoder, cases):
    """No hooks on the shared encoder: concurrent calls (two ComfyUI workers) each get their own features."""
    tensors, meta = cases
    waves = [tensors["audio.waveform"], tensors["audio.waveform"].flip(0)]
    alone = [extract_whisper_features(encoder, w, fps_of(meta)).rows() for w in waves]
    got = [None, None]

    def run(i):
        for _ in range(3):
            got[i] = extract_whisper_features(encoder, waves[i], fps_of(meta)).rows()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, got):
        close(b, a, 1e-6)


# -- the README's pitfalls: each wrong variant fails the comparison the tests above make ----------------------
def test_pitfall_ln_post_as_last_layer_is_caught(encoder, cases):
    tensors, meta = cases
    feats = extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta)).rows()
    wrong = feats.clone()
    with torch.no_grad():
        wrong[:, -1] = encoder.layer_norm(feats[:, -1])  # transformers' hidden_states[-1]
    close(feats, tensors["audio.features"], FEATURE_TOL)
    assert far(wrong, tensors["audio.features"], FEATURE_TOL)


def test_pitfall_waveform_padded_to_30s_is_caught(encoder, cases):
    tensors, meta = cases
    wave = tensors["audio.waveform"]
    rows = int(tensors["audio.num_features"])
    padded = F.pad(wave, (0, SEGMENT_FRAMES * 160 - wave.numel()))
    wrong = encode_segment(encoder, log_mel(padded)[:, :SEGMENT_FRAMES])[:rows]
    assert far(wrong, tensors["audio.features"], FEATURE_TOL)


def test_pitfall_unpadded_mel_window_is_caught(encoder, cases):
    """The encoder run on the real frames only (positional embedding cut) instead of a 3000-frame window."""
    tensors, _ = cases
    mel = tensors["audio.mel"]
    with torch.no_grad():
        x = F.gelu(encoder.conv2(F.gelu(encoder.conv1(mel[None])))).transpose(1, 2)
        x = x + encoder.embed_positions.weight[: x.shape[1]]
        for layer in encoder.layers:
            out = layer(x, None, **_layer_kwargs(layer))
            x = out[0] if isinstance(out, tuple) else out
    rows = int(tensors["audio.num_features"])
    assert far(x[0, :rows], tensors["audio.features"][:, -1], FEATURE_TOL)
    assert not far(encode_segment(encoder, mel)[:rows, -1], tensors["audio.features"][:, -1], FEATURE_TOL)


def test_pitfall_window_off_by_one_is_caught(encoder, cases):
    tensors, meta = cases
    feats = extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta))
    index = (feats.frame_index() - 1).clamp(0, feats.feature_rows - 1)  # [centre-5, centre+5)
    wrong = feats.rows()[index].flatten(1, 2)
    assert not torch.equal(index, tensors["audio.token_frame_index"])
    assert far(wrong, tensors["audio.tokens"], FEATURE_TOL)


# -- bad input and wrong files: one sentence each --------------------------------------------------------------
def one_sentence(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text.count(". ") == 0, text
    return text


@pytest.mark.parametrize("audio, match", [
    (torch.zeros(0), "empty"),
    ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, "empty"),
    (torch.full((16000,), float("nan")), "NaN"),
    (torch.zeros(100), "too short"),
])
def test_bad_audio_is_one_sentence(encoder, audio, match):
    with pytest.raises(InvalidInputError, match=match) as err:
        extract_whisper_features(encoder, audio, 24.0)
    one_sentence(err)


def test_bad_fps_is_one_sentence(encoder, cases):
    with pytest.raises(InvalidInputError, match="fps") as err:
        extract_whisper_features(encoder, cases[0]["audio.waveform"], 0.0)
    one_sentence(err)


def test_comfy_audio_at_another_rate_is_resampled(encoder, cases):
    """ComfyUI AUDIO input goes through audio.to_mono_16k: a stereo copy of the 16 kHz clip gives its features."""
    tensors, meta = cases
    wave = tensors["audio.waveform"]
    stereo = {"waveform": torch.stack([wave, wave])[None], "sample_rate": 16000}
    close(extract_whisper_features(encoder, stereo, fps_of(meta)).rows(), tensors["audio.features"], FEATURE_TOL)


def test_wrong_files_are_one_sentence(tmp_path, cases):
    bad_pickle = tmp_path / "notes.pt"
    bad_pickle.write_text("not a checkpoint")
    flat = tmp_path / "flat.pt"
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, flat)
    wav2vec_dir = tmp_path / "w2v"
    wav2vec_dir.mkdir()
    (wav2vec_dir / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    wrong = {bad_pickle: (IncompatibleCheckpointError, "plain tensors"),
             flat: (IncompatibleCheckpointError, "OpenAI's whisper format"),
             wav2vec_dir: (IncompatibleCheckpointError, "not whisper"),
             tmp_path / "absent.pt": (MissingWeightsError, "not found")}
    for path, (kind, match) in wrong.items():
        with pytest.raises(kind, match=match) as err:
            load_whisper(str(path))
        one_sentence(err)
    assert not is_whisper(str(wav2vec_dir)) and is_whisper(str(echomimic_file("whisper-hf")))
    assert is_whisper(str(echomimic_file("whisper_tiny.pt")))


def test_missing_encoder_key_is_named(tmp_path):
    data = torch.load(echomimic_file("whisper_tiny.pt"), weights_only=True)
    key = next(k for k in data["model_state_dict"] if k.startswith("encoder.blocks.") and k.endswith("mlp_ln.weight"))
    del data["model_state_dict"][key]
    decoder = [k for k in data["model_state_dict"] if k.startswith("decoder.")]
    for k in decoder:  # decoder keys are not needed at all
        del data["model_state_dict"][k]
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(IncompatibleCheckpointError, match="final_layer_norm.weight") as err:
        load_whisper(str(tmp_path / "broken.pt"))
    one_sentence(err)


def test_decoder_keys_are_not_needed(tmp_path, cases):
    data = torch.load(echomimic_file("whisper_tiny.pt"), weights_only=True)
    data["model_state_dict"] = {k: v for k, v in data["model_state_dict"].items() if k.startswith("encoder.")}
    torch.save(data, tmp_path / "encoder_only.pt")
    encoder = load_whisper(str(tmp_path / "encoder_only.pt"))
    tensors, meta = cases
    close(extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta)).rows(),
          tensors["audio.features"], FEATURE_TOL)


def test_old_torch_refuses_the_pickle_with_the_convert_sentence(monkeypatch):
    monkeypatch.setattr(pickle_safety, "torch_version", lambda: (2, 5))
    with pytest.raises(EmoError, match="convert") as err:
        load_whisper(str(echomimic_file("whisper_tiny.pt")))
    assert "CVE-2025-32434" in str(err.value)


def test_folder_of_a_conditional_generation_checkpoint_loads_its_encoder(tmp_path, cases):
    """Hugging Face's openai/whisper-* folders are WhisperForConditionalGeneration: keys under `model.`."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = echomimic_file("whisper-hf")
    folder = tmp_path / "whisper-cg"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    state = {f"model.{k}": v for k, v in load_file(str(source / "model.safetensors")).items()}
    state["proj_out.weight"] = torch.zeros(2, 2)
    save_file(state, str(folder / "model.safetensors"))
    tensors, meta = cases
    feats = extract_whisper_features(load_whisper(str(folder)), tensors["audio.waveform"], fps_of(meta))
    close(feats.rows(), tensors["audio.features"], FEATURE_TOL)


@pytest.mark.parametrize("layout", ["hf", "hf_model", "openai"])
def test_one_safetensors_file_loads_as_whisper(tmp_path, cases, layout):
    """A whisper encoder saved as one .safetensors (transformers' names under encoder. or model.encoder., or
    OpenAI's names) is told from wav2vec2 by its keys and gives the .pt file's features."""
    import json as json_module

    from safetensors.torch import save_file

    data = torch.load(echomimic_file("whisper_tiny.pt"), weights_only=True)
    reference = load_whisper(str(echomimic_file("whisper_tiny.pt")))
    if layout == "openai":
        state = {k: v for k, v in data["model_state_dict"].items() if k.startswith("encoder.")}
    else:
        prefix = "encoder." if layout == "hf" else "model.encoder."
        state = {prefix + k: v for k, v in reference.state_dict().items()}
    path = tmp_path / f"whisper_{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"dims": json_module.dumps(data["dims"])})
    assert is_whisper(str(path))
    encoder = load_whisper(str(path))
    assert encoder.config.encoder_attention_heads == data["dims"]["n_audio_head"]
    tensors, meta = cases
    close(extract_whisper_features(encoder, tensors["audio.waveform"], fps_of(meta)).rows(),
          tensors["audio.features"], FEATURE_TOL)


def test_a_wav2vec2_safetensors_is_not_taken_for_whisper(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w2v.safetensors"
    save_file({"feature_extractor.conv_layers.0.conv.weight": torch.zeros(2, 1, 3)}, str(path))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    assert not is_whisper(str(path)) and not is_whisper(str(tmp_path / "junk.safetensors"))

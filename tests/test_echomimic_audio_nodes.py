"""EMO Audio Encoder Loader and EMO Audio Features with EchoMimic's whisper front end (no ComfyUI): the loader
lists and loads whisper files and folders beside wav2vec2, the features node picks the encoder by the model's
family and refuses a mismatched one in one sentence."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from conftest import echomimic_file, load_pack, parity_dir

pack = load_pack()
N = pack.NODE_CLASS_MAPPINGS
errors = pack.emo_core.errors
FEATURE_TOL = 1e-4  # echomimic-tiny README section 6


@pytest.fixture(scope="module")
def cases():
    from safetensors import safe_open

    with safe_open(str(echomimic_file("cases.safetensors")), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("audio.")}, dict(f.metadata())


@pytest.fixture
def models(tmp_path, monkeypatch):
    """models/audio_encoders with EchoMimic's whisper_tiny.pt, the whisper HF folder and (when the Hallo fixture
    set is there) a wav2vec2 folder."""
    folder = tmp_path / "audio_encoders"
    folder.mkdir()
    shutil.copy(echomimic_file("whisper_tiny.pt"), folder / "whisper_tiny.pt")
    shutil.copytree(echomimic_file("whisper-hf"), folder / "whisper-hf")
    if (parity_dir() / "wav2vec2" / "config.json").is_file():
        shutil.copytree(parity_dir() / "wav2vec2", folder / "wav2vec2-tiny")
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path))
    return folder


def run(node_id, **kwargs):
    node = N[node_id]()
    out = getattr(node, node.FUNCTION)(**kwargs)
    return out if isinstance(out, dict) else {"result": out}


def stand_in(family: str):
    """What EMO Audio Features reads of an EMO_MODEL when it is EchoMimic's: its config's family."""
    return SimpleNamespace(config=SimpleNamespace(family=family))


def audio_of(tensors, meta):
    return {"waveform": tensors["audio.waveform"][None, None], "sample_rate": int(meta["sample_rate"])}


def test_loader_lists_and_loads_whisper_files_and_folders(models):
    names = N["EMO_AudioEncoderLoader"].INPUT_TYPES()["required"]["encoder_name"][0]
    assert {"whisper_tiny.pt", "whisper-hf"} <= set(names)
    for name in ("whisper_tiny.pt", "whisper-hf"):
        (encoder,) = run("EMO_AudioEncoderLoader", encoder_name=name)["result"]
        assert encoder.kind == "whisper" and type(encoder.model).__name__ == "WhisperEncoder"
    if "wav2vec2-tiny" not in names:
        pytest.skip(f"no wav2vec2 fixture in {parity_dir()} to check the other kind (set EMO_PARITY_DIR)")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")["result"]
    assert encoder.kind == "wav2vec2"


@pytest.mark.parametrize("name", ["whisper_tiny.pt", "whisper-hf"])
def test_echomimic_model_gets_echomimic_tokens(models, cases, name):
    tensors, meta = cases
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name=name)["result"]
    fps = float(meta["fps"])
    out = run("EMO_AudioFeatures", emo_model=stand_in("echomimic"), audio_encoder=encoder,
              audio=audio_of(tensors, meta), fps=fps)
    handle, frames, got_fps = out["result"]
    feats = handle.features
    assert got_fps == fps and frames == feats.num_frames <= feats.padded_frames == int(tensors["audio.num_frames"])
    torch.testing.assert_close(feats.windowed().flatten(1, 2), tensors["audio.tokens"], atol=FEATURE_TOL,
                               rtol=FEATURE_TOL)
    info = out["ui"]["emo_audio"][0]
    assert info["frames"] == frames and info["sample_rate"] == int(meta["sample_rate"]) and info["channels"] == 1
    assert info["duration"] == round(tensors["audio.waveform"].numel() / int(meta["sample_rate"]), 3)


def test_mismatched_encoder_says_which_one_the_model_needs(models, cases):
    tensors, meta = cases
    (whisper,) = run("EMO_AudioEncoderLoader", encoder_name="whisper_tiny.pt")["result"]
    with pytest.raises(errors.InvalidInputError, match="needs a wav2vec2 audio encoder but a whisper") as err:
        run("EMO_AudioFeatures", emo_model=stand_in("hallo"), audio_encoder=whisper, audio=audio_of(tensors, meta),
            fps=25.0)
    assert "\n" not in str(err.value)
    wav2vec = SimpleNamespace(kind="wav2vec2", model=None, patcher=None, device=torch.device("cpu"))
    with pytest.raises(errors.InvalidInputError, match="echomimic model needs a whisper audio encoder") as err:
        run("EMO_AudioFeatures", emo_model=stand_in("echomimic"), audio_encoder=wav2vec,
            audio=audio_of(tensors, meta), fps=24.0)
    assert "whisper_tiny.pt" in str(err.value)


def test_bad_audio_through_the_node_is_one_sentence(models, cases):
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="whisper_tiny.pt")["result"]
    empty = {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}
    with pytest.raises(errors.InvalidInputError, match="empty"):
        run("EMO_AudioFeatures", emo_model=stand_in("echomimic"), audio_encoder=encoder, audio=empty, fps=24.0)
    nan = {"waveform": torch.full((1, 2, 44100), float("nan")), "sample_rate": 44100}
    with pytest.raises(errors.InvalidInputError, match="NaN"):
        run("EMO_AudioFeatures", emo_model=stand_in("echomimic"), audio_encoder=encoder, audio=nan, fps=24.0)


def test_a_non_whisper_pt_file_is_one_sentence(models):
    torch.save({"weight": torch.zeros(2)}, models / "other.pt")
    with pytest.raises(errors.IncompatibleCheckpointError, match="OpenAI's whisper format") as err:
        run("EMO_AudioEncoderLoader", encoder_name="other.pt")
    assert "\n" not in str(err.value)


def test_whisper_memory_check_refuses_what_does_not_fit(models):
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="whisper_tiny.pt")["result"]
    check = pack.nodes.memory_check.check_whisper_features
    minute = {"waveform": torch.zeros(1, 1, 16000 * 50), "sample_rate": 16000}
    check(minute, encoder.model, available=2 ** 40)
    with pytest.raises(errors.InsufficientMemoryError, match="whisper features of 50 s"):
        check(minute, encoder.model, available=2 ** 20)

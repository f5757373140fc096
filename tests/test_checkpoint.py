"""Checkpoint reading, writing, family detection and the errors a wrong file gets."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from emo_core.checkpoint import load_network, read_state_dict, save_native
from emo_core.errors import IncompatibleCheckpointError, MissingWeightsError
from emo_core.network import EmoNet

from conftest import tiny_emo_config
from test_emo_network import inputs, predict, randomise_speed_layers


def test_native_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = EmoNet(tiny_emo_config()).eval()
    randomise_speed_layers(net)
    path = tmp_path / "emo_tiny.safetensors"
    save_native(net, str(path))
    assert not (tmp_path / "emo_tiny.safetensors.partial").exists()
    loaded = load_network(str(path))
    assert loaded.config == net.config
    lat, cond = inputs(net)
    _, cond2 = inputs(loaded)
    assert torch.equal(predict(net, lat, cond), predict(loaded, lat, cond2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_loaded_tensor_is_aligned_and_owns_its_storage(tmp_path, dtype):
    """safetensors hands out tensors at arbitrary offsets of one file buffer; loaded parameters must be
    fresh, aligned allocations (MKL takes other paths on unaligned weights: slower, not bitwise equal)."""
    torch.manual_seed(0)
    net = EmoNet(tiny_emo_config()).eval()
    path = tmp_path / "emo_tiny.safetensors"
    save_native(net, str(path))
    loaded = load_network(str(path), dtype=dtype)
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert len(tensors) == len(net.state_dict())
    storages = set()
    for name, t in tensors.items():
        assert t.data_ptr() % 64 == 0, f"{name} is not 64-byte aligned"
        assert t.storage_offset() == 0, f"{name} is a view into a shared buffer"
        assert t.dtype == (dtype if t.is_floating_point() else net.state_dict()[name].dtype)
        storages.add(t.untyped_storage().data_ptr())
    assert len(storages) == len(tensors)


def test_hallo_pth_loads_with_weights_only(tmp_path, parity, parity_net):
    state, _ = read_state_dict(str(parity[0]))
    path = tmp_path / "net.pth"
    torch.save(state, path)
    # No metadata in a .pth: the official full-size configuration is assumed and the tiny file does not fit it.
    with pytest.raises(IncompatibleCheckpointError, match=r"family 'hallo'.*shape mismatches"):
        load_network(str(path), device="meta")
    net = load_network(str(path), config=parity_net.config)
    for (k, a), (_, b) in zip(net.state_dict().items(), parity_net.state_dict().items()):
        assert torch.equal(a, b), k


# Pickles with code, pickle files on old torch and other kinds of files: test_untrusted_checkpoints.py.


def test_missing_file_names_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        load_network(str(tmp_path / "net.pth"))
    assert "net.pth" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("keys, says", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (4, 4)}, "Stable Diffusion checkpoint"),
    ({"encoder.down.0.block.0.conv1.weight": (4, 4)}, "VAE"),
    ({"feature_extractor.conv_layers.0.conv.weight": (4, 4)}, "wav2vec2"),
    ({"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": (4,)}, "AnimateDiff motion module"),
    ({"conv_in.weight": (4, 4), "down_blocks.0.resnets.0.conv1.weight": (4, 4)}, "bare UNet"),
    ({}, "no tensors"),
])
def test_wrong_family_says_what_the_file_looks_like(tmp_path, keys, says):
    path = tmp_path / "model.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(IncompatibleCheckpointError, match=says):
        load_network(str(path))


def test_native_file_without_config_and_garbage_files(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "emo-native"})
    with pytest.raises(IncompatibleCheckpointError, match="emo_config"):
        load_network(str(path))
    junk = tmp_path / "b.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(IncompatibleCheckpointError, match="not a readable safetensors"):
        load_network(str(junk))
    with pytest.raises(IncompatibleCheckpointError, match="unsupported checkpoint extension"):
        other = tmp_path / "c.onnx"
        other.write_bytes(b"x")
        load_network(str(other))


def test_hallo_config_clip_settings_are_honoured(parity):
    """A Hallo variant's file that states its motion-frame count / clip length gets them; a file without
    them keeps Hallo's official 2 motion frames of 16-frame clips (the clip shortened to what the file's
    temporal positions hold)."""
    import json

    from emo_core.checkpoint import detect_family
    from emo_core.config import hallo_preset

    state, metadata = read_state_dict(str(parity[0]))
    hallo = json.loads(metadata["hallo_config"])
    for key in ("n_motion_frames", "n_sample_frames"):
        hallo.pop(key, None)
    plain = detect_family(state, {**metadata, "hallo_config": json.dumps(hallo)}).config
    official = hallo_preset()
    assert plain.motion_frames == official.motion_frames
    assert plain.clip_length == min(official.clip_length, plain.motion.max_len - official.motion_frames)
    n = 1 if plain.motion_frames != 1 else 2
    clip = max(n, plain.clip_length - 1)
    said = {**hallo, "n_motion_frames": n, "data": {"n_sample_frames": clip}}
    config = detect_family(state, {**metadata, "hallo_config": json.dumps(said)}).config
    assert (config.motion_frames, config.clip_length) == (n, clip)
    with pytest.raises(IncompatibleCheckpointError, match="n_motion_frames must be an integer"):
        detect_family(state, {**metadata, "hallo_config": json.dumps({**hallo, "n_motion_frames": "3"})})


def test_fingerprint_follows_the_weights_not_the_file_or_precision(tmp_path):
    """Loads of one file, of a copy and at another precision share a fingerprint; other weights of the
    same architecture, or one changed tensor, do not."""
    import shutil

    torch.manual_seed(0)
    net = EmoNet(tiny_emo_config()).eval()
    save_native(net, str(tmp_path / "a.safetensors"))
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "copy.safetensors")
    first = load_network(str(tmp_path / "a.safetensors")).fingerprint
    assert first and load_network(str(tmp_path / "a.safetensors")).fingerprint == first
    assert load_network(str(tmp_path / "copy.safetensors")).fingerprint == first
    assert load_network(str(tmp_path / "a.safetensors"), dtype=torch.float16).fingerprint == first
    torch.manual_seed(1)
    save_native(EmoNet(tiny_emo_config()).eval(), str(tmp_path / "other.safetensors"))
    assert load_network(str(tmp_path / "other.safetensors")).fingerprint != first
    with torch.no_grad():
        next(net.audioproj.parameters()).add_(1e-3)  # a fine-tune of one small module
    save_native(net, str(tmp_path / "tuned.safetensors"))
    assert load_network(str(tmp_path / "tuned.safetensors")).fingerprint != first

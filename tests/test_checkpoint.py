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

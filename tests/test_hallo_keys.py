"""Every key of Hallo's full net.pth maps to a tensor of the same shape in our full-size model (meta device)."""
from __future__ import annotations

import re

import pytest
import torch

from emo_core.checkpoint import check_keys, detect_family
from emo_core.config import hallo_preset
from emo_core.errors import IncompatibleCheckpointError
from emo_core.network import EmoNet

from conftest import shared_file

KEYS = ("parity", "keys-hallo-full.txt")


def _read_key_list(parts):
    path = shared_file(*parts)
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(x) for x in re.findall(r"\d+", shape)), dtype)
    return out


@pytest.fixture(scope="module")
def full_hallo():
    with torch.device("meta"):
        return EmoNet(hallo_preset())


def test_every_hallo_key_maps_with_the_same_shape(full_hallo):
    listed = _read_key_list(KEYS)
    ours = {k: (tuple(v.shape), str(v.dtype)) for k, v in full_hallo.state_dict().items()}
    assert len(listed) == 2656
    assert sorted(set(listed) - set(ours)) == []
    assert sorted(set(ours) - set(listed)) == []
    mismatched = [k for k in listed if listed[k] != ours[k]]
    assert mismatched == []


def test_metadata_free_hallo_dict_gets_the_official_config_and_passes_key_check(full_hallo):
    listed = _read_key_list(KEYS)
    state = {k: torch.empty(shape, device="meta") for k, (shape, _) in listed.items()}
    info = detect_family(state, {})
    assert info.family == "hallo" and info.config == hallo_preset()
    check_keys(full_hallo, state, info.family)


def test_one_wrong_shape_is_named(full_hallo):
    listed = _read_key_list(KEYS)
    state = {k: torch.empty(shape, device="meta") for k, (shape, _) in listed.items()}
    state["audioproj.proj1.weight"] = torch.empty(512, 1000, device="meta")
    del state["face_locator.conv_out.bias"]
    with pytest.raises(IncompatibleCheckpointError) as err:
        check_keys(full_hallo, state, "hallo")
    text = str(err.value)
    assert "audioproj.proj1.weight" in text and "face_locator.conv_out.bias" in text and "'hallo'" in text

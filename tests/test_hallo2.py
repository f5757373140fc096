"""The Hallo2 family: Hallo's net.pth layout chosen by the user or the file name, and Hallo2's inference rule
(motion-frame pixels dropped outside the face box before they are VAE-encoded)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from emo_core.checkpoint import FAMILY_CHOICES, load_network, read_state_dict, save_native
from emo_core.config import hallo2_preset, hallo_preset
from emo_core.errors import IncompatibleCheckpointError, InvalidConfigError, InvalidInputError
from emo_core.scheduling import build_scheduler


H = W = 8  # latent size: 64 px
BOX = (slice(16, 40), slice(24, 56))  # the face box in pixels (rows, columns)


def face_mask(channels: int = 3, size: tuple[int, int] = (H * 8, W * 8)) -> torch.Tensor:
    mask = torch.zeros(channels, *size)
    mask[:, BOX[0], BOX[1]] = 1
    return mask


def hand_mask(size: tuple[int, int] = (H * 8, W * 8)) -> torch.Tensor:
    """A keep-mask drawn by hand: every third diagonal and the whole last row dropped."""
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    keep = (ys + xs) % 3 != 0
    keep[-1] = False
    return keep


# --- configuration ---------------------------------------------------------------------------------------

def test_hallo2_is_hallo_plus_the_pixel_drop():
    hallo, hallo2 = hallo_preset(), hallo2_preset()
    assert hallo2.family == "hallo2" and hallo2.motion_pixel_drop == 0.25  # Hallo2 long.yaml mask_rate
    assert dataclasses.replace(hallo2, family="hallo", motion_pixel_drop=0.0) == hallo
    assert hallo.is_hallo_layout and hallo2.is_hallo_layout and not hallo2_preset().family == "emo"
    assert hallo2_preset(motion_pixel_drop=0.1).motion_pixel_drop == 0.1
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InvalidConfigError, match="motion_pixel_drop"):
            hallo2_preset(motion_pixel_drop=bad)
    with pytest.raises(InvalidConfigError, match="motion_source"):
        hallo2_preset(motion_source="latents")
    assert build_scheduler("hallo2").config == build_scheduler("hallo").config


# --- choosing the family ---------------------------------------------------------------------------------

def test_the_family_is_chosen_by_the_caller(parity_checkpoint):
    assert load_network(str(parity_checkpoint)).config.family == "hallo"  # auto: Hallo, as before
    net = load_network(str(parity_checkpoint), family="hallo2")
    assert (net.config.family, net.config.motion_pixel_drop) == ("hallo2", 0.25)
    with pytest.raises(IncompatibleCheckpointError, match="cannot load as family 'emo'"):
        load_network(str(parity_checkpoint), family="emo", device="meta")
    with pytest.raises(InvalidInputError, match="unknown model family"):
        load_network(str(parity_checkpoint), family="hallo3", device="meta")
    assert FAMILY_CHOICES[:4] == ("auto", "emo", "hallo", "hallo2")


@pytest.mark.parametrize("rel, family", [("hallo2/net.safetensors", "hallo2"), ("Hallo2_net.safetensors", "hallo2"),
                                         ("hallo/net.safetensors", "hallo"), ("my_hallo_2.safetensors", "hallo")])
def test_the_family_follows_the_file_name(parity_checkpoint, tmp_path, rel, family):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(parity_checkpoint, path)
    assert load_network(str(path)).config.family == family
    assert load_network(str(path), family="hallo").config.family == "hallo"  # the caller wins


def test_metadata_wins_over_the_name(parity_checkpoint, tmp_path):
    """Hallo2's own `use_mask` / `mask_rate` in hallo_config make it Hallo2 with that rate; a native file
    keeps the family its emo_config names, whatever the file is called."""
    state, metadata = read_state_dict(str(parity_checkpoint))
    hallo = json.loads(metadata["hallo_config"])
    save_file(state, str(tmp_path / "plain.safetensors"),
              metadata={**metadata, "hallo_config": json.dumps({**hallo, "use_mask": True, "mask_rate": 0.3})})
    config = load_network(str(tmp_path / "plain.safetensors")).config
    assert (config.family, config.motion_pixel_drop) == ("hallo2", 0.3)
    (tmp_path / "hallo2").mkdir()
    save_native(load_network(str(parity_checkpoint)), str(tmp_path / "hallo2" / "native.safetensors"))
    assert load_network(str(tmp_path / "hallo2" / "native.safetensors")).config.family == "hallo"
    net = load_network(str(tmp_path / "hallo2" / "native.safetensors"), family="hallo2")
    assert net.config.family == "hallo2"

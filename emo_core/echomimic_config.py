"""EchoMimic v1 checkpoints: its configuration (the `echomimic_config` metadata entry, else the released
inference configuration) and its four weight files merged into the one network's key layout.

EchoMimic ships `reference_unet.pth`, `denoising_unet.pth`, `motion_module.pth` and `face_locator.pth` (the
step-distilled "acc" weights swap in `denoising_unet_acc.pth` and `motion_module_acc.pth`). Merged, they are
our EmoNet's state dict under the prefixes `reference_unet.`, `denoising_unet.` and `face_locator.`: the
module paths are the same, so the key map is the prefix alone. EchoMimic loads the motion modules into the
denoising UNet first and `denoising_unet.pth` over them, so where both hold a key the denoising file wins.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from .config import AudioAttentionConfig, EmoNetConfig, FaceLocatorConfig, echomimic_preset
from .errors import IncompatibleCheckpointError, MissingWeightsError
from .hallo_config import _unet, motion_config

log = logging.getLogger(__name__)

# (prefix in the merged state, file names in load order: later files win where keys overlap)
PARTS = (
    ("reference_unet.", ("reference_unet",)),
    ("denoising_unet.", ("motion_module", "denoising_unet")),
    ("face_locator.", ("face_locator",)),
)
ACC_PARTS = {"denoising_unet": "denoising_unet_acc", "motion_module": "motion_module_acc"}
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def looks_like_echomimic(state: dict[str, torch.Tensor]) -> bool:
    """The network prefixes without Hallo's audio modules and projections: EchoMimic's merged layout."""
    prefixes = {k.split(".", 1)[0] + "." for k in state}
    return ({"reference_unet.", "denoising_unet."} <= prefixes and not {"audioproj.", "imageproj."} & prefixes
            and not any(".audio_modules." in k for k in state))


def config_from_echomimic(meta: dict[str, Any] | None) -> EmoNetConfig:
    """EmoNetConfig from the `echomimic_config` metadata (EchoMimic's constructor kwargs); None: the
    released full-size configuration (inference_v2.yaml, FaceLocator(320, 1, (16, 32, 96, 256)))."""
    if meta is None:
        return echomimic_preset()
    try:
        d = meta["denoising_unet"]
        fl, inf = meta["face_locator"], meta.get("inference", {})
        unet = _unet(d)
        return echomimic_preset(
            unet=unet,
            motion=motion_config(d, in_plain_blocks=True),
            audio_attention=AudioAttentionConfig(form="cross_slot", audio_dim=unet.cross_attention_dim,
                                                 scale=float(inf.get("audio_feature_ratio", 3.0))),
            face_locator=FaceLocatorConfig(conditioning_channels=fl.get("conditioning_channels", 1),
                                           block_out_channels=tuple(fl["block_out_channels"])),
            clip_length=int(inf.get("context_frames", 12)), context_overlap=int(inf.get("context_overlap", 3)),
            context_shift=int(inf.get("context_shift_per_step", 2)),
            noise_clamp=inf.get("initial_latent_clamp", 1.5),
            guidance_scale=float(inf.get("guidance_scale", 2.5)),
        )
    except (KeyError, TypeError) as err:
        raise IncompatibleCheckpointError(f"echomimic_config metadata lacks or garbles {err}") from err


def part_files(folder: str, acc: bool = False) -> dict[str, str]:
    """{part name: path} of EchoMimic's weight files in `folder` (the `_acc` denoising/motion files when
    `acc`); MissingWeightsError naming the files that are absent."""
    found, missing = {}, []
    for _, names in PARTS:
        for name in names:
            stem = ACC_PARTS.get(name, name) if acc else name
            path = next((os.path.join(folder, stem + s) for s in SUFFIXES
                         if os.path.isfile(os.path.join(folder, stem + s))), None)
            if path is None:
                missing.append(stem + ".pth")
            else:
                found[name] = path
    if missing:
        raise MissingWeightsError(f"the EchoMimic folder '{os.path.basename(folder)}' lacks {', '.join(missing)}; "
                                  "put all four EchoMimic weight files in it (see README: model files) or "
                                  "download them with `emo-models fetch --family echomimic`")
    return found


def merge_parts(parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """EchoMimic's per-module state dicts -> one state dict with our prefixes, in EchoMimic's load order."""
    merged: dict[str, torch.Tensor] = {}
    for prefix, names in PARTS:
        for name in names:
            for key, tensor in parts[name].items():
                merged[prefix + key] = tensor
    return merged


def is_acc(path: str) -> bool:
    """Whether a file or folder name says it holds EchoMimic's step-distilled ("acc") weights."""
    return "_acc" in os.path.basename(os.path.normpath(path)).lower()

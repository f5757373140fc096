"""Which parameters train in each stage, and where the untrained start comes from (EMO paper 3.3 / 4.1).

Parameter groups (TrainConfig.trainable): `reference` ReferenceNet; `backbone` the denoising UNet's spatial
layers; `face_locator`; `identity` (Hallo's imageproj); `temporal` the AnimateDiff motion modules without their
speed attention; `audio` the audio-attention modules and the audio projection; `speed` the speed attention
inside the motion modules and the speed projection.

Initialisation key maps:
- SD 1.5 (stage 1): diffusers UNet2DConditionModel keys go to `reference_unet.<key>` and `denoising_unet.<key>`
  where a tensor of that name and shape exists. The EMO preset's attn2 takes reference tokens (width = the
  block's) instead of text (768), so its key/value projections keep their random start; the report says so.
- AnimateDiff mm_sd_v15(-v2) (stage 2): `down_blocks.N.motion_modules.M.temporal_transformer...` go to
  `denoising_unet.<key>` (our motion modules are named as AnimateDiff's).
- Hallo (shortcut): Hallo's net.pth into a network of Hallo's config plus EMO speed layers; only speed keys
  may be missing, and they keep their start (the speed attention's output projection starts at zero, so the
  loaded network first behaves exactly as Hallo).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import torch

from ..checkpoint import NATIVE_FORMAT, read_state_dict
from ..config import EmoNetConfig, SpeedConfig
from ..errors import IncompatibleCheckpointError, MissingWeightsError
from ..network import EmoNet

log = logging.getLogger(__name__)

_SHOW = 6


def parameter_group(name: str) -> str:
    """The TrainConfig group of an EmoNet parameter name."""
    top = name.split(".", 1)[0]
    if top in ("reference_unet", "face_locator"):
        return "reference" if top == "reference_unet" else "face_locator"
    if top in ("imageproj", "audioproj", "speedproj"):
        return {"imageproj": "identity", "audioproj": "audio", "speedproj": "speed"}[top]
    if ".motion_modules." in name:
        return "speed" if ".speed." in name else "temporal"
    return "audio" if ".audio_modules." in name else "backbone"


def select_trainable(net: EmoNet, groups: tuple[str, ...]) -> list[str]:
    """Freeze every parameter outside `groups`; returns the names that train (sorted as in the model)."""
    names = []
    for name, p in net.named_parameters():
        p.requires_grad_(parameter_group(name) in groups)
        if p.requires_grad:
            names.append(name)
    if not names:
        raise IncompatibleCheckpointError(f"the network has no parameters in the groups {list(groups)} "
                                          f"(family {net.config.family}, speed layers: {net.config.speed is not None})")
    return names


def count_parameters(net: torch.nn.Module) -> dict[str, int]:
    """Parameter count per group (works on the meta device)."""
    out: dict[str, int] = {}
    for name, p in net.named_parameters():
        out[parameter_group(name)] = out.get(parameter_group(name), 0) + p.numel()
    return out


@dataclass
class InitReport:
    """What an initialisation filled: `loaded` network keys, `skipped` source keys with no place or another
    shape ("key: why"), `left` network keys of the initialised part that kept their random start."""
    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def log(self) -> InitReport:
        log.info("initialised %d tensors from %s; %d source tensors skipped (e.g. %s); %d left at their random "
                 "start (e.g. %s)", len(self.loaded), self.source, len(self.skipped), self.skipped[:_SHOW],
                 len(self.left), self.left[:_SHOW])
        return self


def copy_matching(net: EmoNet, targets: dict[str, torch.Tensor], source: str, part: tuple[str, ...]) -> InitReport:
    """Copy `targets` (network key -> tensor) where the name and shape match; `part`: key prefixes/groups whose
    keys count as "left random" when not filled."""
    state = net.state_dict()
    report = InitReport(source)
    with torch.no_grad():
        for key, value in targets.items():
            if key not in state:
                report.skipped.append(f"{key}: no such tensor")
            elif tuple(state[key].shape) != tuple(value.shape):
                report.skipped.append(f"{key}: file {tuple(value.shape)} vs network {tuple(state[key].shape)}")
            else:
                state[key].copy_(value.to(state[key].dtype))
                report.loaded.append(key)
    filled = set(report.loaded)
    report.left = [k for k in state if k not in filled and any(k.startswith(p) for p in part)]
    return report.log()


def read_sd_unet(path: str) -> dict[str, torch.Tensor]:
    """SD 1.5 UNet tensors in diffusers' layout from a diffusers folder (the model folder or its unet/) or a
    single diffusers-layout .safetensors / .bin file."""
    if os.path.isdir(path):
        for folder in (path, os.path.join(path, "unet")):
            for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
                if os.path.isfile(os.path.join(folder, name)):
                    return read_state_dict(os.path.join(folder, name))[0]
        raise MissingWeightsError(f"no diffusion_pytorch_model.safetensors in '{path}' or its unet/ folder; give "
                                  "the SD 1.5 diffusers folder (runwayml/stable-diffusion-v1-5)")
    state = read_state_dict(path)[0]
    if any(k.startswith("model.diffusion_model.") for k in state):
        raise IncompatibleCheckpointError(f"'{path}' is an original (ldm-layout) SD checkpoint; give the diffusers "
                                          "UNet folder instead (diffusers' convert_original_stable_diffusion script)")
    return state


def init_from_sd(net: EmoNet, path: str) -> InitReport:
    """Stage 1: ReferenceNet and the backbone's spatial layers from an SD 1.5 UNet (name + shape)."""
    sd = read_sd_unet(path)
    targets = {}
    for key, value in sd.items():
        targets[f"reference_unet.{key}"] = value
        targets[f"denoising_unet.{key}"] = value
    state = net.state_dict()
    targets = {k: v for k, v in targets.items() if k in state or k.startswith("reference_unet.")}
    spatial = [k for k in state if parameter_group(k) in ("reference", "backbone")]
    report = copy_matching(net, targets, os.path.basename(path), tuple(spatial))
    report.left = [k for k in report.left if k in spatial]
    return report


def read_animatediff(path: str) -> dict[str, torch.Tensor]:
    """mm_sd_v15(-v2) tensors (`down_blocks.N.motion_modules.M...`), an optional `module.`/`state_dict` wrapper off."""
    state = read_state_dict(path)[0]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(".motion_modules." in k for k in state):
        raise IncompatibleCheckpointError(f"'{path}' holds no AnimateDiff motion modules (no '.motion_modules.' "
                                          "keys); give mm_sd_v15.ckpt or mm_sd_v15_v2.ckpt")
    return state


def init_from_animatediff(net: EmoNet, path: str) -> InitReport:
    """Stage 2: the temporal modules from AnimateDiff. The sinusoidal `pos_encoder.pe` tables of another length
    (mm_sd_v15: 24 positions) are skipped: ours are computed by the same formula."""
    targets = {f"denoising_unet.{k}": v for k, v in read_animatediff(path).items()}
    temporal = tuple(k for k in net.state_dict() if ".motion_modules." in k and ".speed." not in k)
    report = copy_matching(net, targets, os.path.basename(path), temporal)
    report.left = [k for k in report.left if k in temporal]
    return report


def hallo_speed_network(path: str, speed: SpeedConfig | None = None, family: str = "auto") -> EmoNet:
    """The Hallo shortcut's start: a Hallo checkpoint in a network of its own config plus EMO speed layers.

    Hallo's speed-free weights load strictly; the only keys the file may lack are the speed layers', which
    keep their start (zero output projection: the network first behaves exactly as the Hallo checkpoint)."""
    from ..checkpoint import _fresh_tensors, check_keys, detect_family

    state, metadata = read_state_dict(path)
    info = detect_family(state, metadata, family, path)
    if not info.config.is_hallo_layout:
        raise IncompatibleCheckpointError(f"'{path}' is a {info.config.family} checkpoint; the speed shortcut "
                                          "starts from Hallo's or Hallo2's net.pth")
    config = dataclasses.replace(info.config, speed=info.config.speed or speed or SpeedConfig()).validate()
    net = EmoNet(config)
    without_speed = EmoNet(dataclasses.replace(config, speed=None))
    check_keys(without_speed, {k: v for k, v in state.items() if parameter_group(k) != "speed"}, config.family)
    del without_speed
    missing, unexpected = net.load_state_dict(_fresh_tensors(state, torch.float32, "cpu"), strict=False)
    if unexpected or any(parameter_group(k) != "speed" for k in missing):
        raise IncompatibleCheckpointError(f"'{path}' does not fit Hallo's network with speed layers: missing "
                                          f"{missing[:_SHOW]}, unexpected {unexpected[:_SHOW]}")
    log.info("Hallo checkpoint %s (%s) + %d new speed tensors", os.path.basename(path), info.reason, len(missing))
    return net


def is_native(path: str) -> bool:
    return read_state_dict(path)[1].get("format") == NATIVE_FORMAT if path.endswith(".safetensors") else False


def zero_new_outputs(net: EmoNet) -> None:
    """Zero the output projection of every motion module (AnimateDiff's zero_initialize) and audio module of a
    fresh network: both are residual, so untrained they are the identity and stage 1 trains the spatial layers as
    if they were not there (the paper's stage 1 has no temporal or audio layers)."""
    from ..models.attention import AudioModule
    from ..models.motion import TemporalTransformer
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (TemporalTransformer, AudioModule)):
                torch.nn.init.zeros_(module.proj_out.weight)
                torch.nn.init.zeros_(module.proj_out.bias)


def enable_gradient_checkpointing(net: EmoNet) -> None:
    """Recompute activations in the backward pass: the backbone per block (DenoisingUNet.gradient_checkpointing)
    and diffusers' own checkpointing in ReferenceNet."""
    net.denoising_unet.gradient_checkpointing = True
    net.reference_unet.enable_gradient_checkpointing()


def network_config(spec: str) -> EmoNetConfig:
    """TrainConfig.network: "emo", "hallo" (with speed layers) or a path to an EmoNetConfig .json file."""
    from ..config import emo_preset, hallo_preset
    if spec == "emo":
        return emo_preset()
    if spec == "hallo":
        return hallo_preset(speed=SpeedConfig())
    try:
        with open(spec, encoding="utf-8") as f:
            return EmoNetConfig.from_json(f.read())
    except OSError as err:
        raise MissingWeightsError(f"network config '{spec}' is neither 'emo', 'hallo' nor a readable .json "
                                  f"file: {err}") from err

"""Reading and writing EMO network checkpoints.

Families:
- `hallo`: Hallo's `net.pth` (or the same dict as .safetensors); prefixes reference_unet., denoising_unet.,
  face_locator., imageproj., audioproj. Configuration from a `hallo_config` metadata entry, else the
  official Hallo inference configuration. Key map: identity (our module paths are Hallo's).
- `hallo2`: Hallo2's `net.pth`, the same layout; the keys cannot tell it from Hallo, so it is chosen by the
  caller (`family`), Hallo2's `use_mask` in `hallo_config`, or the file name (file or folder name holding
  "hallo2", as in Hallo2's `pretrained_models/hallo2/net.pth`).
- `emo`: native single .safetensors written by :func:`save_native`, configuration in metadata `emo_config`.

Never unpickles code: .pth/.pt/.ckpt/.bin load with `torch.load(weights_only=True)`, and only on torch >= 2.6
(`pickle_safety`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import torch

from .config import FAMILIES, EmoNetConfig, echomimic_acc, hallo_preset
from .echomimic_config import PARTS, config_from_echomimic, is_acc, looks_like_echomimic, merge_parts, part_files
from .errors import IncompatibleCheckpointError, InvalidInputError, MissingWeightsError
from .hallo_config import as_family, config_from_hallo
from .pickle_safety import PICKLE_SUFFIXES, load_pickle_tensors

log = logging.getLogger(__name__)

HALLO_PREFIXES = ("reference_unet.", "denoising_unet.", "face_locator.", "imageproj.", "audioproj.")
NATIVE_FORMAT = "emo-native"
_SHOW = 8
_FINGERPRINT_SAMPLES = 16
FAMILY_CHOICES = ("auto", *FAMILIES)


@dataclass
class CheckpointInfo:
    family: str
    config: EmoNetConfig
    reason: str


def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a checkpoint file (metadata is empty for pickle-format files), or of
    EchoMimic's four weight files: a folder holding them, or one of them named (its folder is read)."""
    if os.path.isdir(path) or _echomimic_part(path):
        return read_echomimic(path), {}
    return _read_file(path)


def _read_file(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not os.path.isfile(path):
        folder = os.path.dirname(os.path.abspath(path))
        raise MissingWeightsError(f"checkpoint file '{os.path.basename(path)}' not found in '{folder}'; "
                                  "put the model file there (see README: model files) or download it with "
                                  "`emo-models fetch --family FAMILY` (hallo, hallo2 or echomimic)")
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError) as err:
            raise IncompatibleCheckpointError(f"'{path}' is not a readable safetensors file: {err}") from err
    if path.lower().endswith(PICKLE_SUFFIXES):
        return load_pickle_tensors(path), {}
    raise IncompatibleCheckpointError(f"'{path}': unsupported checkpoint extension; use .safetensors or .pth")


def _echomimic_part(path: str) -> bool:
    stem = os.path.splitext(os.path.basename(path))[0].lower().removesuffix("_acc")
    return os.path.isfile(path) and any(stem in names for _, names in PARTS)


def read_echomimic(path: str) -> dict[str, torch.Tensor]:
    """EchoMimic's reference_unet / denoising_unet (+ motion_module) / face_locator files, merged in
    EchoMimic's order. `path`: their folder (the "_acc" files when its name says acc) or one of the files
    (the acc files when that file is an "_acc" one)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    files = part_files(folder, acc=is_acc(path))
    parts = {name: _read_file(file)[0] for name, file in files.items()}
    log.info("EchoMimic weights from %s", ", ".join(os.path.basename(f) for f in files.values()))
    return merge_parts(parts)


def detect_family(state: dict[str, torch.Tensor], metadata: dict[str, str], family: str = "auto",
                  path: str = "") -> CheckpointInfo:
    """Decide which family a state dict belongs to, or say what it looks like instead.

    `family`: "auto" (the file's metadata, else its name `path`, else Hallo for Hallo-layout keys) or a
    name in FAMILIES that the file must be able to load as (Hallo and Hallo2 load as each other).
    """
    if family not in FAMILY_CHOICES:
        raise InvalidInputError(f"unknown model family '{family}'; choose one of {list(FAMILY_CHOICES)}")
    info = _detect(state, metadata)
    if family != "auto":
        if family != info.config.family:
            info = CheckpointInfo(info.family, as_family(info.config, family), f"family '{family}' chosen")
    elif info.family == info.config.family == "hallo" and name_family(path) == "hallo2":
        # a native file's emo_config names its family; Hallo's keys and hallo_config cannot
        info = CheckpointInfo(info.family, as_family(info.config, "hallo2"), f"{info.reason}, Hallo2 by file name")
    return info


def name_family(path: str) -> str | None:
    """"hallo2" when the file or its folder is named for Hallo2 (Hugging Face: hallo2/net.pth), else None."""
    parts = os.path.normpath(path).replace("\\", "/").split("/")[-2:] if path else []
    return "hallo2" if any("hallo2" in part.lower() for part in parts) else None


def _detect(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> CheckpointInfo:
    if metadata.get("format") == NATIVE_FORMAT or "emo_config" in metadata:
        if "emo_config" not in metadata:
            raise IncompatibleCheckpointError("native EMO file without its 'emo_config' metadata entry")
        return CheckpointInfo("emo", EmoNetConfig.from_json(metadata["emo_config"]), "emo_config metadata")
    prefixes = {k.split(".", 1)[0] + "." for k in state}
    if "echomimic_config" in metadata:
        return CheckpointInfo("echomimic", config_from_echomimic(json.loads(metadata["echomimic_config"])),
                              "EchoMimic key layout + echomimic_config metadata")
    if looks_like_echomimic(state):
        return CheckpointInfo("echomimic", config_from_echomimic(None),
                              "EchoMimic key layout, released EchoMimic v1 configuration")
    if {"reference_unet.", "denoising_unet."} <= prefixes:
        if "hallo_config" in metadata:
            config = config_from_hallo(json.loads(metadata["hallo_config"]))
            return CheckpointInfo(config.family, config, "Hallo key prefixes + hallo_config metadata")
        return CheckpointInfo("hallo", hallo_preset(), "Hallo key prefixes, official Hallo configuration")
    raise IncompatibleCheckpointError(f"not an EMO or Hallo network checkpoint: {_describe(state)}; "
                                      "load Hallo's net.pth or a native EMO .safetensors")


# What other model files look like, by their key names (first match wins; order matters where layouts
# overlap: an SD checkpoint holds a VAE, a motion module sits under down_blocks.). One wrapper prefix of
# `_WRAPPERS` is ignored, as single-file exports and training scripts add one.
_WRAPPERS = ("vae.", "model.", "module.", "unet.", "wav2vec2.")
_VAE_PARTS = ("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.", "encoder.mid.attn_1.",
              "decoder.mid_block.attentions.", "post_quant_conv.")
_KINDS = (
    ("a Stable Diffusion checkpoint (ldm layout); its VAE goes in models/vae, not models/emo",
     lambda ks: _any(ks, ("model.diffusion_model.", "first_stage_model.", "cond_stage_model."), start=True)),
    ("a VAE; put it in models/vae and load it with Load VAE",
     lambda ks: _any(ks, _VAE_PARTS, start=True, strip=True)),
    ("a wav2vec2 audio encoder; put it in models/audio_encoders",
     lambda ks: _any(ks, ("feature_extractor.conv_layers.", "feature_projection.", "encoder.layers.0.attention."),
                     strip=True)),
    ("an AnimateDiff motion module (only part of a network)",
     lambda ks: _any(ks, (".motion_modules.",)) and not _any(ks, ("conv_in.weight",), strip=True, start=True)),
    ("a bare UNet without the reference_unet./denoising_unet. prefixes (SD 1.5 or an EchoMimic part?)",
     lambda ks: _any(ks, ("conv_in.weight",), start=True, strip=True)
     and _any(ks, ("down_blocks.", "input_blocks."), start=True, strip=True)),
)


def _any(keys, parts, start: bool = False, strip: bool = False) -> bool:
    """Whether some key holds (or, with `start`, begins with) one of `parts`; with `strip` a key is also
    looked at without a wrapper prefix ("vae.encoder..." -> "encoder...")."""
    for key in keys:
        forms = (key, *(key[len(w):] for w in _WRAPPERS if key.startswith(w))) if strip else (key,)
        for form in forms:
            if any(form.startswith(p) if start else p in form for p in parts):
                return True
    return False


def _describe(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if not keys:
        return "the file holds no tensors"
    for kind, matches in _KINDS:
        if matches(keys):
            return f"it looks like {kind}"
    return f"unrecognised keys such as {keys[:3]}"


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], family: str) -> None:
    """Every checkpoint key must map to a model tensor of the same shape, and vice versa."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:_SHOW]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:_SHOW]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:_SHOW]})")
        raise IncompatibleCheckpointError(f"checkpoint detected as family '{family}' does not fit that network: "
                                          + "; ".join(parts))


def load_network(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 config: EmoNetConfig | None = None, family: str = "auto"):
    """Load an EMO or Hallo checkpoint into an :class:`EmoNet` (built on the meta device, then filled).

    `config` replaces the detected configuration (e.g. a Hallo variant trained with other sizes whose
    .pth carries no metadata); the family is still detected from the keys. `family`: see detect_family.
    """
    from .network import EmoNet

    state, metadata = read_state_dict(path)
    info = detect_family(state, metadata, family, path)
    if config is not None:
        info = CheckpointInfo(info.family, config.validate(), "configuration given by the caller")
    if info.family == "echomimic" and is_acc(path):  # same network; step-distilled: 6 steps, no CFG
        info = CheckpointInfo(info.family, echomimic_acc(info.config), info.reason + ", acc weights by name")
    with torch.device("meta"):
        net = EmoNet(info.config)
    check_keys(net, state, info.family)
    net.fingerprint = weights_fingerprint(state, info.config)
    net.load_state_dict(_fresh_tensors(state, dtype, device), strict=True, assign=True)
    net.to(device=device, dtype=dtype).eval()
    log.info("loaded %s (%s family: %s) as %s on %s", os.path.basename(path), info.config.family, info.reason, dtype,
             device)
    return net


def _fresh_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype,
                   device: str | torch.device) -> dict[str, torch.Tensor]:
    """Each tensor copied into storage of its own from torch's allocator, in `dtype` when floating.

    Tensors from safetensors point into one file buffer at arbitrary byte offsets; parameters assigned
    from them stay unaligned, and CPU kernels (MKL) then take other code paths: slower, and not bitwise
    equal to a model built in memory. torch's allocator aligns every allocation (64 bytes on CPU).
    The source dict is emptied as it goes, so at most one extra tensor is alive at a time.
    """
    out = {}
    for key in list(state):
        src = state.pop(key)
        target = dtype if src.is_floating_point() else src.dtype
        out[key] = torch.empty(src.shape, dtype=target, device=device).copy_(src)
    return out


def weights_fingerprint(state: dict[str, torch.Tensor], config: EmoNetConfig) -> str:
    """An identity of a network's weights, whatever file, copy or precision they were loaded from: sha256
    over the configuration, every key, dtype and shape, and a few values spread over each tensor (cheap:
    no full pass over gigabytes). Another training or fine-tune changes the values of the tensors it trained."""
    digest = hashlib.sha256(config.to_json().encode())
    for key in sorted(state):
        tensor = state[key].detach()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.reshape(-1)
        if flat.numel():
            at = torch.linspace(0, flat.numel() - 1, min(_FINGERPRINT_SAMPLES, flat.numel())).long()
            digest.update(flat[at].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_native(net, path: str) -> None:
    """Write the native EMO format: one .safetensors with the configuration in its metadata."""
    from safetensors.torch import save_file

    if not path.endswith(".safetensors"):
        raise IncompatibleCheckpointError(f"native EMO files are .safetensors, got '{path}'")
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    from . import __version__
    metadata = {"format": NATIVE_FORMAT, "emo_config": net.config.to_json(), "emo_core_version": __version__}
    tmp = f"{path}.partial"
    save_file(state, tmp, metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written model file under the real name

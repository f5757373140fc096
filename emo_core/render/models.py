"""The models one render needs, found where `emo-models fetch` places them (catalog.Family) and loaded once.

Before anything loads, the family's files are checked cheaply (present; size as recorded or pinned): a missing
or damaged file is one sentence naming the `emo-models` command that fixes it. MediaPipe's models are also
found through $EMO_MEDIAPIPE_MODELS, as for the nodes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, MissingWeightsError
from ..model_files import catalog
from ..model_files.layout import file_path
from ..model_files.status import require_files
from .settings import RenderSettings, torch_device, torch_dtype

log = logging.getLogger(__name__)

# EMO's own weights were never published: a native file (--model) takes Hallo's encoder, VAE and MediaPipe files.
OTHER_FILES_OF = {"emo": "hallo"}


@dataclass
class RenderModels:
    """Everything loaded for rendering: the EmoNet, the audio encoder ("wav2vec2" or "whisper"), the diffusers
    AutoencoderKL (fp32), the MediaPipe search folders and the face-identity model (or None)."""
    family: str
    net: Any
    encoder: Any
    encoder_kind: str
    vae: Any
    device: torch.device
    dtype: torch.dtype
    mediapipe_dirs: list[Path] = field(default_factory=list)
    embedder: Any = None
    network_path: str = ""


def network_path(fam: catalog.Family, root: Path, acc: bool = False) -> Path:
    """The family's network file under `root` (EchoMimic: denoising_unet*, which names its folder)."""
    rel = fam.network.replace("denoising_unet.", "denoising_unet_acc.") if acc else fam.network
    return file_path(root, rel)


def _network_files(fam: catalog.Family, acc: bool) -> list[str]:
    """The network's files under the root: one, or EchoMimic's four (acc: the step-distilled two of them)."""
    if fam.name != "echomimic":
        return [fam.network]
    folder = fam.network.rsplit("/", 1)[0]
    moving = ("denoising_unet_acc", "motion_module_acc") if acc else ("denoising_unet", "motion_module")
    return [f"{folder}/{part}.safetensors" for part in ("reference_unet", "face_locator", *moving)]


def load_models(root: Path, family_name: str, settings: RenderSettings, *, model: str | None = None,
                acc: bool = False, identity: str = "auto") -> RenderModels:
    """Check and load the family's files under `root`. model: a network file instead of the family's.
    acc: EchoMimic's 6-step weights. identity: "auto" (the family's face-identity model when present and
    onnxruntime is installed), "off", or the path of an ArcFace .onnx."""
    if family_name == "emo" and model is None:
        raise InvalidInputError(f"{catalog.NO_WEIGHTS['emo']}; or pass a native EMO .safetensors with --model")
    fam = catalog.family(OTHER_FILES_OF.get(family_name, family_name))
    if acc and family_name != "echomimic":
        raise InvalidInputError("--acc selects EchoMimic's 6-step weights; use it with --family echomimic")
    needed = [fam.audio_encoder, fam.vae, *([] if model is not None else _network_files(fam, acc))]
    if not os.environ.get("EMO_MEDIAPIPE_MODELS"):
        needed.append(fam.mediapipe)
    require_files(fam, root, needed)
    device = torch_device(settings.device)
    dtype = torch_dtype(settings.dtype, device)
    net_path = Path(model) if model is not None else network_path(fam, root, acc)
    net = _load_net(net_path, family_name, device, dtype)
    encoder, kind = _load_encoder(file_path(root, fam.audio_encoder), family_name, device)
    vae = load_vae(file_path(root, fam.vae), device)
    from ..face_models import model_search_dirs

    dirs = model_search_dirs(None, [file_path(root, fam.mediapipe)])
    embedder = _load_embedder(fam, root, identity, dirs) if net.imageproj is not None else None
    return RenderModels(family_name, net, encoder, kind, vae, device, dtype, dirs, embedder, str(net_path))


def _load_net(path: Path, family_name: str, device: torch.device, dtype: torch.dtype):
    from ..checkpoint import load_network

    if not path.exists():
        raise MissingWeightsError(f"the network file {path} does not exist; check --model")
    net = load_network(str(path), dtype=dtype, device=device, family=family_name)
    if net.config.family != family_name and {net.config.family, family_name} != {"hallo", "hallo2"}:
        raise InvalidInputError(f"{path.name} holds a {net.config.family} network, not {family_name}; pass "
                                f"--family {net.config.family}")
    return net


def _load_encoder(path: Path, family_name: str, device: torch.device):
    """(encoder, kind): whisper for EchoMimic, wav2vec2 for the rest, fp32 as on the nodes."""
    if family_name == "echomimic":
        from ..whisper_model import load_whisper
        return load_whisper(str(path), device=device), "whisper"
    from ..wav2vec import load_wav2vec
    return load_wav2vec(str(path), device=device), "wav2vec2"


def load_vae(folder: Path, device: torch.device):
    """The SD 1.5 VAE as a diffusers AutoencoderKL from a local folder (config.json + weights), fp32 (its
    decoder overflows fp16 on some frames; it runs once per frame, not per step)."""
    from diffusers import AutoencoderKL

    if not (folder / "config.json").is_file():
        raise MissingWeightsError(f"no config.json in the VAE folder {folder}; {catalog.fetch_hint()}")
    safetensors = any(p.suffix == ".safetensors" for p in folder.iterdir())
    if not safetensors:
        from ..pickle_safety import check_pickle_allowed
        check_pickle_allowed(folder / "diffusion_pytorch_model.bin")
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=safetensors)
    log.info("VAE from %s on %s", folder, device)
    return vae.to(device=device, dtype=torch.float32).eval()


def _load_embedder(fam: catalog.Family, root: Path, identity: str, dirs: list[Path]):
    """The face-identity model, or None (then the network falls back to its unconditional identity tokens and
    warns, as the nodes do without EMO Face Embedder Loader)."""
    if identity == "off":
        return None
    from ..errors import MissingDependencyError
    from ..identity import FaceEmbedder, find_face_embedder

    if identity != "auto":
        return FaceEmbedder(identity)
    fetched = file_path(root, fam.identity) if fam.identity else None
    try:
        path = fetched if fetched is not None and fetched.is_file() else find_face_embedder(models_root=root)
        return FaceEmbedder(path)
    except MissingWeightsError:
        log.warning("no face-identity model in %s (`%s --with identity` fetches it): identity fidelity drops",
                    root / "insightface", catalog.FETCH_COMMAND.format(family=fam.name))
    except MissingDependencyError as err:
        log.warning("%s: identity fidelity drops", err)
    return None

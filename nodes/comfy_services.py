"""The only module that touches ComfyUI services: model folders, devices and dtypes, model management,
progress, interruption, temp and output files. Every service has a plain fallback so the node classes run
(and are tested) without ComfyUI.

Fallbacks: models live under $EMO_MODELS_DIR (default ./models); the device is CUDA when available,
else CPU; progress and interruption are no-ops; temp files go to the system temp folder; outputs go to
$EMO_OUTPUT_DIR (default ./output).
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..emo_core.errors import InvalidInputError, MissingWeightsError

log = logging.getLogger(__name__)

EMO_FOLDER = "emo"
AUDIO_FOLDER = "audio_encoders"
MODEL_EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}
ONNX_EXTENSIONS = {".onnx"}
# Our own folders, registered with ComfyUI's folder_paths the first time a node lists them:
# name -> (extensions, default subfolders of the models folder).
OWN_FOLDERS = {
    EMO_FOLDER: (MODEL_EXTENSIONS, ("emo",)),
    "mediapipe": ({".tflite", ".task"}, ("mediapipe",)),
    # insightface's usual home (shared with IP-Adapter FaceID / InstantID packs), then ours.
    "insightface": (ONNX_EXTENSIONS, ("insightface", "emo/insightface")),
}


def _comfy(name: str):
    """A ComfyUI module, or None outside ComfyUI (the pack then uses its fallbacks)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def models_root() -> Path:
    fp = _comfy("folder_paths")
    if fp is not None:
        return Path(fp.models_dir)
    return Path(os.environ.get("EMO_MODELS_DIR", "models")).resolve()


def _ensure_folders(fp) -> None:
    for name, (exts, subdirs) in OWN_FOLDERS.items():
        defaults = [os.path.join(fp.models_dir, d) for d in subdirs]
        if name not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[name] = (defaults, set(exts))
            continue
        paths, known = fp.folder_names_and_paths[name]
        missing = [d for d in defaults if d not in paths]
        # extra_model_paths.yaml or another pack may create the folder first, possibly with no extensions
        # (= every file): keep their paths, add ours, and list only model files.
        if missing or not known:
            fp.folder_names_and_paths[name] = (list(paths) + missing, set(known) or set(exts))


def folder_paths_for(folder: str) -> list[Path]:
    """Folders searched for `folder` (ComfyUI's registered ones, including extra_model_paths.yaml)."""
    fp = _comfy("folder_paths")
    if fp is None:
        return [models_root() / d for d in OWN_FOLDERS.get(folder, (None, (folder,)))[1]]
    _ensure_folders(fp)
    if folder not in fp.folder_names_and_paths:
        return [Path(fp.models_dir) / folder]
    return [Path(p) for p in fp.get_folder_paths(folder)]


def list_models(folder: str, extensions: set[str] = MODEL_EXTENSIONS, with_dirs: bool = False) -> list[str]:
    """Model files (and, with `with_dirs`, Hugging Face model folders) under a model folder, sorted.

    Outside ComfyUI, entries that resolve outside their folder (links) are left out: `model_path` refuses them.
    """
    names: set[str] = set()
    strict = _comfy("folder_paths") is None
    for root in folder_paths_for(folder):
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if strict and not _inside(path, root):
                continue
            if path.is_file() and path.suffix.lower() in extensions:
                names.add(rel)
            elif with_dirs and path.is_dir() and (path / "config.json").is_file():
                names.add(rel)
    return sorted(names)


def check_model_name(folder: str, name: str) -> None:
    """Refuse a name that could leave the model folder: absolute (any OS), with '..', empty or with NUL.

    Decided on the name alone, before any file is looked at, so the answer tells nothing about which
    files exist elsewhere.
    """
    text = name if isinstance(name, str) else ""
    parts = text.replace("\\", "/").split("/")
    if (not text.strip() or "\0" in text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive
            or PureWindowsPath(text).root or ".." in parts):
        raise InvalidInputError(f"model name {name!r} is not a path inside the '{folder}' model folder (absolute "
                                "paths and '..' are refused); choose one of the listed files")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, lies in `root` (links resolved too)."""
    return path.resolve().is_relative_to(root.resolve())


def model_path(folder: str, name: str, extensions: set[str] | None = None, allow_dir: bool = False) -> str:
    """Full path of `name` in a model folder, or MissingWeightsError naming every folder searched.

    The name must stay inside the folder (`check_model_name`) and, when `extensions` is given, end in one of
    them (or, with `allow_dir`, name a folder holding config.json). In ComfyUI files are resolved by
    folder_paths.get_full_path (its policy: links placed in a model folder are followed, like every core
    loader); outside ComfyUI the path with links resolved must lie inside a registered folder.
    """
    check_model_name(folder, name)
    fp = _comfy("folder_paths")
    searched = folder_paths_for(folder)
    rel = PurePosixPath(name.replace("\\", "/"))
    for root in searched:
        candidate = root / rel
        if allow_dir and candidate.is_dir() and (candidate / "config.json").is_file():
            if fp is None and not _inside(candidate, root):
                raise _outside(folder, name)
            return str(candidate)
    found = _find_file(fp, folder, rel, searched)
    if found is None:
        raise MissingWeightsError(f"model '{name}' not found in the '{folder}' model folder; searched "
                                  f"{', '.join(str(p) for p in searched)}; put the file there (see the README) or "
                                  f"download it with {_fetch_hint(fp)}")
    if extensions is not None and rel.suffix.lower() not in extensions:
        raise InvalidInputError(f"model name {name!r} in the '{folder}' model folder must end in "
                                f"{', '.join(sorted(extensions))}; choose one of the listed files")
    return found


def _fetch_hint(fp) -> str:
    """The emo-models command for this install: ComfyUI's folder, or the fallback models root."""
    from ..emo_core.model_files.catalog import fetch_hint

    return fetch_hint(where=" --comfyui <your ComfyUI folder>" if fp is not None else f" --dir {models_root()}")


def _find_file(fp, folder: str, rel: PurePosixPath, searched: list[Path]) -> str | None:
    if fp is not None:
        return fp.get_full_path(folder, rel.as_posix())
    for root in searched:
        candidate = root / rel
        if candidate.is_file() or candidate.is_symlink():
            if not _inside(candidate, root):
                raise _outside(folder, rel.as_posix())
            return str(candidate)
    return None


def _outside(folder: str, name: str) -> InvalidInputError:
    return InvalidInputError(f"model '{name}' in the '{folder}' model folder is a link that leads outside the "
                             "registered model folders, which is refused outside ComfyUI; copy or move the "
                             "file itself into the folder")


def search_dirs(*folders: str) -> list[Path]:
    """Every folder registered for the given names, for emo_core's own model lookups."""
    return [p for f in folders for p in folder_paths_for(f)]


def mediapipe_dirs() -> list[Path]:
    """MediaPipe face models: $EMO_MEDIAPIPE_MODELS first, then models/mediapipe (see the README)."""
    from ..emo_core.face_models import model_search_dirs

    return model_search_dirs(None, folder_paths_for("mediapipe"))


# -- devices, dtypes, model management ------------------------------------------------------------
def torch_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    mm = _comfy("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def choose_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' = what ComfyUI recommends for a UNet on `device` (fallback: fp16 on CUDA, else fp32)."""
    fixed = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision in fixed:
        return fixed[precision]
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    return torch.float16 if device.type == "cuda" else torch.float32


class _Holder(torch.nn.Module):
    """What ModelPatcher manages: it sets attributes such as `device` on its model, which transformers'
    models expose as read-only properties, so our modules sit one level down."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def wrap_model(module: torch.nn.Module, device: torch.device):
    """A ComfyUI ModelPatcher around the module so model management can offload it, or None."""
    patcher = _comfy("comfy.model_patcher")
    if patcher is None:
        return None
    return patcher.ModelPatcher(_Holder(module), load_device=device, offload_device=offload_device())


def load_on_device(module: torch.nn.Module, patcher, device: torch.device) -> torch.nn.Module:
    """Make room and move the module to its device right before use (ComfyUI may offload it later)."""
    mm = _comfy("comfy.model_management")
    if mm is not None and patcher is not None:
        # Full load: ComfyUI's partial (lowvram) loading only streams comfy.ops layers; our plain torch
        # layers left on the offload device would meet activations on the GPU.
        try:
            mm.load_models_gpu([patcher], force_full_load=True)
        except TypeError:  # ComfyUI before force_full_load existed
            mm.load_models_gpu([patcher])
        return module
    return module.to(device)


# -- progress, interruption, temp files -----------------------------------------------------------
def check_interrupt() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class ProgressReporter:
    """Moves ComfyUI's progress bar (a cancel point too) and sends `emo.progress` with the clip and step."""

    def __init__(self, total: int):
        utils = _comfy("comfy.utils")
        self.bar = utils.ProgressBar(total) if utils is not None else None
        server = _comfy("server")
        self.server = getattr(getattr(server, "PromptServer", None), "instance", None)
        context = _comfy("comfy_execution.utils")
        self.context = context.get_executing_context() if context is not None else None
        self.previewer = self._previewer()

    @staticmethod
    def _previewer():
        """ComfyUI's latent previewer for SD 1.5 latents (per the user's preview setting), or None."""
        preview, formats, mm = _comfy("latent_preview"), _comfy("comfy.latent_formats"), _comfy("comfy.model_management")
        if preview is None or formats is None or mm is None:
            return None
        return preview.get_previewer(mm.get_torch_device(), formats.SD15())

    def __call__(self, p) -> None:
        if self.bar is not None:
            image = None
            if self.previewer is not None and p.preview is not None:
                image = self.previewer.decode_latent_to_preview_image("JPEG", p.preview.float())
            self.bar.update_absolute(p.done, p.total, image)
        if self.server is not None:
            data = {"clip": p.clip, "clips": p.clips, "step": p.step, "steps": p.steps}
            if self.context is not None:
                data.update(prompt_id=self.context.prompt_id, node=self.context.node_id)
            self.server.send_sync("emo.progress", data, getattr(self.server, "client_id", None))


def temp_directory() -> Path:
    fp = _comfy("folder_paths")
    path = Path(fp.get_temp_directory()) if fp is not None else Path(tempfile.gettempdir()) / "comfyui-emo"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- output files -----------------------------------------------------------------------------------
def output_directory() -> Path:
    """ComfyUI's output folder (fallback: $EMO_OUTPUT_DIR, default ./output)."""
    fp = _comfy("folder_paths")
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("EMO_OUTPUT_DIR", "output")).resolve()


def output_file(filename_prefix: str, extension: str) -> tuple[Path, str, str]:
    """A new file `<prefix>_00001_.<ext>` (the next free number, as ComfyUI's savers count) inside the output
    folder -> (path, subfolder, filename). A prefix that leaves the folder is refused."""
    root = output_directory().resolve()
    text = filename_prefix.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or text.startswith("/") or ":" in parts[0]:
        raise InvalidInputError(f"filename_prefix '{filename_prefix}' must be a relative name inside the output "
                                f"folder (e.g. 'EMO/video'), without '..' or a drive")
    folder = root.joinpath(*parts[:-1]).resolve()
    if folder != root and root not in folder.parents:  # a symlink inside the output folder pointing out
        raise InvalidInputError(f"filename_prefix '{filename_prefix}' resolves outside the output folder {root}")
    folder.mkdir(parents=True, exist_ok=True)
    taken = re.compile(re.escape(parts[-1]) + r"_(\d+)_\.")
    numbers = [int(m.group(1)) for f in os.listdir(folder) if (m := taken.match(f))]
    filename = f"{parts[-1]}_{max(numbers, default=0) + 1:05d}_.{extension}"
    return folder / filename, "/".join(parts[:-1]), filename


def video_metadata(prompt, extra_pnginfo) -> dict | None:
    """The workflow to embed in a saved file, as ComfyUI's savers do (None with --disable-metadata)."""
    cli = _comfy("comfy.cli_args")
    if cli is not None and getattr(cli.args, "disable_metadata", False):
        return None
    metadata = dict(extra_pnginfo or {})
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata or None


def progress_bar(total: int):
    """A callable(done, total) moving ComfyUI's progress bar (also a cancel point), or a no-op."""
    utils = _comfy("comfy.utils")
    if utils is None:
        return lambda done, total: None
    bar = utils.ProgressBar(total)
    return lambda done, total: bar.update_absolute(done, total)

"""Pickle-based checkpoints (.pth, .pt, .ckpt, .bin) are read only where torch can refuse code in them.

`torch.load(weights_only=True)` is the guard, but before torch 2.6 it could be bypassed and run code from
a crafted file (CVE-2025-32434, fixed in torch 2.6.0). On older torch such files are refused with a
sentence that says how to convert them to .safetensors (`python -m emo_core.convert`).
"""
from __future__ import annotations

import logging
import os
import re
import zipfile

import torch

from .errors import IncompatibleCheckpointError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFE_PICKLE_TORCH = (2, 6)  # first torch whose weights_only=True holds against CVE-2025-32434
CONVERT_HINT = ("convert it to .safetensors once where torch >= 2.6 is installed (in the ComfyUI-EMO folder: "
                "python -m emo_core.convert FILE) and load the .safetensors, or upgrade torch to 2.6 or newer")


def torch_version() -> tuple[int, int]:
    """(major, minor) of the running torch, read from torch.__version__ (e.g. '2.5.1+cu121')."""
    found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def check_pickle_allowed(path: str | os.PathLike) -> None:
    """Raise IncompatibleCheckpointError for a pickle-based file when torch is older than 2.6."""
    version = torch_version()
    if version < SAFE_PICKLE_TORCH:
        raise IncompatibleCheckpointError(
            f"'{os.path.basename(path)}' is a pickle-based checkpoint, which torch {torch.__version__} cannot "
            f"load safely (CVE-2025-32434, fixed in torch 2.6): {CONVERT_HINT}")


def load_pickle_tensors(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A flat dict of tensors from a .pth/.pt/.ckpt/.bin file, never running code from it.

    A file whose top level is {"state_dict": {...}} (Lightning) gives that inner dict. `mmap`: tensors backed by
    the file instead of RAM (zip-format files, torch.save's default since 1.6; see load_pickle).
    """
    name = os.path.basename(path)
    data = load_pickle(path, mmap=mmap)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise IncompatibleCheckpointError(f"'{name}' does not hold a flat dict of tensors")
    return data


def load_pickle(path: str | os.PathLike, mmap: bool = False):
    """What a .pth/.pt file holds (tensors, numbers, strings, dicts and lists of them), never running code from
    it; e.g. OpenAI's whisper checkpoints are {"dims": {...}, "model_state_dict": {...}}. `mmap` maps a zip-format
    file's tensors instead of reading them into RAM (ignored for the legacy format, which torch cannot map)."""
    check_pickle_allowed(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...: all mean "not plain tensors"
        # torch's own text advises weights_only=False, i.e. running the file's code: never show that.
        log.debug("torch.load(weights_only=True) refused %s: %s", path, err)
        raise IncompatibleCheckpointError(
            f"'{os.path.basename(path)}' holds more than plain tensors (pickled code or objects, or a damaged file) "
            "and was not loaded; use a .safetensors file or a checkpoint from a source you trust") from None

"""Where model files go: a models root laid out like ComfyUI's `models/` folder (`<root>/<folder>/<path>`).

`--comfyui PATH` means `PATH/models`; `--dir PATH` (or `--models PATH` for emo-render) is a self-contained
root; by default the root is `$EMO_MODELS_DIR`, else `./models`, as for the nodes without ComfyUI.
ComfyUI's `extra_model_paths.yaml` is not read: point `--dir` at such a folder instead.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import InvalidInputError

ENV_VAR = "EMO_MODELS_DIR"


def default_root() -> Path:
    return Path(os.environ.get(ENV_VAR, "models")).expanduser().resolve()


def comfyui_models(comfyui: str | os.PathLike) -> Path:
    """The models folder of a ComfyUI install, or InvalidInputError when PATH is not one."""
    base = Path(comfyui).expanduser().resolve()
    if not (base / "main.py").is_file() and not (base / "models").is_dir():
        raise InvalidInputError(f"'{base}' does not look like a ComfyUI folder (no main.py, no models/); pass the "
                                "folder that holds ComfyUI's main.py, or use --dir for a folder of its own")
    return base / "models"


def models_root(comfyui: str | os.PathLike | None = None, directory: str | os.PathLike | None = None) -> Path:
    if comfyui is not None and directory is not None:
        raise InvalidInputError("give either --comfyui or --dir, not both")
    if comfyui is not None:
        return comfyui_models(comfyui)
    return Path(directory).expanduser().resolve() if directory is not None else default_root()


def file_path(root: Path, relpath: str) -> Path:
    """`root/relpath`; the relative path must stay inside the root (no absolute parts, no '..')."""
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InvalidInputError(f"model path {relpath!r} must be relative to the models root, without '..'")
    return Path(root).joinpath(*rel.parts)

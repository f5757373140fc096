"""Print one line with the versions CI runs on, and fail if torch is not the pinned CPU build."""
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "scipy", "mediapipe", "pillow",
            "einops", "av", "onnxruntime", "websockets", "pytest")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


if not _version("torch").startswith("2.13.0"):
    sys.exit(f"CI needs torch 2.13.0 (CPU), found {_version('torch')}")
print("CI versions: python " + platform.python_version() + ", "
      + ", ".join(f"{name} {_version(name)}" for name in PACKAGES))

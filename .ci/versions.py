"""Print one line with the versions this environment runs (CI calls it after installing)."""
import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "scipy", "mediapipe", "pillow",
            "einops", "av", "onnxruntime", "websockets", "pytest")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


print("CI versions: python " + platform.python_version() + ", "
      + ", ".join(f"{name} {_version(name)}" for name in PACKAGES))

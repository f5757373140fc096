"""emo_core: the EMO / Hallo portrait-animation network in plain PyTorch.

Importing this package is cheap and has no side effects; it never imports ComfyUI.
"""
from .errors import (EmoError, IncompatibleCheckpointError, InvalidConfigError, InvalidInputError,
                     MissingDependencyError, MissingWeightsError)

__version__ = "0.1.0"

__all__ = [
    "EmoError", "IncompatibleCheckpointError", "InvalidConfigError", "InvalidInputError",
    "MissingDependencyError", "MissingWeightsError", "__version__",
]

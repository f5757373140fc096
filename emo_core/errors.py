"""Typed errors of emo_core. Every message says what was wrong, the value seen and what to do."""


class EmoError(Exception):
    """Base class of every error emo_core raises on purpose."""


class InvalidInputError(EmoError, ValueError):
    """An input value (tensor shape, number, option) is outside what the model accepts."""


class InvalidConfigError(EmoError, ValueError):
    """A configuration field has a value the network cannot be built with."""


class MissingWeightsError(EmoError, FileNotFoundError):
    """A model file is not where it was looked for."""


class IncompatibleCheckpointError(EmoError):
    """A checkpoint does not belong to the family or shape it was loaded as."""


class MissingDependencyError(EmoError, ImportError):
    """An optional Python package is not installed."""


class InsufficientMemoryError(EmoError, MemoryError):
    """A run would need more host memory than the machine has available (estimated before it starts)."""


class CorruptFileError(EmoError):
    """A model file's size or SHA-256 differs from what its source or the fetch record says (truncated or
    tampered); it is not used."""


class DownloadError(EmoError, OSError):
    """A model file could not be downloaded (network, hub or package index)."""

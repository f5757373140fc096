"""Per-frame rows kept on disk, read back a range at a time, so features of long audio cost no RAM.

The features of a 10-minute song are 600 MB at wav2vec2-base's shapes (36 KiB per frame); the sampler needs
about 20 frames of them per clip. Rows go to an anonymous temporary file as they are produced and come back
with plain file reads (not mmap: mapped pages would count in the process's resident memory as they are
touched, and a long run touches all of them). The file has no name on POSIX and is removed when the handle
closes, so nothing is left behind after a crash. Its folder is Python's temporary directory (TMPDIR).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import threading

import torch

from .errors import InsufficientMemoryError
from .finite import require_finite

READ_BLOCK_BYTES = 8 * 2 ** 20  # whole-file passes (finiteness checks) read this much at a time: RAM per pass


class FrameFile:
    """A (frames, *row_shape) tensor stored in a temporary file. Write rows in any order, read ranges back."""

    def __init__(self, frames: int, row_shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        self.shape = torch.Size((frames, *row_shape))
        self.dtype = dtype
        self._row_bytes = math.prod(row_shape) * torch.empty((), dtype=dtype).element_size()
        require_disk_space(frames * self._row_bytes, "the audio features")
        self._file = tempfile.TemporaryFile(prefix="emo-features-")
        self._file.truncate(frames * self._row_bytes)
        self._lock = threading.Lock()  # seek + read/write pairs must not interleave across threads

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store `rows` (n, *row_shape) as rows start..start+n (converted to this file's dtype, on the CPU)."""
        if tuple(rows.shape[1:]) != tuple(self.shape[1:]) or not 0 <= start <= start + rows.shape[0] <= len(self):
            raise ValueError(f"rows {tuple(rows.shape)} at {start} do not fit a file of {tuple(self.shape)}")
        data = rows.detach().to("cpu", self.dtype).contiguous()
        with self._lock:
            self._file.seek(start * self._row_bytes)
            self._file.write(_bytes_of(data))

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop as a new tensor."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"rows [{start}, {stop}) outside a file of {len(self)} rows")
        out = torch.empty(stop - start, *self.shape[1:], dtype=self.dtype)
        with self._lock:
            self._file.seek(start * self._row_bytes)
            got = self._file.readinto(_bytes_of(out))
        if got != out.numel() * out.element_size():
            raise OSError(f"the features file ended early ({got} bytes read); was the temporary folder cleaned?")
        return out

    def blocks(self):
        """(start, rows) for the whole file, READ_BLOCK_BYTES at a time."""
        step = max(1, READ_BLOCK_BYTES // max(1, self._row_bytes))
        for start in range(0, len(self), step):
            yield start, self.read(start, min(len(self), start + step))

    def close(self) -> None:
        self._file.close()

    def __del__(self):
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


def _bytes_of(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor (any dtype: bfloat16 has no numpy type, uint8 does)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def require_disk_space(needed: int, what: str, folder: str | None = None) -> None:
    """InsufficientMemoryError (one sentence) when the temporary folder cannot hold `needed` bytes."""
    folder = folder or tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InsufficientMemoryError(
            f"{what} need {needed / 2 ** 30:.2f} GiB of temporary disk space in {folder} but only "
            f"{free / 2 ** 30:.2f} GiB is free; free some space or point TMPDIR at a larger disk")


class StoredRows:
    """For feature dataclasses whose `hidden` is a tensor or a FrameFile (audio.AudioFeatures,
    whisper_audio.WhisperFeatures): reading rows, moving to the host, the finiteness check."""
    hidden: torch.Tensor | FrameFile

    def _stored(self, start: int, stop: int) -> torch.Tensor:
        if isinstance(self.hidden, FrameFile):
            return self.hidden.read(start, stop)
        return self.hidden[start:stop]

    def on_host(self):
        """These features as float32 on the CPU (a spilled file already is)."""
        if isinstance(self.hidden, FrameFile):
            return self
        return dataclasses.replace(self, hidden=self.hidden.float().cpu())

    def require_finite(self, what: str, fix: str) -> None:
        """InvalidInputError naming `what` when a stored value is NaN or infinite (a file is read in blocks)."""
        if not isinstance(self.hidden, FrameFile):
            require_finite(self.hidden, what, fix)
            return
        for _, block in self.hidden.blocks():
            require_finite(block, what, fix)

"""Input files as the nodes get them: a portrait as ComfyUI IMAGE, a drawn face mask as MASK, audio as AUDIO.

The portrait is cropped to its centred square (portrait models are trained on square crops) and resized;
the audio keeps its file's rate and channels, as Load Audio does (PyAV decodes any format FFmpeg reads).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)


def _square(image, size: int, what: str):
    """A PIL image cropped to its centred square and resized to size x size."""
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    if (width, height) != (side, side):
        log.info("%s is %dx%d: using its centred %dx%d square", what, width, height, side, side)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == size else image.resize((size, size), Image.LANCZOS)


def _open_image(path: Path, what: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise InvalidInputError(f"the {what} {path} does not exist")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InvalidInputError(f"the {what} {path.name} is not an image PIL can read ({err}); use PNG or JPEG") from err


def read_portrait(path: str | Path, size: int) -> torch.Tensor:
    """-> IMAGE (1, size, size, 3) float32 in 0..1."""
    image = _square(_open_image(Path(path), "portrait").convert("RGB"), size, "the portrait")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def read_face_mask(path: str | Path, size: int) -> torch.Tensor:
    """A drawn face mask (white = face), cropped and resized like the portrait -> MASK (1, size, size) 0..1."""
    image = _square(_open_image(Path(path), "face mask").convert("L"), size, "the face mask")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def read_audio(path: str | Path) -> dict:
    """-> AUDIO {"waveform": (1, channels, samples) float32 in -1..1, "sample_rate": int}, decoded with PyAV."""
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("reading audio needs PyAV: pip install av") from err
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"the audio file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InvalidInputError(f"{path.name} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
            blocks = [f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)]
            blocks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.error.FFmpegError as err:
        raise InvalidInputError(f"the audio file {path.name} cannot be decoded ({err}); use WAV, FLAC or MP3") from err
    if not blocks or sum(b.shape[-1] for b in blocks) == 0:
        raise InvalidInputError(f"the audio file {path.name} holds no samples; use a file with sound in it")
    wave = torch.from_numpy(np.concatenate(blocks, axis=-1).astype(np.float32, copy=False))
    log.info("audio %s: %.2f s, %d Hz, %d channel(s)", path.name, wave.shape[-1] / rate, rate, wave.shape[0])
    return {"waveform": wave[None].contiguous(), "sample_rate": int(rate)}

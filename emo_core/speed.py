"""EMO speed conditioning (arXiv 2402.17485, section 3.3 "Speed Layers").

Head speed ``w`` is the rotation speed of the head in **rad/s** (the geodesic angle turned per second,
whatever the axis). Each frame's speed becomes a soft one-hot over ``d`` buckets with centre ``c_d`` and
radius ``r_d`` (``SpeedConfig.centres`` / ``SpeedConfig.radii``, rad/s)::

    s_d = tanh((w - c_d) / r_d * 3)        # -1 below the bucket, 0 at its centre, +1 above

The per-frame vectors are windowed like audio (``2m+1`` frames, clamped at the clip ends) and go to
``EmoNet.speed_tokens``. Where the speeds come from:

- :func:`constant_speed` — one target speed for every frame (the paper's inference setting);
- :func:`keyframe_speed` / :func:`parse_keyframes` — a per-frame schedule from ``(frame, speed)`` keyframes;
- :func:`speed_from_rotations` / :func:`speed_from_landmarks` (in :mod:`.speed_pose`) — measured from a
  driving video's head poses or 3D face landmarks.

Speed tensors are ``(frames,)`` float64 rad/s; features are float32 (the network casts to its dtype).
"""
from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping, Sequence

import torch

from .config import SpeedConfig
from .errors import InvalidInputError
from .speed_pose import (MEDIAPIPE_RIGID_LANDMARKS, _check_fps, head_rotations_from_landmarks,
                         normalized_landmarks_to_pixels, rotation_angles, rotations_from_transforms, smooth_series,
                         speed_from_landmarks, speed_from_rotations)
from .windows import window_frames

log = logging.getLogger(__name__)

INTERPOLATIONS = ("linear", "step")
PAST_END = ("error", "cut")

__all__ = [
    "INTERPOLATIONS", "MEDIAPIPE_RIGID_LANDMARKS", "constant_speed", "deg_per_frame_to_rad_per_s",
    "head_rotations_from_landmarks", "keyframe_speed", "normalized_landmarks_to_pixels", "parse_keyframes",
    "rad_per_s_to_deg_per_frame", "rotation_angles", "rotations_from_transforms", "smooth_series",
    "speed_buckets", "speed_features", "speed_from_landmarks", "speed_from_rotations",
]


# -- bucket maths --------------------------------------------------------------------------------
def _check_speeds(w: torch.Tensor, what: str = "speed") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        w = torch.as_tensor(w)
    if w.dim() != 1 or w.shape[0] < 1:
        raise InvalidInputError(f"{what} must be a 1-D tensor (frames,) with at least one frame, "
                                f"got shape {tuple(w.shape)}")
    w = w.to(torch.float64)
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).nonzero()[0])
        raise InvalidInputError(f"{what} at frame {bad} is {w[bad].item()}; give finite rad/s values")
    if (w < 0).any():
        bad = int((w < 0).nonzero()[0])
        raise InvalidInputError(f"{what} at frame {bad} is {w[bad].item():.4g} rad/s; head speed is a rotation "
                                "magnitude and must be >= 0")
    return w


def speed_buckets(w: torch.Tensor, centres: Sequence[float], radii: Sequence[float]) -> torch.Tensor:
    """Per-frame speeds (frames,) rad/s -> bucket activations (frames, d) float32 in [-1, 1].

    ``s[f, k] = tanh((w[f] - centres[k]) / radii[k] * 3)``; ``centres`` and ``radii`` are rad/s, radii > 0.
    """
    w = _check_speeds(w)
    c = torch.as_tensor(tuple(centres), dtype=torch.float64)
    r = torch.as_tensor(tuple(radii), dtype=torch.float64)
    if c.dim() != 1 or c.numel() < 1 or r.shape != c.shape:
        raise InvalidInputError(f"need one radius per bucket centre, got {len(c)} centres and {len(r)} radii")
    if not (r > 0).all():
        raise InvalidInputError(f"bucket radii must be > 0 rad/s, got {tuple(radii)}")
    return torch.tanh((w[:, None] - c[None, :]) / r[None, :] * 3.0).to(torch.float32)


def speed_features(w: torch.Tensor, cfg: SpeedConfig | None = None) -> torch.Tensor:
    """Per-frame speeds (frames,) rad/s -> windowed buckets (frames, 2m+1, d) float32 for the speed layers.

    ``2m+1 = cfg.window`` (5 in EMO); windows are clamped at both ends like the audio windows. Add the
    batch axis (``.unsqueeze(0)``) before ``EmoNet.speed_tokens``.
    """
    cfg = cfg or SpeedConfig()
    cfg.validate()
    buckets = speed_buckets(w, cfg.centres, cfg.radii)
    return window_frames(buckets, cfg.window // 2)


# -- units ---------------------------------------------------------------------------------------
def deg_per_frame_to_rad_per_s(deg_per_frame: float | torch.Tensor, fps: float) -> float | torch.Tensor:
    """Head rotation in degrees per frame at ``fps`` -> rad/s (e.g. 1 deg/frame at 25 fps = 0.436 rad/s)."""
    return deg_per_frame * (math.pi / 180.0) * _check_fps(fps)


def rad_per_s_to_deg_per_frame(rad_per_s: float | torch.Tensor, fps: float) -> float | torch.Tensor:
    """Inverse of :func:`deg_per_frame_to_rad_per_s`."""
    return rad_per_s * (180.0 / math.pi) / _check_fps(fps)


# -- schedules -----------------------------------------------------------------------------------
def _check_frames(frames: int) -> int:
    try:
        n = operator.index(frames)
    except TypeError as err:
        raise InvalidInputError(f"frames must be an integer >= 1, got {frames!r}") from err
    if isinstance(frames, bool) or n < 1:
        raise InvalidInputError(f"frames must be an integer >= 1, got {frames!r}")
    return n


def _check_speed_value(speed: float, where: str) -> float:
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
        raise InvalidInputError(f"{where} is {speed!r}; give a finite head speed in rad/s (e.g. 0.5)")
    if speed < 0:
        raise InvalidInputError(f"{where} is {speed} rad/s; head speed is a rotation magnitude and must be >= 0")
    return float(speed)


def constant_speed(speed: float, frames: int) -> torch.Tensor:
    """The same target head speed (rad/s, >= 0) for every frame -> (frames,) float64."""
    value = _check_speed_value(speed, "speed")
    return torch.full((_check_frames(frames),), value, dtype=torch.float64)


def _normalise_keyframes(keyframes, frames: int | None) -> list[tuple[int, float]]:
    """Checked (frame, speed) pairs in frame order; frames >= `frames` are refused unless it is None."""
    if isinstance(keyframes, Mapping):
        items = sorted(keyframes.items(), key=lambda kv: kv[0])
    elif isinstance(keyframes, (list, tuple)):
        items = list(keyframes)
    else:
        raise InvalidInputError(f"keyframes must be a list of (frame, speed) pairs or a {{frame: speed}} dict, "
                                f"got {type(keyframes).__name__}")
    if not items:
        raise InvalidInputError("keyframes are empty; give at least one (frame, speed) pair, "
                                "or use constant_speed for one speed everywhere")
    out: list[tuple[int, float]] = []
    for k, item in enumerate(items):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise InvalidInputError(f"keyframe {k} is {item!r}; each keyframe is a (frame, speed) pair")
        frame, speed = item
        if isinstance(frame, bool) or isinstance(frame, float):
            raise InvalidInputError(f"keyframe {k} has frame {frame!r}; frames are integer indices from 0")
        try:
            f = operator.index(frame)
        except TypeError as err:
            raise InvalidInputError(f"keyframe {k} has frame {frame!r}; frames are integer indices "
                                    "from 0") from err
        if f < 0:
            raise InvalidInputError(f"keyframe {k} is at frame {f}, outside the clip's frames from 0; "
                                    "frames are indices from 0")
        if frames is not None and f >= frames:
            raise InvalidInputError(f"keyframe {k} is at frame {f}, outside the clip's frames 0..{frames - 1}; "
                                    "move it inside or lengthen the clip")
        if out and f == out[-1][0]:
            raise InvalidInputError(f"keyframe {k} repeats frame {f}; give each frame one speed")
        if out and f < out[-1][0]:
            raise InvalidInputError(f"keyframe {k} (frame {f}) comes after frame {out[-1][0]}; "
                                    "list keyframes in increasing frame order")
        out.append((f, _check_speed_value(speed, f"speed of keyframe {k} (frame {f})")))
    return out


def keyframe_speed(keyframes: Sequence[tuple[int, float]] | Mapping[int, float], frames: int,
                   interpolation: str = "linear", past_end: str = "error") -> torch.Tensor:
    """Per-frame head speed (frames,) float64 rad/s from ``(frame, speed)`` keyframes.

    A list must be in strictly increasing frame order; a dict is sorted by frame. Frames are 0-based and
    inside ``[0, frames)``; speeds are rad/s and >= 0. Before the first keyframe the first speed holds, after
    the last the last one. ``interpolation``: ``"linear"`` ramps between keyframes, ``"step"`` holds each
    keyframe's speed until the next keyframe. ``past_end``: keyframes at frame ``frames`` or later are an
    error (``"error"``), or (``"cut"``) the schedule is the one of a video long enough to reach them, cut
    after ``frames`` frames: the ramp towards a later keyframe stays, so a frame's speed does not depend on
    how long the audio is.
    """
    n = _check_frames(frames)
    if interpolation not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation={interpolation!r} is not one of {INTERPOLATIONS}")
    if past_end not in PAST_END:
        raise InvalidInputError(f"past_end={past_end!r} is not one of {PAST_END}")
    keys = _normalise_keyframes(keyframes, n if past_end == "error" else None)
    late = [f for f, _ in keys if f >= n]
    if late:
        log.info("speed keyframes at frames %s lie past the video's last frame %d: the schedule is cut there",
                 ", ".join(map(str, late)), n - 1)
    at = torch.tensor([f for f, _ in keys], dtype=torch.float64)
    val = torch.tensor([s for _, s in keys], dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64)
    # index of the last keyframe at or before each frame (-1 before the first one)
    left = torch.searchsorted(at, t, right=True) - 1
    lo = left.clamp(0, len(keys) - 1)
    if interpolation == "step":
        return val[lo]
    hi = (left + 1).clamp(0, len(keys) - 1)
    span = (at[hi] - at[lo]).clamp_min(1.0)
    frac = ((t - at[lo]) / span).clamp(0.0, 1.0)
    return val[lo] + (val[hi] - val[lo]) * frac


def parse_keyframes(text: str) -> list[tuple[int, float]]:
    """``"0:0.2, 48:1.0, 96:0.5"`` -> ``[(0, 0.2), (48, 1.0), (96, 0.5)]`` (frame:speed in rad/s).

    Separators: commas, semicolons or new lines. Order and ranges are checked by :func:`keyframe_speed`.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"keyframe text must be a string like '0:0.2, 48:1.0', got {type(text).__name__}")
    out = []
    for part in text.replace(";", ",").replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        frame, sep, speed = part.partition(":")
        try:
            if not sep:
                raise ValueError(part)
            out.append((int(frame.strip()), float(speed.strip())))
        except ValueError as err:
            raise InvalidInputError(f"cannot read keyframe {part!r}; write frame:speed pairs such as "
                                    "'0:0.2, 48:1.0' (integer frame, speed in rad/s)") from err
    if not out:
        raise InvalidInputError(f"no keyframes in {text!r}; write frame:speed pairs such as '0:0.2, 48:1.0'")
    return out

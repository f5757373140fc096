"""Head rotation speed measured from a driving video's head poses or 3D face landmarks (EMO section 3.3).

Pipeline: per-frame head rotations ``(frames, 3, 3)`` -> geodesic angle between successive frames ->
times fps = rad/s -> smoothed. The rotations come from a 6-DoF pose (e.g. the top-left 3x3 of MediaPipe's
facial transformation matrices, see :func:`rotations_from_transforms`) or from 3D landmarks by rigid
Kabsch alignment to a reference shape (:func:`head_rotations_from_landmarks`).

Landmark layout: ``(frames, points, 3)`` with x, y, z in one isotropic unit per axis (pixels, or any unit
with equal scale on the three axes). MediaPipe Face Mesh / FaceLandmarker gives 468 (478 with irises)
points with x, y normalised to the image width and height and a relative z on roughly the scale of x:
convert with :func:`normalized_landmarks_to_pixels` first. Rotation is invariant to a uniform scale, so the
head moving towards the camera does not read as rotation. All maths is float64 on CPU-friendly torch.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from .errors import InvalidInputError

log = logging.getLogger(__name__)

# MediaPipe Face Mesh points that move with the skull, not with the jaw, lips, brows or eyelids: the upper
# face oval (temples to cheekbones), the nose bridge and tip midline, and the four eye corners. Indices are
# MediaPipe's (FACE_LANDMARKS_FACE_OVAL / FACE_LANDMARKS_NOSE); they keep talking out of the head pose.
MEDIAPIPE_RIGID_LANDMARKS: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454,   # upper face oval, right side from the forehead
    109, 67, 103, 54, 21, 162, 127, 234,          # upper face oval, left side from the forehead
    9, 8, 168, 6, 197, 195, 5, 4, 1,              # forehead and nose midline
    33, 133, 362, 263,                            # eye corners
)

ORTHOGONALITY_TOLERANCE = 1e-2


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InvalidInputError(f"fps must be a positive number, got {fps!r}; use the video's frame rate")
    return float(fps)


def _first_bad_frame(x: torch.Tensor) -> int | None:
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    return int(bad.nonzero()[0]) if bad.any() else None


# -- smoothing -----------------------------------------------------------------------------------
def smooth_series(values: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Local straight-line fit over ``window`` samples: (n,) -> (n,) float64.

    In the interior this is the centred moving average (Savitzky-Golay of order 1). Near the ends the
    window slides inwards to stay full and the fitted line is evaluated at the sample, so constant and
    linearly changing series come back unchanged everywhere and the ends are smoothed too. ``window`` is
    odd; 1 returns the input. A series shorter than the window is fitted with one line.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise InvalidInputError(f"smoothing window must be an odd integer >= 1 (frames), got {window!r}")
    v = torch.as_tensor(values).to(torch.float64)
    if v.dim() != 1 or v.shape[0] < 1:
        raise InvalidInputError(f"series to smooth must be 1-D with at least one value, got shape {tuple(v.shape)}")
    n = v.shape[0]
    w = min(window, n)
    if w == 1:
        return v.clone()
    start = (torch.arange(n) - window // 2).clamp(0, n - w)
    idx = start[:, None] + torch.arange(w)[None, :]           # (n, w) window members
    x = (idx - torch.arange(n)[:, None]).to(torch.float64)   # offsets from the evaluated sample
    y = v[idx]
    xm, ym = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    slope = ((x - xm) * (y - ym)).sum(dim=1) / ((x - xm) ** 2).sum(dim=1)
    return ym[:, 0] - slope * xm[:, 0]


# -- rotations -----------------------------------------------------------------------------------
def _check_rotations(rotations: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(rotations)
    if r.dim() != 3 or tuple(r.shape[1:]) != (3, 3):
        raise InvalidInputError(f"head rotations must be (frames, 3, 3) matrices, got shape {tuple(r.shape)}")
    r = r.to(torch.float64)
    bad = _first_bad_frame(r)
    if bad is not None:
        raise InvalidInputError(f"head rotation of frame {bad} is not finite (no face found?); fill or drop "
                                "that frame before measuring speed")
    eye = torch.eye(3, dtype=torch.float64)
    err = (r.transpose(1, 2) @ r - eye).abs().amax(dim=(1, 2))
    det = torch.linalg.det(r)
    wrong = (err > ORTHOGONALITY_TOLERANCE) | (det <= 0)
    if wrong.any():
        f = int(wrong.nonzero()[0])
        raise InvalidInputError(f"matrix of frame {f} is not a rotation (|R^T R - I| = {err[f].item():.3g}, "
                                f"det = {det[f].item():.3g}); pass the 3x3 rotation part of the pose, or use "
                                "rotations_from_transforms to remove scale")
    return r


def rotations_from_transforms(matrices: torch.Tensor) -> torch.Tensor:
    """Poses (frames, 4, 4) or (frames, 3, 3) -> nearest rotations (frames, 3, 3) float64.

    Takes the top-left 3x3 block (for MediaPipe's facial transformation matrices, camera-from-canonical-face)
    and projects it onto SO(3) with an SVD, which removes a uniform scale and small shear.
    """
    m = torch.as_tensor(matrices).to(torch.float64)
    if m.dim() != 3 or tuple(m.shape[1:]) not in ((4, 4), (3, 3)):
        raise InvalidInputError(f"poses must be (frames, 4, 4) or (frames, 3, 3), got shape {tuple(m.shape)}")
    bad = _first_bad_frame(m)
    if bad is not None:
        raise InvalidInputError(f"pose of frame {bad} is not finite (no face found?); fill or drop that frame")
    u, s, vh = torch.linalg.svd(m[:, :3, :3])
    if (s[:, 2] <= 1e-12 * s[:, 0].clamp_min(1e-300)).any():
        f = int((s[:, 2] <= 1e-12 * s[:, 0].clamp_min(1e-300)).nonzero()[0])
        raise InvalidInputError(f"pose of frame {f} is singular (singular values {s[f].tolist()}); "
                                "it holds no rotation")
    d = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.ones_like(s)
    fix[:, 2] = d
    return u @ torch.diag_embed(fix) @ vh


def rotation_angles(rotations: torch.Tensor) -> torch.Tensor:
    """Rotations (frames, 3, 3) -> geodesic angle from each frame to the next, (frames-1,) float64 radians.

    ``angle = arccos((trace(R_i^T R_{i+1}) - 1) / 2)``, evaluated as ``atan2(sin, cos)`` with ``sin`` from
    the skew part of ``R_i^T R_{i+1}``: exact for small angles, where arccos loses half its digits.
    """
    r = _check_rotations(rotations)
    q = r[:-1].transpose(1, 2) @ r[1:]
    cos = (q.diagonal(dim1=1, dim2=2).sum(dim=1) - 1.0) / 2.0
    skew = torch.stack([q[:, 2, 1] - q[:, 1, 2], q[:, 0, 2] - q[:, 2, 0], q[:, 1, 0] - q[:, 0, 1]], dim=1)
    sin = torch.linalg.vector_norm(skew, dim=1) / 2.0
    return torch.atan2(sin, cos)


def speed_from_rotations(rotations: torch.Tensor, fps: float, smoothing: int = 5) -> torch.Tensor:
    """Head rotations (frames, 3, 3) of a video at ``fps`` -> head speed (frames,) float64 rad/s.

    Frame ``i``'s speed is the angle turned from frame ``i-1`` to ``i`` times ``fps``; the ``frames-1`` step
    speeds are smoothed with :func:`smooth_series` (``smoothing`` frames, odd, 1 = none) and frame 0 takes
    frame 1's speed, so the length stays ``frames``. The line fit at the ends can dip below zero on a still
    head, so the result is clamped at 0. Needs at least 2 frames.
    """
    fps = _check_fps(fps)
    r = torch.as_tensor(rotations)
    if r.dim() == 3 and r.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 frames to measure head speed, got {r.shape[0]}; "
                                "use constant_speed for a still image")
    steps = smooth_series(rotation_angles(r) * fps, smoothing).clamp_min(0.0)
    return torch.cat([steps[:1], steps])


# -- landmarks -> pose ---------------------------------------------------------------------------
def normalized_landmarks_to_pixels(landmarks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """MediaPipe landmarks (..., 3) with x in [0,1] of width, y in [0,1] of height, z relative (x's scale)
    -> pixels on all three axes (z scaled by width, as MediaPipe defines it), float64."""
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise InvalidInputError(f"image size must be positive integers, got {width=}, {height=}")
    lm = torch.as_tensor(landmarks).to(torch.float64)
    if lm.shape[-1] != 3:
        raise InvalidInputError(f"landmarks must end in (x, y, z), got shape {tuple(lm.shape)}")
    return lm * torch.tensor([width, height, width], dtype=torch.float64)


def _check_landmarks(landmarks, reference, landmark_indices) -> tuple[torch.Tensor, torch.Tensor]:
    lm = torch.as_tensor(landmarks).to(torch.float64)
    if lm.dim() != 3 or lm.shape[2] != 3 or lm.shape[0] < 1:
        raise InvalidInputError(f"landmarks must be (frames, points, 3) with x, y, z, got shape {tuple(lm.shape)}")
    ref = lm[0] if reference is None else torch.as_tensor(reference).to(torch.float64)
    if tuple(ref.shape) != tuple(lm.shape[1:]):
        raise InvalidInputError(f"reference shape {tuple(ref.shape)} must match one frame's landmarks "
                                f"{tuple(lm.shape[1:])}")
    if landmark_indices is not None:
        idx = torch.as_tensor(list(landmark_indices), dtype=torch.long)
        if idx.numel() < 3 or idx.min() < 0 or idx.max() >= lm.shape[1]:
            raise InvalidInputError(f"landmark_indices must pick at least 3 of the {lm.shape[1]} points, got "
                                    f"{idx.numel()} indices in [{int(idx.min()) if idx.numel() else '-'}, "
                                    f"{int(idx.max()) if idx.numel() else '-'}]")
        lm, ref = lm[:, idx], ref[idx]
    if lm.shape[1] < 3:
        raise InvalidInputError(f"need at least 3 landmarks per frame for a pose, got {lm.shape[1]}")
    bad = _first_bad_frame(lm)
    if bad is not None:
        raise InvalidInputError(f"landmarks of frame {bad} are not finite (no face found?); fill or drop that "
                                "frame before estimating the head pose")
    if not torch.isfinite(ref).all():
        raise InvalidInputError("reference landmarks are not finite; pass a complete face shape")
    return lm, ref


def head_rotations_from_landmarks(landmarks: torch.Tensor, reference: torch.Tensor | None = None,
                                  landmark_indices: Sequence[int] | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid head pose per frame by Kabsch alignment of 3D landmarks to a reference shape.

    landmarks: (frames, points, 3), isotropic units (see the module docstring). reference: (points, 3),
    default the first frame (then frame 0's rotation is the identity); a canonical face shape gives poses
    relative to it. landmark_indices: optional subset used for the fit, e.g.
    :data:`MEDIAPIPE_RIGID_LANDMARKS` to keep jaw and lip motion out of the pose.
    Returns (rotations (frames, 3, 3), translations (frames, 3)) float64 with
    ``landmarks[f, k] ~= rotations[f] @ reference[k] + translations[f]``.
    """
    lm, ref = _check_landmarks(landmarks, reference, landmark_indices)
    ref_mean, lm_mean = ref.mean(dim=0), lm.mean(dim=1)
    a, b = ref - ref_mean, lm - lm_mean[:, None]
    if torch.linalg.matrix_rank(a).item() < 2:
        raise InvalidInputError("reference landmarks are collinear; a pose needs points spread over a face")
    depth = a[:, 2].abs().max().item()
    if depth <= 1e-9 * a[:, :2].abs().max().item():
        log.warning("landmarks have no depth (z is constant); only in-plane rotation (roll) can be measured")
    h = a.transpose(0, 1)[None] @ b                          # (frames, 3, 3) cross-covariance
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(1, 2)
    d = torch.sign(torch.linalg.det(v @ u.transpose(1, 2)))
    fix = torch.ones(lm.shape[0], 3, dtype=torch.float64)
    fix[:, 2] = torch.where(d == 0, torch.ones_like(d), d)   # reflection guard
    rot = v @ torch.diag_embed(fix) @ u.transpose(1, 2)
    trans = lm_mean - (rot @ ref_mean[:, None])[..., 0]
    return rot, trans


def speed_from_landmarks(landmarks: torch.Tensor, fps: float, reference: torch.Tensor | None = None,
                         landmark_indices: Sequence[int] | None = None, smoothing: int = 5) -> torch.Tensor:
    """3D face landmarks (frames, points, 3) of a video at ``fps`` -> head speed (frames,) float64 rad/s.

    :func:`head_rotations_from_landmarks` then :func:`speed_from_rotations`.
    """
    rot, _ = head_rotations_from_landmarks(landmarks, reference, landmark_indices)
    speed = speed_from_rotations(rot, fps, smoothing)
    log.debug("head speed from %d frames of landmarks: mean %.3f rad/s, max %.3f rad/s",
              speed.shape[0], speed.mean().item(), speed.max().item())
    return speed

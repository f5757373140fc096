"""Every face in one image of any size and shape, for EMO Face Crop (phone photos, group shots, wide stills).

MediaPipe's short-range BlazeFace sees a 128x128 picture of whatever it is given. On a 1080x1920 photo the
test portrait's 200-px face becomes 13 px after that resize: measured, it scores 0.47 with a box 30% too large,
or is missed. So the detector also runs on square windows cut from the image (`plan_windows`): sides of the
shorter image side divided by 1, 2 and 4, each level overlapping by half, each window resized to
WINDOW_PIXELS. A face up to half a window's side lies wholly inside some window of that level, where it covers
a good part of the detector's view. Every candidate is confirmed as in `face.detect_frame_boxes` (score,
keypoint layout, box area against the whole image, and the face landmarker on the window it came from), the
same face found in several windows is kept once (the best score), and the faces come back left to right.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .face import CANDIDATE_SCORE, FaceDetection, NoFaceError, confirm_by_landmarks, detect_face_boxes_batch
from .face_confirm import MIN_FACE_SCORE, face_problem

log = logging.getLogger(__name__)

WINDOW_LEVELS = 3  # window sides: the shorter image side / 1, / 2, / 4
MIN_WINDOW = 96  # no window smaller than this (pixels): a face in it would be too small to animate
WINDOW_PIXELS = 256  # windows are resized to this before detection (BlazeFace itself reads 128)
EDGE_MARGIN = 0.02  # a box this close (fraction of the window) to a window edge inside the image is cut off
SAME_FACE_OVERLAP = 0.5  # two boxes whose intersection covers this much of the smaller are one face


@dataclass(frozen=True)
class Window:
    """A rectangle of the image searched on its own: x, y (top left), width, height in pixels."""
    x: int
    y: int
    width: int
    height: int


def _starts(length: int, side: int) -> list[int]:
    """Window starts along one axis: every side // 2 pixels, the last one flush with the far edge."""
    starts = list(range(0, length - side + 1, max(1, side // 2)))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def plan_windows(height: int, width: int, levels: int = WINDOW_LEVELS, min_side: int = MIN_WINDOW) -> list[Window]:
    """The whole image first, then the square windows of each level (see the module docstring)."""
    if height < 1 or width < 1 or levels < 1:
        raise InvalidInputError(f"need an image of at least 1x1 and levels >= 1, got {width}x{height}, {levels=}")
    whole = Window(0, 0, width, height)
    out, short = [whole], min(height, width)
    for level in range(levels):
        side = short // 2 ** level
        if level and side < min_side:
            break
        out += [w for y in _starts(height, side) for x in _starts(width, side)
                if (w := Window(x, y, side, side)) != whole]
    return out


def _cut(image: torch.Tensor, window: Window, pixels: int | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> the window as (h, w, 3) uint8, resized to pixels x pixels when given."""
    tile = image[window.y:window.y + window.height, window.x:window.x + window.width]
    if pixels is None:
        return tile.contiguous()
    x = tile.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(pixels, pixels), mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous()


def _to_image(box: FaceDetection, window: Window, tile_w: int, tile_h: int) -> FaceDetection:
    """A box found in a (resized) window, in the whole image's pixels."""
    sx, sy = window.width / tile_w, window.height / tile_h
    points = [(window.x + x * sx, window.y + y * sy) for x, y in box.keypoints]
    return FaceDetection(window.x + box.x0 * sx, window.y + box.y0 * sy, window.x + box.x1 * sx,
                         window.y + box.y1 * sy, box.score, points)


def _cut_off(box: FaceDetection, window: Window, width: int, height: int) -> bool:
    """Whether the box touches a window edge that lies inside the image (the face may go on beyond it)."""
    mx, my = EDGE_MARGIN * window.width, EDGE_MARGIN * window.height
    return ((window.x > 0 and box.x0 < window.x + mx) or (window.y > 0 and box.y0 < window.y + my)
            or (window.x + window.width < width and box.x1 > window.x + window.width - mx)
            or (window.y + window.height < height and box.y1 > window.y + window.height - my))


def _overlap(a: FaceDetection, b: FaceDetection) -> float:
    """Intersection over the smaller box's area."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return 0.0 if w <= 0 or h <= 0 else w * h / max(min(a.area, b.area), 1e-9)


def _search(image: torch.Tensor, windows: Sequence[Window], pixels: int | None,
            model_dirs: Sequence[str | os.PathLike], min_score: float, problems: list) -> list[FaceDetection]:
    """Confirmed faces (whole-image pixels) in windows of one size; `problems` gets (score, why) of refusals."""
    height, width = image.shape[:2]
    tiles = torch.stack([_cut(image, w, pixels) for w in windows])
    tile_h, tile_w = tiles.shape[1:3]
    kept: list[list[tuple[FaceDetection, FaceDetection]]] = []
    for window, faces in zip(windows, detect_face_boxes_batch(tiles, model_dirs, min(min_score, CANDIDATE_SCORE))):
        good = []
        for face in faces:
            mapped = _to_image(face, window, tile_w, tile_h)
            if _cut_off(mapped, window, width, height):
                continue
            why = face_problem(mapped, width, height, min_score)
            if why is None:
                good.append((face, mapped))
            else:
                problems.append((face.score, why))
        kept.append(good)
    return [mapped for good in _confirm_by_landmarks(tiles, kept, model_dirs, problems) for _, mapped in good]


def _confirm_by_landmarks(tiles: torch.Tensor, kept: list, model_dirs, problems: list) -> list:
    """face.confirm_by_landmarks on the windows' (box, mapped box) pairs; every pair it drops is a problem."""
    out = confirm_by_landmarks(tiles, kept, model_dirs, [], box=lambda pair: pair[0])
    for before, after in zip(kept, out):
        problems += [(pair[0].score, "the face landmarker finds no face where the detector boxed one")
                     for pair in before if pair not in after]
    return out


def find_faces(image: torch.Tensor, model_dirs: Sequence[str | os.PathLike],
               min_score: float = MIN_FACE_SCORE) -> list[FaceDetection]:
    """Every confirmed face of one (H, W, 3) uint8 RGB image, sorted left to right by box centre.

    Raises NoFaceError (naming what the best refused candidate lacked and 'face_mask') when there is none.
    """
    height, width = image.shape[:2]
    windows = plan_windows(height, width)
    problems: list[tuple[float, str]] = []
    found = _search(image, windows[:1], None, model_dirs, min_score, problems)
    if len(windows) > 1:
        found += _search(image, windows[1:], WINDOW_PIXELS, model_dirs, min_score, problems)
    faces: list[FaceDetection] = []
    for face in sorted(found, key=lambda f: -f.score):
        if all(_overlap(face, other) < SAME_FACE_OVERLAP for other in faces):
            faces.append(face)
    if not faces:
        detail = f" ({max(problems)[1]})" if problems else ""
        raise NoFaceError(f"no face found in the image ({width}x{height}){detail}; faces smaller than about a "
                          f"tenth of the shorter side are not searched; draw a face mask and connect it to "
                          f"'face_mask' instead")
    faces.sort(key=lambda f: (f.x0 + f.x1) / 2)
    log.info("%d face(s) found in %dx%d (%d windows searched), left to right: %s", len(faces), width, height,
             len(windows), ", ".join(f"({f.x0:.0f}, {f.y0:.0f})-({f.x1:.0f}, {f.y1:.0f})" for f in faces))
    return faces

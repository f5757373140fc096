"""Face-locator masks from real images: MediaPipe face boxes -> the mask EMO's / Hallo's face locator reads.

EMO (paper sec. 3.2) conditions on the union of the face boxes over the clip, expanded by a ratio, as a
1-channel mask; Hallo's face locator reads the same kind of box as a 3-channel binary image. A mask drawn by
the user can replace detection (its bounding box is then used the same way), so stylised faces that the
detector misses still work. Hallo's per-level face / lip / full attention masks live in `face_hallo`.

Images follow ComfyUI's IMAGE layout: float32 (batch, height, width, 3) in 0..1. MediaPipe is imported
inside the functions that run it; model files are looked up with `face_models`.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .errors import InvalidInputError, MissingDependencyError, MissingWeightsError
from .face_confirm import MIN_FACE_SCORE, confirmed
from .face_models import find_detector
from .finite import IMAGE_FIX, require_finite

log = logging.getLogger(__name__)

MEDIAPIPE_HINT = "pip install 'mediapipe>=0.10.35'"
CANDIDATE_SCORE = 0.2  # detections below this are noise; between it and MIN_FACE_SCORE they explain a refusal


class NoFaceError(InvalidInputError):
    """No face was found in the image(s) given to face detection."""


class FaceBox(NamedTuple):
    """A detected face in pixels: x0, y0 inclusive, x1, y1 exclusive (x right, y down), detector score."""
    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


class FaceDetection(FaceBox):
    """A FaceBox from the detector, with `keypoints`: MediaPipe's six (x, y) pixels (right eye, left eye, nose
    tip, mouth centre, right ear, left ear) that `face_confirm` checks before the box is used."""

    def __new__(cls, x0, y0, x1, y1, score, keypoints: Sequence[tuple[float, float]] = ()):
        self = super().__new__(cls, x0, y0, x1, y1, score)
        self.keypoints = tuple(keypoints)
        return self


@dataclass(frozen=True)
class FaceRegion:
    """The face region of a reference image or clip.

    box: (x0, y0, x1, y1) integer pixels, end exclusive: union over frames, expanded, clamped to the image.
    mask: (frames, height, width) float32 0/1, the box on every frame (a ComfyUI MASK for preview).
    locator_input: (1, channels, height, width) float32 0/1 for the face locator (EmoNet.face_features).
    frame_boxes: per input frame, the box used (detected or from the user mask) or None where none was found.
    source: "detector" or "user_mask".
    """
    box: tuple[int, int, int, int]
    mask: torch.Tensor
    locator_input: torch.Tensor
    frame_boxes: tuple[FaceBox | None, ...]
    source: str


def import_mediapipe():
    """The mediapipe module with its Tasks vision API, or MissingDependencyError."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import vision  # noqa: F401  (checks the Tasks API is there)
    except ImportError as err:
        raise MissingDependencyError(f"face detection needs MediaPipe's Tasks API; {MEDIAPIPE_HINT}") from err
    return mp


def to_uint8_frames(images: torch.Tensor) -> torch.Tensor:
    """IMAGE (batch, H, W, 3) or (H, W, 3) float 0..1 -> (batch, H, W, 3) uint8 on the CPU."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise InvalidInputError(f"expected an IMAGE of shape (batch, height, width, 3), got {tuple(images.shape)}")
    require_finite(images, "the image", IMAGE_FIX)
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def largest(boxes: Sequence[FaceBox], what: str = "faces") -> FaceBox:
    """The box of largest area; logs when there were several."""
    best = max(boxes, key=lambda b: b.area)
    if len(boxes) > 1:
        log.info("%d %s found; using the largest at (%.0f, %.0f)-(%.0f, %.0f)", len(boxes), what,
                 best.x0, best.y0, best.x1, best.y1)
    return best


def detect_face_boxes(image: torch.Tensor, model_dirs: Sequence[str | os.PathLike],
                      min_score: float = 0.5) -> list[FaceBox]:
    """All faces MediaPipe's BlazeFace short-range detector finds in one image, best score first.

    image: (H, W, 3) uint8 RGB (numpy array or tensor). model_dirs: folders searched for the detector.
    """
    return detect_face_boxes_batch(torch.as_tensor(image).unsqueeze(0), model_dirs, min_score)[0]


def detect_face_boxes_batch(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike],
                            min_score: float = 0.5) -> list[list[FaceBox]]:
    """Per frame of (batch, H, W, 3) uint8 RGB, the detected faces (one detector for the whole batch)."""
    mp = import_mediapipe()
    from mediapipe.tasks.python import BaseOptions, vision

    path = find_detector(model_dirs)
    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                         min_detection_confidence=min_score)
    out = []
    with vision.FaceDetector.create_from_options(options) as detector:
        for frame in frames:
            data = frame.contiguous().numpy()
            result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=data))
            height, width = data.shape[:2]
            out.append(sorted((_to_box(d, width, height) for d in result.detections), key=lambda b: -b.score))
    return out


def _to_box(detection, width: int, height: int) -> FaceDetection:
    bb = detection.bounding_box
    score = detection.categories[0].score if detection.categories else 0.0
    points = [(float(k.x) * width, float(k.y) * height) for k in (detection.keypoints or [])]
    return FaceDetection(float(bb.origin_x), float(bb.origin_y), float(bb.origin_x + bb.width),
                         float(bb.origin_y + bb.height), float(score or 0.0), points)


def union_box(boxes: Sequence[FaceBox]) -> FaceBox:
    """Smallest box holding all `boxes` (score: the lowest)."""
    return FaceBox(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes),
                   max(b.y1 for b in boxes), min(b.score for b in boxes))


def expand_box(box: FaceBox, ratio: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Scale `box` by `ratio` about its centre, round outwards to pixels, clamp to the image."""
    if not ratio > 0:
        raise InvalidInputError(f"expand_ratio must be > 0, got {ratio}")
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    half_w, half_h = (box.x1 - box.x0) * ratio / 2, (box.y1 - box.y0) * ratio / 2
    x0, y0 = max(0, math.floor(cx - half_w)), max(0, math.floor(cy - half_h))
    x1, y1 = min(width, math.ceil(cx + half_w)), min(height, math.ceil(cy + half_h))
    if x1 <= x0 or y1 <= y0:
        raise InvalidInputError(f"face box {tuple(box[:4])} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def render_box(box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """(height, width) float32: 1 inside box (x0, y0, x1, y1; end exclusive), 0 outside."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(height, width, dtype=torch.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def locator_input(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """(H, W) mask -> (1, channels, H, W): EMO reads 1 channel, Hallo the mask repeated on 3 (RGB image)."""
    if channels not in (1, 3):
        raise InvalidInputError(f"channels must be 1 (EMO) or 3 (Hallo), got {channels}")
    return mask[None, None].repeat(1, channels, 1, 1)


def mask_boxes(user_mask: torch.Tensor, height: int, width: int, threshold: float = 0.5) -> list[FaceBox | None]:
    """Bounding box of the pixels >= threshold of each frame of a user MASK ((H, W) or (frames, H, W), 0..1)."""
    if user_mask.dim() == 2:
        user_mask = user_mask.unsqueeze(0)
    if user_mask.dim() != 3 or tuple(user_mask.shape[1:]) != (height, width):
        raise InvalidInputError(
            f"face_mask has shape {tuple(user_mask.shape)}, expected (height, width) or (frames, height, width) "
            f"matching the {width}x{height} image; resize the mask to the image size")
    boxes: list[FaceBox | None] = []
    for frame in user_mask.detach().float().cpu() >= threshold:
        ys, xs = torch.nonzero(frame, as_tuple=True)
        boxes.append(None if ys.numel() == 0 else
                     FaceBox(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), 1.0))
    if all(b is None for b in boxes):
        raise InvalidInputError(f"face_mask is empty (no pixel >= {threshold}); paint the face region white")
    return boxes


def detect_frame_boxes(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike],
                       min_score: float = MIN_FACE_SCORE) -> list[FaceBox | None]:
    """Largest confirmed face per frame of (batch, H, W, 3) uint8, None where none; NoFaceError if none at all.

    The detector reports candidates down to CANDIDATE_SCORE; `face_confirm` keeps those whose score
    (>= min_score) and keypoints look like a face, so a refusal can say what the best candidate lacked.
    """
    height, width = frames.shape[1:3]
    candidates, reasons = [], []
    for faces in detect_face_boxes_batch(frames, model_dirs, min(min_score, CANDIDATE_SCORE)):
        good, why = confirmed(faces, width, height, min_score)
        candidates.append(good)
        if why is not None and not good:
            reasons.append(why)
    candidates = confirm_by_landmarks(frames, candidates, model_dirs, reasons)
    boxes = [largest(good) if good else None for good in candidates]
    missed = sum(b is None for b in boxes)
    if missed == len(boxes):
        where = "the image" if len(boxes) == 1 else f"any of the {len(boxes)} frames"
        detail = f" ({reasons[0]})" if reasons else ""
        raise NoFaceError(f"no face found in {where} ({width}x{height}){detail}; draw a face mask and connect "
                          f"it to 'face_mask' instead")
    if missed:
        log.warning("no face found in %d of %d frames; the face box is the union over the others",
                    missed, len(boxes))
    return boxes


def confirm_by_landmarks(frames: torch.Tensor, candidates: list[list],
                         model_dirs: Sequence[str | os.PathLike], reasons: list[str],
                         box=lambda candidate: candidate) -> list[list]:
    """Keep the candidates on which MediaPipe's face landmarker also finds a face (the 468-point mesh has its
    own face-presence check, which refuses animals and patterns the box detector takes for faces); without the
    landmarker file, score and keypoints decide. `box(candidate)` is its FaceBox (candidates may carry more)."""
    from .face_hallo import landmark_faces

    todo = [i for i, good in enumerate(candidates) if good]
    if not todo:
        return candidates
    try:
        found = landmark_faces(frames[todo], model_dirs)
    except MissingWeightsError as err:
        log.warning("faces are confirmed by the detector's score and keypoints only: %s", err)
        return candidates
    out = list(candidates)
    for i, faces in zip(todo, found):
        out[i] = [c for c in candidates[i] if any(same_face(box(c), lm) for lm in faces)]
        if not out[i]:
            reasons.append("the face landmarker finds no face where the detector boxed one")
    return out


def same_face(box: FaceBox, landmarks) -> bool:
    """Whether a landmark set and a detector box are one face: each one's centre lies inside the other."""
    lx0, ly0 = (float(v) for v in landmarks[:, :2].min(0))
    lx1, ly1 = (float(v) for v in landmarks[:, :2].max(0))
    bx, by = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    lx, ly = (lx0 + lx1) / 2, (ly0 + ly1) / 2
    return lx0 <= bx <= lx1 and ly0 <= by <= ly1 and box.x0 <= lx <= box.x1 and box.y0 <= ly <= box.y1


def face_region(images: torch.Tensor, expand_ratio: float = 1.2, user_mask: torch.Tensor | None = None,
                channels: int = 1, model_dirs: Sequence[str | os.PathLike] = (),
                min_score: float = MIN_FACE_SCORE) -> FaceRegion:
    """Face region of a reference image or clip, rendered for the face locator.

    images: IMAGE (frames, H, W, 3) float 0..1; every frame is searched. user_mask: optional MASK (H, W)
    or (frames, H, W) 0..1 replacing detection. The per-frame boxes are united, expanded by
    `expand_ratio` about their centre and clamped. channels: 1 for EMO, 3 for Hallo.
    """
    frames = to_uint8_frames(images)
    count, height, width = frames.shape[:3]
    if user_mask is not None:
        boxes, source = mask_boxes(user_mask, height, width), "user_mask"
    else:
        boxes, source = detect_frame_boxes(frames, model_dirs, min_score), "detector"
    box = expand_box(union_box([b for b in boxes if b is not None]), expand_ratio, width, height)
    mask = render_box(box, height, width)
    log.info("face region from %s over %d frame(s) of %dx%d: box %s", source, count, width, height, box)
    return FaceRegion(box=box, mask=mask.expand(count, height, width).contiguous(),
                      locator_input=locator_input(mask, channels), frame_boxes=tuple(boxes), source=source)

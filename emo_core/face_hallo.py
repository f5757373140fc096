"""Hallo's full / face / lip attention masks per UNet resolution level, from MediaPipe face landmarks.

Port of Hallo's inference preprocessing (hallo/datasets/image_processor.py `ImageProcessor.preprocess`,
hallo/utils/util.py `get_mask`, `get_face_mask`, `get_lip_mask`, `expand_region`, `blur_mask`,
`get_background_mask`, `get_sep_face_mask`, `get_union_mask`):

1. face box = bounding box of the 36 silhouette landmarks, expanded x1.2 (`face_expand_ratio`) by
   `expand_region` (which shifts, not clips, a box that leaves the image); lip box = the 20 outer-lip
   landmarks expanded x2.0. Over several frames the boxes are united (`get_union_mask`).
2. Each box is drawn as a 0/255 uint8 image, resized (cv2 INTER_LINEAR) to the level-0 grid, Gaussian
   blurred (kernel 51 for the face, 31 for the lip, sigma from the kernel) and min-max normalised to 0..255.
3. lip = blurred lip; face = blurred face - blurred lip (saturating); full = 255 - blurred face (as
   Hallo computes it in float and truncates).
4. Each level is the level-0 uint8 image resized by PIL bilinear (torchvision Resize on a PIL image), /255,
   flattened row-major.

A face MASK drawn by the user can replace the landmarks (`user_mask_boxes`, `hallo_masks(user_mask=...)`):
its bounding box plays the silhouette box and the outer-lip box is `LIP_FRACTION` of it, both then
expanded as above.

Deviations, all identical to Hallo for a square 512 px image: Hallo blurs on a fixed 64x64 grid and sizes
every level from the image width (square); here level 0 is (H//8, W//8), each next level halves with
ceil (the UNet's stride-2 grid), and the blur kernels scale with min(H, W)/512 (kept odd). Landmarks come
from any Tasks face-landmarker bundle (Hallo uses face_landmarker_v2_with_blendshapes.task); the CI bundle
runs mediapipe's 468-point mesh model, whose silhouette and lip points are the ones Hallo indexes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import InvalidInputError, MissingDependencyError
from .face import NoFaceError, import_mediapipe, mask_boxes, to_uint8_frames
from .face_models import find_landmarker

log = logging.getLogger(__name__)

# hallo/utils/util.py
SILHOUETTE_IDS = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                  152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIP_IDS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
FACE_KERNEL, LIP_KERNEL, HALLO_GRID = 51, 31, 64
# Outer-lip box as fractions (x0, x1, y0, y1) of the silhouette box, for a drawn mask: measured on the test
# portrait's landmarks (0.24, 0.72, 0.64, 0.80), centred. After Hallo's x2.0 expansion it spans x 0..1,
# y 0.56..0.88 of the face: the mouth with its cheeks and chin, as the landmark path gives.
LIP_FRACTION = (0.25, 0.75, 0.64, 0.80)

Box = tuple[int, int, int, int]  # (min_x, max_x, min_y, max_y) pixels, end exclusive: Hallo's order


@dataclass(frozen=True)
class HalloMasks:
    """Hallo's attention masks; each list runs over levels, each item (frames, h_l * w_l) float32 0..1.

    face_box / lip_box: (min_x, max_x, min_y, max_y) pixel boxes the masks were drawn from; face_box is
    also Hallo's own face-locator region: face.render_box((b[0], b[2], b[1], b[3]), H, W) reproduces
    Hallo's face_mask.png exactly (note the different corner order).
    Iterating yields (full, face, lip).
    """
    full: list[torch.Tensor]
    face: list[torch.Tensor]
    lip: list[torch.Tensor]
    face_box: Box
    lip_box: Box
    sizes: tuple[tuple[int, int], ...]

    def __iter__(self):
        return iter((self.full, self.face, self.lip))


def _cv2():
    try:
        import cv2
    except ImportError as err:
        raise MissingDependencyError("Hallo's attention masks need OpenCV, which mediapipe installs; "
                                     "pip install 'mediapipe>=0.10.35' (or opencv-python-headless)") from err
    return cv2


def level_sizes(height: int, width: int, levels: int) -> tuple[tuple[int, int], ...]:
    """(h, w) token grid per level: (H//8, W//8), then halved with ceil; 512x512, 4 -> 64, 32, 16, 8."""
    if levels < 1:
        raise InvalidInputError(f"levels must be >= 1, got {levels}")
    if height < 8 or width < 8:
        raise InvalidInputError(f"image must be at least 8x8 pixels for a latent grid, got {width}x{height}")
    sizes = [(height // 8, width // 8)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return tuple(sizes)


def expand_region(region: Sequence[float], width: int, height: int, ratio: float) -> Box:
    """Hallo's `expand_region`: (min_x, max_x, min_y, max_y) scaled about its centre, shifted into the image."""
    min_x, max_x, min_y, max_y = region
    mid_x, mid_y = (max_x + min_x) // 2, (max_y + min_y) // 2
    side_x, side_y = (max_x - min_x) * ratio, (max_y - min_y) * ratio
    min_x, max_x = mid_x - side_x // 2, mid_x + side_x // 2
    min_y, max_y = mid_y - side_y // 2, mid_y + side_y // 2
    if min_x < 0:
        max_x, min_x = max_x - min_x, 0
    if max_x > width:
        min_x, max_x = min_x - (max_x - width), width
    if min_y < 0:
        max_y, min_y = max_y - min_y, 0
    if max_y > height:
        min_y, max_y = min_y - (max_y - height), height
    return round(min_x), round(max_x), round(min_y), round(max_y)


def landmark_box(points: np.ndarray, ids: Sequence[int], width: int, height: int, ratio: float) -> Box:
    """Hallo's `get_face_mask` / `get_lip_mask` box: landmarks (N, 2) pixels -> expanded, rounded box."""
    chosen = np.take(points, ids, 0)
    lo, hi = np.round(chosen.min(0)), np.round(chosen.max(0))
    return expand_region([lo[0], hi[0], lo[1], hi[1]], width, height, ratio)


def union_boxes(boxes: Sequence[Box]) -> Box:
    """Hallo's `get_union_mask` of box masks: the box around all of them."""
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def draw_box(box: Box, height: int, width: int) -> np.ndarray:
    """(height, width) uint8: 255 inside box (min_x, max_x, min_y, max_y), as Hallo slices it."""
    mask = np.zeros((height, width), dtype=np.uint8)
    min_x, max_x, min_y, max_y = box
    mask[max(0, min_y):max_y, max(0, min_x):max_x] = 255
    return mask


def blur_mask(mask: np.ndarray, grid: tuple[int, int], kernel: int) -> np.ndarray:
    """Hallo's `blur_mask`: uint8 mask -> resized to grid (h, w), Gaussian kernel x kernel, min-max 0..255."""
    cv2 = _cv2()
    resized = cv2.resize(mask, (grid[1], grid[0]))
    blurred = cv2.GaussianBlur(resized, (kernel, kernel), 0)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def _scaled_kernel(base: int, height: int, width: int) -> int:
    size = max(1, round(base * min(height, width) / (8 * HALLO_GRID)))
    return size if size % 2 else size + 1


def _resize_levels(image: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """uint8 (h0, w0) -> per level (1, h*w) float32 0..1: PIL bilinear then ToTensor, as torchvision does."""
    from PIL import Image

    pil = Image.fromarray(image)
    out = []
    for h, w in sizes:
        level = pil if pil.size == (w, h) else pil.resize((w, h), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(level, dtype=np.uint8).copy()).float().div(255).view(1, -1))
    return out


def masks_from_boxes(face_box: Box, lip_box: Box, height: int, width: int, levels: int = 4,
                     frames: int = 1) -> HalloMasks:
    """Hallo's full / face / lip masks for boxes (min_x, max_x, min_y, max_y) in an H x W image."""
    sizes = level_sizes(height, width, levels)
    face_k, lip_k = _scaled_kernel(FACE_KERNEL, height, width), _scaled_kernel(LIP_KERNEL, height, width)
    face_blur = blur_mask(draw_box(face_box, height, width), sizes[0], face_k)
    lip_blur = blur_mask(draw_box(lip_box, height, width), sizes[0], lip_k)
    sep_face = _cv2().subtract(face_blur, lip_blur)
    background = ((1.0 - face_blur / 255.0) * 255).astype(np.uint8)  # Hallo's float round trip, truncated

    def per_level(image):
        return [m.repeat(frames, 1) for m in _resize_levels(image, sizes)]

    return HalloMasks(full=per_level(background), face=per_level(sep_face), lip=per_level(lip_blur),
                      face_box=face_box, lip_box=lip_box, sizes=sizes)


def detect_landmarks(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike],
                     max_faces: int = 4, depth: bool = False) -> list[np.ndarray | None]:
    """Per frame of (batch, H, W, 3) uint8 RGB: (N, 2) landmark pixels (x, y) of the largest face, or None.

    With `depth`, (N, 3) with z scaled by the width as MediaPipe defines it (for head poses).
    """
    return [_largest_face(faces) for faces in landmark_faces(frames, model_dirs, max_faces, depth)]


def landmark_faces(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike], max_faces: int = 4,
                   depth: bool = False) -> list[list[np.ndarray]]:
    """Per frame of (batch, H, W, 3) uint8 RGB: every face's (N, 2) (or, with `depth`, (N, 3)) landmark pixels."""
    mp = import_mediapipe()
    from mediapipe.tasks.python import BaseOptions, vision

    path = find_landmarker(model_dirs)
    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                           num_faces=max_faces)
    height, width = frames.shape[1:3]
    out: list[list[np.ndarray]] = []
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for frame in frames:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame.contiguous().numpy()))
            out.append([np.array([[p.x * width, p.y * height] + ([p.z * width] if depth else []) for p in face])
                        for face in result.face_landmarks])
    return out


def detect_landmarks3d(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike]) -> torch.Tensor:
    """(frames, H, W, 3) uint8 -> (frames, N, 3) float64 landmark pixels of the largest face per frame.

    Frames where no face is found take the nearest found frame's landmarks (zero speed there); a video
    with no face at all raises NoFaceError.
    """
    found = detect_landmarks(frames, model_dirs, depth=True)
    have = [i for i, lm in enumerate(found) if lm is not None]
    if not have:
        raise NoFaceError(f"no face found in any of the {len(found)} driving-video frames; use a video that "
                          "shows the face, or a constant or keyframed speed instead")
    if len(have) < len(found):
        log.info("no face in %d of %d driving-video frames; holding the nearest pose there",
                 len(found) - len(have), len(found))
    filled = [found[min(have, key=lambda j: abs(j - i))] for i in range(len(found))]
    return torch.from_numpy(np.stack(filled)).to(torch.float64)


def _largest_face(faces: list[np.ndarray]) -> np.ndarray | None:
    if not faces:
        return None
    areas = [np.prod(f[list(SILHOUETTE_IDS), :2].max(0) - f[list(SILHOUETTE_IDS), :2].min(0)) for f in faces]
    if len(faces) > 1:
        log.info("%d faces with landmarks found; using the largest", len(faces))
    return faces[int(np.argmax(areas))]


def user_mask_boxes(user_mask: torch.Tensor, height: int, width: int, face_expand_ratio: float = 1.2,
                    lip_expand_ratio: float = 2.0,
                    lip_fraction: tuple[float, float, float, float] = LIP_FRACTION) -> tuple[Box, Box]:
    """(face_box, lip_box) for Hallo's masks from a drawn MASK ((H, W) or (frames, H, W), 0..1, >= 0.5 is in).

    Per frame, the box of the mask plays the landmark silhouette box and `lip_fraction` (x0, x1, y0, y1 of
    its width / height) the outer-lip box; each is expanded as in `hallo_masks`, then united over frames.
    With face_expand_ratio=1.0 the face box is the mask box (one pixel less on an odd side: Hallo's
    `expand_region` halves with integer division).
    """
    fx0, fx1, fy0, fy1 = lip_fraction
    if not (0 <= fx0 < fx1 <= 1 and 0 <= fy0 < fy1 <= 1):
        raise InvalidInputError(f"lip_fraction must be (x0, x1, y0, y1) with 0 <= x0 < x1 <= 1 and "
                                f"0 <= y0 < y1 <= 1, got {lip_fraction}")
    faces, lips = [], []
    for b in (b for b in mask_boxes(user_mask, height, width) if b is not None):
        w, h = b.x1 - b.x0, b.y1 - b.y0
        faces.append(expand_region([b.x0, b.x1, b.y0, b.y1], width, height, face_expand_ratio))
        lip = [b.x0 + fx0 * w, b.x0 + fx1 * w, b.y0 + fy0 * h, b.y0 + fy1 * h]
        lips.append(expand_region([round(v) for v in lip], width, height, lip_expand_ratio))
    return union_boxes(faces), union_boxes(lips)


def hallo_masks(images: torch.Tensor, levels: int = 4, face_expand_ratio: float = 1.2,
                lip_expand_ratio: float = 2.0, model_dirs: Sequence[str | os.PathLike] = (),
                user_mask: torch.Tensor | None = None) -> HalloMasks:
    """Hallo's (full, face, lip) masks for a reference image or clip, from MediaPipe face landmarks.

    images: IMAGE (frames, H, W, 3) float 0..1. Returns per level (frames, h_l * w_l) float32 0..1, the
    same mask on every frame (boxes united over the frames, as Hallo's `get_union_*_mask`).
    user_mask: optional MASK (H, W) or (frames, H, W) 0..1 replacing the landmarks (`user_mask_boxes`),
    for faces the landmarker misses.
    """
    frames = to_uint8_frames(images)
    count, height, width = frames.shape[:3]
    if user_mask is not None:
        face_box, lip_box = user_mask_boxes(user_mask, height, width, face_expand_ratio, lip_expand_ratio)
        log.info("Hallo masks from the drawn face mask on %dx%d: face box %s, lip box %s", width, height,
                 face_box, lip_box)
        return masks_from_boxes(face_box, lip_box, height, width, levels, frames=count)
    found = [p for p in detect_landmarks(frames, model_dirs) if p is not None]
    if not found:
        raise NoFaceError(f"no face landmarks found in the image ({width}x{height}) for Hallo's face/lip "
                          f"masks; draw a face mask and connect it to 'face_mask' instead (or use a clearer "
                          f"frontal face photo)")
    if len(found) < count:
        log.warning("no face landmarks in %d of %d frames; masks use the others", count - len(found), count)
    face_box = union_boxes([landmark_box(p, SILHOUETTE_IDS, width, height, face_expand_ratio) for p in found])
    lip_box = union_boxes([landmark_box(p, LIP_IDS, width, height, lip_expand_ratio) for p in found])
    log.info("Hallo masks over %d frame(s) of %dx%d: face box %s, lip box %s, levels %s", count, width, height,
             face_box, lip_box, level_sizes(height, width, levels))
    return masks_from_boxes(face_box, lip_box, height, width, levels, frames=count)

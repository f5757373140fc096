"""Face-identity embedding for Hallo checkpoints: insightface's ArcFace (w600k_r50.onnx) on onnxruntime.

Hallo (hallo/datasets/image_processor.py) feeds its identity projection (`EmoNet.identity_tokens`) the raw,
not L2-normalised, 512-d embedding that insightface's buffalo_l pack gives for the largest face of the
reference image. insightface computes it (model_zoo/arcface_onnx.py, utils/face_align.py) as:

1. five keypoints (eye on the image's left, eye on the image's right, nose tip, mouth corner on the
   image's left, mouth corner on the image's right) in image pixels;
2. a similarity transform (rotation, uniform scale, translation; no reflection; Umeyama least squares,
   skimage `SimilarityTransform.estimate`) from them onto `ARCFACE_TEMPLATE`, then a bilinear
   `cv2.warpAffine` to a 112x112 uint8 crop, zeros outside the image;
3. `cv2.dnn.blobFromImages(crop, 1/127.5, (112, 112), (127.5,)*3, swapRB=True)`: NCHW float32 RGB,
   (x - 127.5) / 127.5; the session output flattened to 512 values.

Deviations: the keypoints come from our MediaPipe face landmarker (`KEYPOINT_IDS`, mesh points only, so
the CI bundle without irises works too) instead of insightface's SCRFD detector; the largest face is the
one whose silhouette box is largest (`face_hallo.detect_landmarks`); the warp is torch `grid_sample`
(float64, then rounded to uint8 as cv2 does) instead of cv2's 1/32-pixel fixed-point warp; on the test
portrait the two crops differ by one grey level on 2 of 37632 values.

Without the model file there is no embedding: pass None to `EmoNet.identity_tokens`, which warns and uses
Hallo's unconditional identity tokens (identity fidelity drops). onnxruntime is optional
(`pip install "comfyui-emo[identity]"`) and imported only when a model is loaded.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import (IncompatibleCheckpointError, InvalidConfigError, InvalidInputError, MissingDependencyError,
                     MissingWeightsError)
from .face import NoFaceError, to_uint8_frames
from .face_hallo import detect_landmarks

log = logging.getLogger(__name__)

RECOGNITION_NAMES = ("w600k_r50.onnx",)
# Relative to the ComfyUI models folder: where insightface's FaceAnalysis (and IP-Adapter FaceID, InstantID
# nodes) keep the buffalo_l pack, then our own folder.
CONVENTIONAL_SUBDIRS = ("insightface/models/buffalo_l", "emo/insightface")
OBTAIN_HINT = ("it is the recognition model of insightface's buffalo_l pack (buffalo_l.zip from the "
               "insightface model zoo, unpacked to <ComfyUI>/models/insightface/models/buffalo_l)")
ONNXRUNTIME_HINT = 'pip install "comfyui-emo[identity]" (or pip install onnxruntime)'

# insightface's `arcface_dst`: where the five keypoints sit in the 112x112 crop (x right, y down).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ARCFACE_SIZE = 112
# MediaPipe Face Mesh indices averaged into insightface's five keypoints, in insightface's order. The
# subject's right eye (33 outer, 133 inner corner) is on the image's left. The corner mean stands in for
# SCRFD's pupil point; the iris landmarks (468+) are absent from mesh-only bundles.
KEYPOINT_IDS: tuple[tuple[int, ...], ...] = ((33, 133), (362, 263), (1,), (61,), (291,))


@dataclass(frozen=True)
class EmbedderConfig:
    """What the recognition model expects: pixel normalisation (x - mean) / std and the embedding width.

    127.5 / 127.5 is insightface's choice for w600k_r50 (and every PyTorch-exported ArcFace); old MXNet
    exports that normalise inside the graph need mean 0, std 1.
    """
    input_mean: float = 127.5
    input_std: float = 127.5
    embedding_dim: int = 512

    def validate(self) -> "EmbedderConfig":
        if not self.input_std > 0:
            raise InvalidConfigError(f"input_std must be > 0, got {self.input_std}")
        if self.embedding_dim < 1:
            raise InvalidConfigError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        return self


# -- model file ------------------------------------------------------------------------------------------

def embedder_search_dirs(dirs: Iterable[str | os.PathLike] = (),
                         models_root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched, in order: `dirs`, then `CONVENTIONAL_SUBDIRS` under the ComfyUI `models_root`."""
    out = [Path(d) for d in dirs]
    if models_root is not None:
        out += [Path(models_root) / sub for sub in CONVENTIONAL_SUBDIRS]
    return out


def find_face_embedder(dirs: Iterable[str | os.PathLike] = (),
                       models_root: str | os.PathLike | None = None) -> Path:
    """Path of the ArcFace recognition model.

    dirs: folders searched for `RECOGNITION_NAMES`; an entry ending in ``.onnx`` is taken as the model file
    itself (any name). models_root: the ComfyUI models folder, adding `CONVENTIONAL_SUBDIRS`.
    """
    searched = embedder_search_dirs(dirs, models_root)
    for entry in searched:
        if entry.suffix.lower() == ".onnx":
            if entry.is_file():
                return entry
            raise MissingWeightsError(f"face-identity model {entry} does not exist; check the path ({OBTAIN_HINT})")
        for name in RECOGNITION_NAMES:
            if (entry / name).is_file():
                log.debug("face-identity model: using %s", entry / name)
                return entry / name
    where = ", ".join(str(d) for d in searched) or "(no folder given)"
    raise MissingWeightsError(
        f"face-identity model {' or '.join(RECOGNITION_NAMES)} not found in {where}; {OBTAIN_HINT} (or "
        f"`emo-models fetch --family hallo --with identity` fetches glintr100.onnx, the one Hallo ships; pick it "
        f"on EMO Face Embedder Loader). Without "
        f"it Hallo runs with its unconditional identity tokens and identity fidelity drops")


def import_onnxruntime():
    """The onnxruntime module, or MissingDependencyError naming the package."""
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(f"the face-identity embedding runs on onnxruntime; {ONNXRUNTIME_HINT}") from err
    return onnxruntime


# -- keypoints and alignment -----------------------------------------------------------------------------

def keypoints_from_landmarks(points: np.ndarray) -> np.ndarray:
    """MediaPipe face landmarks (N >= 468, 2) pixels -> insightface's five keypoints (5, 2) float64 pixels."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 468 or points.shape[1] < 2:
        raise InvalidInputError(f"expected MediaPipe face landmarks (468 or 478, 2), got {points.shape}")
    return np.stack([points[list(ids), :2].mean(0) for ids in KEYPOINT_IDS])


def detect_keypoints(image: np.ndarray | torch.Tensor, model_dirs: Sequence[str | os.PathLike]) -> np.ndarray:
    """Five keypoints (5, 2) float64 pixels of the largest face in one (H, W, 3) uint8 RGB image.

    model_dirs: folders holding the MediaPipe face landmarker (see `face_models`). No face: NoFaceError.
    """
    frame = torch.as_tensor(np.ascontiguousarray(image))
    points = detect_landmarks(frame.unsqueeze(0), model_dirs)[0]
    if points is None:
        height, width = frame.shape[:2]
        raise NoFaceError(f"no face found in the reference image ({width}x{height}) for the face-identity "
                          f"embedding; use a clearer frontal face photo, or run without the identity model "
                          f"(Hallo then uses its unconditional identity tokens)")
    return keypoints_from_landmarks(points)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) float64 matrix M of the least-squares similarity (no reflection) taking src (N, 2) to dst (N, 2).

    Umeyama (1991), as skimage's SimilarityTransform.estimate: dst ~ M[:, :2] @ src + M[:, 2].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise InvalidInputError(f"need matching point sets (N >= 2, 2), got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / len(src)
    if src_var < 1e-12:
        raise InvalidInputError(f"keypoints coincide ({src.tolist()}); no face alignment possible")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # flip to stay a rotation
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


def align_face(image: np.ndarray, keypoints: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface's `norm_crop`: (H, W, 3) uint8 image -> (size, size, 3) uint8 crop, keypoints on the template.

    Bilinear, pixel centres at integer coordinates (cv2's convention), zeros outside the image.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
        raise InvalidInputError(f"expected an (H, W, 3) image of at least 2x2 pixels, got {image.shape}")
    matrix = similarity_transform(keypoints, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    source = np.einsum("ij,hwj->hwi", inverse, np.stack([xs, ys, np.ones_like(xs)], -1))
    height, width = image.shape[:2]
    grid = torch.from_numpy(2 * source / np.array([width - 1, height - 1]) - 1)  # align_corners=True
    pixels = torch.from_numpy(image).to(torch.float64).permute(2, 0, 1).unsqueeze(0)
    warped = torch.nn.functional.grid_sample(pixels, grid.unsqueeze(0), mode="bilinear", padding_mode="zeros",
                                             align_corners=True)
    return warped[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def first_image_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """RGB uint8 (H, W, 3) array, or IMAGE (B, H, W, 3) / (H, W, 3) float 0..1 tensor -> (H, W, 3) uint8."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputError(f"expected an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image)
    frames = to_uint8_frames(image)
    if frames.shape[0] > 1:
        log.info("face-identity embedding: %d images given, using the first", frames.shape[0])
    return frames[0].numpy()


# -- the recognition model -------------------------------------------------------------------------------

class FaceEmbedder:
    """insightface's ArcFace recognition model on onnxruntime: face image -> identity embedding.

    path: the ``.onnx`` file (see `find_face_embedder`). providers: onnxruntime execution providers,
    default CPU (one 112x112 face per reference image does not need a GPU).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 config: EmbedderConfig = EmbedderConfig()):
        self.path, self.config = Path(path), config.validate()
        if not self.path.is_file():
            raise MissingWeightsError(f"face-identity model {self.path} does not exist; {OBTAIN_HINT}")
        ort = import_onnxruntime()
        providers = list(providers or ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # onnxruntime's load errors share no base class below Exception
            raise IncompatibleCheckpointError(f"{self.path} is not a model onnxruntime can load ({err}); expected "
                                              f"insightface's ArcFace {RECOGNITION_NAMES[0]}") from err
        self.input_name = self._check_signature()
        log.info("face-identity model %s loaded (providers %s)", self.path, self.session.get_providers())

    def _check_signature(self) -> str:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        seen = (f"inputs {[(i.name, i.shape, i.type) for i in inputs]}, "
                f"outputs {[(o.name, o.shape, o.type) for o in outputs]}")
        shape = inputs[0].shape if len(inputs) == 1 else []
        out = outputs[0].shape if len(outputs) == 1 else None
        ok = (len(shape) == 4 and list(shape[1:]) == [3, ARCFACE_SIZE, ARCFACE_SIZE]
              and inputs[0].type == "tensor(float)" and out is not None
              and _static_size(out[1:]) in (None, self.config.embedding_dim))
        if not ok:
            raise IncompatibleCheckpointError(
                f"{self.path.name} is not a {ARCFACE_SIZE}x{ARCFACE_SIZE} face -> {self.config.embedding_dim}-d "
                f"recognition model: it has {seen}; expected one float input (batch, 3, {ARCFACE_SIZE}, "
                f"{ARCFACE_SIZE}) and one output (batch, {self.config.embedding_dim}), as in insightface's "
                f"{RECOGNITION_NAMES[0]}")
        return inputs[0].name

    def preprocess(self, crop: np.ndarray) -> np.ndarray:
        """(112, 112, 3) uint8 RGB crop -> (1, 3, 112, 112) float32, (x - mean) / std: the session input."""
        if crop.shape != (ARCFACE_SIZE, ARCFACE_SIZE, 3):
            raise InvalidInputError(f"aligned face crop must be ({ARCFACE_SIZE}, {ARCFACE_SIZE}, 3), got {crop.shape}")
        # cv2.dnn.blobFromImages subtracts the mean, then multiplies by the scale factor 1 / std
        blob = (crop.astype(np.float32) - np.float32(self.config.input_mean)) * np.float32(1 / self.config.input_std)
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])

    def embed_aligned(self, crop: np.ndarray) -> torch.Tensor:
        """Aligned (112, 112, 3) uint8 RGB crop -> raw embedding (1, embedding_dim) float32 on the CPU."""
        output = self.session.run(None, {self.input_name: self.preprocess(crop)})[0]
        if output.size != self.config.embedding_dim:
            raise IncompatibleCheckpointError(f"{self.path.name} gave an output of shape {output.shape}, expected "
                                              f"{self.config.embedding_dim} values")
        return torch.from_numpy(np.asarray(output, dtype=np.float32).reshape(1, -1).copy())

    def embed(self, image: np.ndarray | torch.Tensor, landmark_dirs: Sequence[str | os.PathLike] = (),
              keypoints: np.ndarray | None = None) -> torch.Tensor:
        """Hallo's face embedding of the largest face: (1, embedding_dim) float32 CPU, raw (not normalised).

        image: RGB uint8 (H, W, 3) numpy array, or a ComfyUI IMAGE (B, H, W, 3) float 0..1 tensor (the first
        image is used). keypoints: optional (5, 2) pixels in insightface's order, replacing detection;
        otherwise MediaPipe's landmarker from `landmark_dirs` finds them. The batch of one feeds
        `EmoNet.identity_tokens(embedding)` directly.
        """
        start = time.perf_counter()
        frame = first_image_uint8(image)
        points = detect_keypoints(frame, landmark_dirs) if keypoints is None else np.asarray(keypoints, np.float64)
        if points.shape != (5, 2):
            raise InvalidInputError(f"keypoints must be (5, 2) pixels, got {points.shape}")
        embedding = self.embed_aligned(align_face(frame, points))
        log.debug("face embedding in %.3f s, keypoints %s", time.perf_counter() - start, points.round(1).tolist())
        return embedding


def _static_size(dims: Sequence) -> int | None:
    """Product of dims, or None when one is symbolic (checked on the first run instead)."""
    if not all(isinstance(d, int) for d in dims):
        return None
    return int(np.prod(dims)) if dims else 1

"""Face track of one training video: per-frame face box and 3D landmarks of its one speaker, and head speed.

The detector's candidates are confirmed as `emo_core.face.detect_frame_boxes` does (score and keypoints
by `face_confirm`, then the face landmarker's own presence check), except that the landmarker runs once with
depth and its landmarks also give the head pose, so each frame is searched by each model once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..face import CANDIDATE_SCORE, FaceBox, detect_face_boxes_batch, same_face
from ..face_confirm import MIN_FACE_SCORE, confirmed
from ..face_hallo import landmark_faces
from ..speed_pose import MEDIAPIPE_RIGID_LANDMARKS, speed_from_landmarks
from .prepare_media import SkipVideo

log = logging.getLogger(__name__)

MIN_FACE_FRAMES = 0.5      # a face in fewer frames than this share: the speaker is mostly off screen
SEVERAL_FACES_FRAMES = 0.25  # two or more faces in this share of frames: whose voice it is is unknown
SPEED_SMOOTHING = 5        # frames; as the EMO Speed From Video node's default


@dataclass(frozen=True)
class FaceTrack:
    """boxes: per frame the speaker's face box in pixels (frames with no face take the nearest found one).
    speed: (frames,) float64 head rotation speed in rad/s. found: frames where a face was seen."""
    boxes: tuple[FaceBox, ...]
    speed: torch.Tensor
    found: int


def track_face(frames: torch.Tensor, fps: float, model_dirs: Sequence[str | os.PathLike],
               name: str = "the video") -> FaceTrack:
    """(frames, H, W, 3) uint8 RGB at `fps` -> FaceTrack; SkipVideo "no_face" / "several_faces"."""
    count, height, width = frames.shape[:3]
    faces = detect_face_boxes_batch(frames, model_dirs, min(MIN_FACE_SCORE, CANDIDATE_SCORE))
    marks = landmark_faces(frames, model_dirs, depth=True)
    boxes: list[FaceBox | None] = []
    points: list[np.ndarray | None] = []
    several = 0
    for candidates, landmarks in zip(faces, marks):
        good, _ = confirmed(candidates, width, height, MIN_FACE_SCORE)
        pairs = [(b, lm) for b in good for lm in landmarks if same_face(b, lm)]
        several += len({id(b) for b, _ in pairs}) > 1
        best = max(pairs, key=lambda p: p[0].area, default=(None, None))
        boxes.append(best[0])
        points.append(best[1])
    have = [i for i, b in enumerate(boxes) if b is not None]
    if len(have) < MIN_FACE_FRAMES * count:
        raise SkipVideo("no_face", f"{name}: a face in {len(have)} of {count} frames (need "
                                   f"{MIN_FACE_FRAMES:.0%})")
    if several > SEVERAL_FACES_FRAMES * count:
        raise SkipVideo("several_faces", f"{name}: several faces in {several} of {count} frames (at most "
                                         f"{SEVERAL_FACES_FRAMES:.0%} allowed)")
    nearest = [min(have, key=lambda j: abs(j - i)) for i in range(count)]
    landmarks = torch.from_numpy(np.stack([points[j] for j in nearest])).to(torch.float64)
    speed = speed_from_landmarks(landmarks, fps, landmark_indices=MEDIAPIPE_RIGID_LANDMARKS,
                                 smoothing=SPEED_SMOOTHING)
    return FaceTrack(tuple(boxes[j] for j in nearest), speed, len(have))

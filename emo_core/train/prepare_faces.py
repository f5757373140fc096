"""Face track of one training video: per-frame face box and 3D landmarks of its one speaker, and head speed.

The detector's candidates are confirmed as `emo_core.face.detect_frame_boxes` does (score and keypoints
by `face_confirm`, then the face landmarker's own presence check), except that the landmarker runs once with
depth and its landmarks also give the head pose, so each frame is searched by each model once.
"""
from __future__ import annotations

import bisect
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
RIGID = list(MEDIAPIPE_RIGID_LANDMARKS)


@dataclass(frozen=True)
class FaceTrack:
    """boxes: per frame the speaker's face box in pixels (frames with no face take the nearest found one).
    speed: (frames,) float64 head rotation speed in rad/s. found: frames where a face was seen."""
    boxes: tuple[FaceBox, ...]
    speed: torch.Tensor
    found: int


@dataclass(frozen=True)
class FrameFaces:
    """What one frame shows: the speaker's confirmed face box and its rigid landmarks (MEDIAPIPE_RIGID_LANDMARKS,
    (30, 3) pixels: all the pose needs, so a long video's track stays small), None when no face is confirmed,
    and whether two or more faces were confirmed."""
    box: FaceBox | None
    points: np.ndarray | None
    several: bool


def detect_faces(frames: torch.Tensor, model_dirs: Sequence[str | os.PathLike]) -> list[FrameFaces]:
    """(frames, H, W, 3) uint8 RGB -> per frame FrameFaces. Frame by frame (MediaPipe's image mode keeps no
    state between frames), so a video can be searched in chunks with the same result as at once."""
    height, width = frames.shape[1:3]
    faces = detect_face_boxes_batch(frames, model_dirs, min(MIN_FACE_SCORE, CANDIDATE_SCORE))
    marks = landmark_faces(frames, model_dirs, depth=True)
    out = []
    for candidates, landmarks in zip(faces, marks):
        good, _ = confirmed(candidates, width, height, MIN_FACE_SCORE)
        pairs = [(b, lm) for b in good for lm in landmarks if same_face(b, lm)]
        box, points = max(pairs, key=lambda p: p[0].area, default=(None, None))
        rigid = None if points is None else np.ascontiguousarray(points[RIGID])
        out.append(FrameFaces(box, rigid, len({id(b) for b, _ in pairs}) > 1))
    return out


def nearest_found(have: Sequence[int], count: int) -> list[int]:
    """For each frame of [0, count), the nearest of the sorted frame numbers `have` (the earlier on a tie),
    by bisection: a linear search per frame is quadratic in the length of the video."""
    out = []
    for i in range(count):
        pos = bisect.bisect_left(have, i)
        before, after = have[max(pos - 1, 0)], have[min(pos, len(have) - 1)]
        out.append(after if abs(after - i) < abs(i - before) else before)
    return out


def finish_track(faces: Sequence[FrameFaces], fps: float, name: str = "the video") -> FaceTrack:
    """Per-frame FrameFaces of a whole video at `fps` -> FaceTrack; SkipVideo "no_face" / "several_faces"."""
    count = len(faces)
    have = [i for i, f in enumerate(faces) if f.box is not None]
    several = sum(f.several for f in faces)
    if len(have) < MIN_FACE_FRAMES * count:
        raise SkipVideo("no_face", f"{name}: a face in {len(have)} of {count} frames (need "
                                   f"{MIN_FACE_FRAMES:.0%})")
    if several > SEVERAL_FACES_FRAMES * count:
        raise SkipVideo("several_faces", f"{name}: several faces in {several} of {count} frames (at most "
                                         f"{SEVERAL_FACES_FRAMES:.0%} allowed)")
    nearest = nearest_found(have, count)
    landmarks = torch.from_numpy(np.stack([faces[j].points for j in nearest])).to(torch.float64)
    speed = speed_from_landmarks(landmarks, fps, smoothing=SPEED_SMOOTHING)  # already the rigid subset
    return FaceTrack(tuple(faces[j].box for j in nearest), speed, len(have))


def track_face(frames: torch.Tensor, fps: float, model_dirs: Sequence[str | os.PathLike],
               name: str = "the video") -> FaceTrack:
    """(frames, H, W, 3) uint8 RGB at `fps` -> FaceTrack; SkipVideo "no_face" / "several_faces"."""
    return finish_track(detect_faces(frames, model_dirs), fps, name)

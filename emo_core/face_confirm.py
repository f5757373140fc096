"""Is a face detection a face? MediaPipe's BlazeFace boxes an animal, a drawing or a pattern now and then
(a cat photo: a box over 80% of the image), and EMO then animates it without a word. A detection is used
only when its score and its six keypoints look like a human face that EMO / Hallo can animate, and (where
`face_landmarker.task` is installed) the face landmarker finds a face there too (`face.detect_frame_boxes`).
The landmarker is the strongest check: BlazeFace regresses its keypoints from a face template, so they keep
a face's layout even on noise, while the 468-point mesh model has its own face-presence score.

Keypoints (MediaPipe FaceDetector order): right eye, left eye, nose tip, mouth centre, right ear tragion,
left ear tragion; "right" is the subject's, at the smaller x on a frontal photo. Geometry is measured in the
face's own frame: x along the eye axis, y perpendicular to it (down the face), in units of the eye distance,
so it holds at any size and for heads tilted up to `MAX_ROLL_DEG`.

Measured on the test portrait (512 px, and 128 px): score 0.94 / 0.91, eye distance 0.43 / 0.41 of the box
width, mouth 1.06 and nose 0.62 eye distances below the eyes, roll 4 deg, box 15% of the image. Every limit
below leaves at least a factor ~1.5 of room around those values.
"""
from __future__ import annotations

import math
from typing import Sequence

MIN_FACE_SCORE = 0.5  # BlazeFace's own default; the no-face test image peaks at 0.24, the portrait at 0.94
MAX_ROLL_DEG = 50.0  # eye axis against the horizontal; beyond, the detector's keypoints are unreliable
EYE_TO_BOX = (0.2, 0.75)  # eye distance / box width: below 0.2 is a profile (no lip sync), above no face
MOUTH_BELOW_EYES = (0.5, 1.9)  # mouth centre below the eye line, in eye distances (portrait: 1.06)
MAX_MOUTH_SIDEWAYS = 0.8  # mouth centre's offset from the eyes' midpoint along the eye axis (portrait: 0.08)
KEYPOINT_MARGIN = 0.25  # keypoints may lie this fraction of the box size outside it (ears at its edges)
MAX_BOX_AREA = 0.6  # face box / image area; a closer crop than any EMO/Hallo training frame (portrait: 0.15)

Point = tuple[float, float]


def face_problem(box, width: int, height: int, min_score: float = MIN_FACE_SCORE) -> str | None:
    """Why `box` (face.FaceDetection: score and 6 keypoints in pixels) is not a usable face, or None."""
    if box.score < min_score:
        return f"the best candidate scored {box.score:.2f}, a face needs {min_score}"
    bw, bh = box.x1 - box.x0, box.y1 - box.y0
    if bw * bh > MAX_BOX_AREA * width * height:
        return (f"the candidate box covers {bw * bh / (width * height):.0%} of the image (a face covers at most "
                f"{MAX_BOX_AREA:.0%}, so crop wider if it is a close-up)")
    if len(getattr(box, "keypoints", ())) < 4:
        return "the candidate has no eye, nose and mouth keypoints"
    return _keypoint_problem(box, bw, bh)


def _keypoint_problem(box, bw: float, bh: float) -> str | None:
    points = box.keypoints
    right, left, nose, mouth = points[:4]
    ex, ey = left[0] - right[0], left[1] - right[1]
    eyes = math.hypot(ex, ey)
    if not EYE_TO_BOX[0] <= eyes / max(bw, 1e-6) <= EYE_TO_BOX[1]:
        return f"the candidate's eye distance is {eyes / max(bw, 1e-6):.2f} of its width (a face: {EYE_TO_BOX})"
    mx, my = KEYPOINT_MARGIN * bw, KEYPOINT_MARGIN * bh
    if any(not (box.x0 - mx <= x <= box.x1 + mx and box.y0 - my <= y <= box.y1 + my) for x, y in points):
        return "the candidate's eyes, nose or mouth lie outside its box"
    roll = math.degrees(math.atan2(ey, ex))
    if abs(roll) > MAX_ROLL_DEG:
        return f"the candidate's eyes are tilted {roll:.0f} degrees (at most {MAX_ROLL_DEG:.0f}: is it upside down?)"
    mouth_side, mouth_down = _face_frame(mouth, right, left)
    _, nose_down = _face_frame(nose, right, left)
    if not MOUTH_BELOW_EYES[0] <= mouth_down <= MOUTH_BELOW_EYES[1] or not 0 < nose_down < mouth_down:
        return (f"the candidate's mouth is {mouth_down:.2f} eye distances below its eyes and its nose "
                f"{nose_down:.2f} (a face: mouth {MOUTH_BELOW_EYES}, nose between)")
    if abs(mouth_side) > MAX_MOUTH_SIDEWAYS:
        return f"the candidate's mouth is {abs(mouth_side):.2f} eye distances to the side of its eyes"
    return None


def _face_frame(p: Point, right: Point, left: Point) -> tuple[float, float]:
    """(along the eye axis, down the face) of p from the eyes' midpoint, in eye distances."""
    ex, ey = left[0] - right[0], left[1] - right[1]
    d2 = ex * ex + ey * ey or 1e-12
    px, py = p[0] - (left[0] + right[0]) / 2, p[1] - (left[1] + right[1]) / 2
    # (-ey, ex) is the eye axis turned 90 degrees towards +y (down) for an upright face.
    return (px * ex + py * ey) / d2, (-px * ey + py * ex) / d2


def confirmed(boxes: Sequence, width: int, height: int,
              min_score: float = MIN_FACE_SCORE) -> tuple[list, str | None]:
    """(the boxes that are faces, why the first other one (best scored) was refused, or None)."""
    good, why = [], None
    for box in boxes:
        problem = face_problem(box, width, height, min_score)
        if problem is None:
            good.append(box)
        elif why is None:
            why = problem
    return good, why

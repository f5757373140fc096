"""A detection is used as a face only when its score, its keypoints and the face landmarker agree; every
refusal names the 'face_mask' input. Geometry rules are checked on synthetic keypoints around each limit;
the real detector and landmarker on the fixtures, synthetic drawings and a faked false positive."""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from emo_core import face as face_module
from emo_core import face_confirm as fc
from emo_core.face import FaceDetection, NoFaceError, detect_face_boxes, face_region
from emo_core.face_hallo import hallo_masks
from emo_core.face_models import find_detector

from conftest import SHARED, load_pack, mediapipe_missing, tiny_emo_config

FIXTURES = SHARED / "fixtures"
PORTRAIT, NOFACE = FIXTURES / "portrait_astronaut_512.png", FIXTURES / "noface_coffee_512.png"
SIZE = 512

# A frontal face in eye-distance units about the eyes' midpoint (x right, y down), as BlazeFace lays it out:
# right eye, left eye, nose tip, mouth centre, right ear, left ear; box x -1.17..1.17, y -0.69..1.65.
LAYOUT = [(-0.5, 0.0), (0.5, 0.0), (0.0, 0.6), (0.0, 1.05), (-1.0, 0.1), (1.0, 0.1)]
BOX = (-1.17, -0.69, 1.17, 1.65)


def synthetic(eyes=86.0, roll=0.0, score=0.9, centre=(256.0, 220.0), layout=LAYOUT, box_scale=1.0):
    """A FaceDetection with LAYOUT rotated by `roll` degrees and scaled to `eyes` pixels between the eyes."""
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    points = [(centre[0] + eyes * (x * c - y * s), centre[1] + eyes * (x * s + y * c)) for x, y in layout]
    mid_y = (BOX[1] + BOX[3]) / 2
    bx = centre[0] - eyes * mid_y * s  # the box centre turns with the face; the box itself stays upright
    by = centre[1] + eyes * mid_y * c
    half_w, half_h = eyes * box_scale * (BOX[2] - BOX[0]) / 2, eyes * box_scale * (BOX[3] - BOX[1]) / 2
    return FaceDetection(bx - half_w, by - half_h, bx + half_w, by + half_h, score, points)


def problem(box):
    return fc.face_problem(box, SIZE, SIZE)


# --- geometry rules, each tested just inside and just outside its limit ------------------------------------
@pytest.mark.parametrize("eyes", [40.0, 86.0, 160.0])
@pytest.mark.parametrize("roll", [-0.8 * fc.MAX_ROLL_DEG, 0.0, 0.8 * fc.MAX_ROLL_DEG])
def test_a_face_at_any_size_and_moderate_tilt_passes(eyes, roll):
    assert problem(synthetic(eyes=eyes, roll=roll)) is None


@pytest.mark.parametrize("box, says", [
    (synthetic(score=fc.MIN_FACE_SCORE * 0.8), "scored"),
    (synthetic(roll=1.2 * fc.MAX_ROLL_DEG), "tilted"),
    (synthetic(roll=180.0), "upside down"),
    (synthetic(eyes=SIZE * 0.9 * math.sqrt(fc.MAX_BOX_AREA * 1.3) / 2.34), "covers"),
    (synthetic(box_scale=1.0 / (fc.EYE_TO_BOX[1] * 1.2 * 2.34)), "eye distance"),
    (synthetic(eyes=30.0, box_scale=1.0 / (fc.EYE_TO_BOX[0] * 0.8 * 2.34)), "eye distance"),
    (synthetic(layout=[(-0.5, 0), (0.5, 0), (0, -0.3), (0, -0.6), (-1, 0.1), (1, 0.1)]), "mouth"),
    (synthetic(layout=[(-0.5, 0), (0.5, 0), (0, 1.2), (0, 1.0), (-1, 0.1), (1, 0.1)]), "nose"),
    (synthetic(layout=[(-0.5, 0), (0.5, 0), (0, 0.6), (0, fc.MOUTH_BELOW_EYES[1] * 1.2), (-1, 0.1), (1, 0.1)]),
     "mouth"),
    (synthetic(layout=[(-0.5, 0), (0.5, 0), (0.3, 0.6), (fc.MAX_MOUTH_SIDEWAYS * 1.3, 1.0), (-1, 0.1), (1, 0.1)]),
     "to the side"),
    (synthetic(layout=[(-0.5, 0), (0.5, 0), (0, 0.6), (0, 1.05), (-1, 0.1), (4.0, 0.1)]), "outside its box"),
    (FaceDetection(100, 100, 300, 300, 0.9, ()), "no eye, nose and mouth keypoints"),
])
def test_each_rule_refuses_with_its_reason(box, says):
    assert says in (problem(box) or "accepted")


# --- the real detector and landmarker ----------------------------------------------------------------------
def _image(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).float()[None] / 255


def _portrait() -> Image.Image:
    if not PORTRAIT.is_file():
        mediapipe_missing(f"fixture image {PORTRAIT} not found")
    return Image.open(PORTRAIT).convert("RGB")


def _measures(box, width, height):
    right, left, nose, mouth = box.keypoints[:4]
    eyes = math.dist(right, left)
    side, down = fc._face_frame(mouth, right, left)
    return {"score": box.score, "area": (box.x1 - box.x0) * (box.y1 - box.y0) / (width * height),
            "eye_to_box": eyes / (box.x1 - box.x0), "roll": abs(math.degrees(math.atan2(left[1] - right[1],
                                                                                         left[0] - right[0]))),
            "mouth": down, "side": abs(side), "nose": fc._face_frame(nose, right, left)[1]}


@pytest.mark.parametrize("size, roll", [(512, 0), (128, 0), (512, 25), (512, -25)])
def test_the_portrait_passes_with_room_to_spare(model_dirs, size, roll):
    img = _portrait().rotate(roll, resample=Image.BICUBIC, fillcolor=(128, 128, 128)).resize((size, size))
    frames = (_image(img) * 255).round().to(torch.uint8)
    best = detect_face_boxes(frames[0], model_dirs)[0]
    m = _measures(best, size, size)
    # Margins: a detector update that moves a measure by a third of its distance to a limit still passes.
    assert m["score"] >= fc.MIN_FACE_SCORE + 0.2
    assert m["area"] <= fc.MAX_BOX_AREA / 2
    assert fc.EYE_TO_BOX[0] * 1.5 <= m["eye_to_box"] <= fc.EYE_TO_BOX[1] / 1.5
    assert m["roll"] <= fc.MAX_ROLL_DEG - 15
    assert fc.MOUTH_BELOW_EYES[0] * 1.5 <= m["mouth"] <= fc.MOUTH_BELOW_EYES[1] / 1.5 and 0 < m["nose"] < m["mouth"]
    assert m["side"] <= fc.MAX_MOUTH_SIDEWAYS / 2
    region = face_region(_image(img), model_dirs=model_dirs)
    assert region.source == "detector" and region.frame_boxes[0] is not None


def _drawings() -> dict[str, Image.Image]:
    """Face-like drawings that are not human faces: a cartoon cat, a smiley, and noise."""
    cat = Image.new("RGB", (SIZE, SIZE), (200, 190, 170))
    d = ImageDraw.Draw(cat)
    d.ellipse((56, 96, 456, 476), fill=(150, 110, 70))
    d.polygon([(80, 200), (120, 40), (220, 130)], fill=(150, 110, 70))
    d.polygon([(432, 200), (392, 40), (292, 130)], fill=(150, 110, 70))
    for x in (150, 282):
        d.ellipse((x, 220, x + 80, 290), fill=(230, 220, 60))
        d.ellipse((x + 30, 230, x + 50, 285), fill=(0, 0, 0))
    d.polygon([(236, 320), (276, 320), (256, 345)], fill=(220, 120, 140))
    for y in (330, 345, 360):
        d.line([(120, y - 10), (220, y)], fill=(255, 255, 255), width=2)
        d.line([(292, y), (392, y - 10)], fill=(255, 255, 255), width=2)
    smiley = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    d = ImageDraw.Draw(smiley)
    d.ellipse((56, 56, 456, 456), fill=(255, 220, 0))
    d.ellipse((170, 170, 220, 240), fill=(0, 0, 0))
    d.ellipse((292, 170, 342, 240), fill=(0, 0, 0))
    d.arc((150, 220, 362, 380), 20, 160, fill=(0, 0, 0), width=12)
    noise = Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    return {"cat": cat, "smiley": smiley, "noise": noise}


@pytest.mark.parametrize("name", ["cat", "smiley", "noise", "noface_fixture"])
def test_non_faces_are_refused_naming_the_face_mask_input(model_dirs, name):
    img = Image.open(NOFACE).convert("RGB") if name == "noface_fixture" else _drawings()[name]
    with pytest.raises(NoFaceError, match="'face_mask'"):
        face_region(_image(img), model_dirs=model_dirs)
    with pytest.raises(NoFaceError, match="'face_mask'"):
        hallo_masks(_image(img), model_dirs=model_dirs)


def _fake_detection(monkeypatch, box):
    """The detector 'finds' `box` on every frame, as BlazeFace did on a cat photo."""
    monkeypatch.setattr(face_module, "detect_face_boxes_batch", lambda frames, dirs, score: [[box]] * len(frames))


def test_a_confident_face_shaped_detection_without_landmarks_is_refused(model_dirs, monkeypatch):
    _fake_detection(monkeypatch, synthetic(score=0.93))  # passes every score and geometry rule
    assert problem(synthetic(score=0.93)) is None
    with pytest.raises(NoFaceError, match="landmarker finds no face.*'face_mask'"):
        face_region(_image(Image.open(NOFACE)), model_dirs=model_dirs)


def test_a_box_over_most_of_the_image_is_refused(model_dirs, monkeypatch):
    cat = synthetic(eyes=SIZE * 0.8 / 2.34, centre=(256.0, 130.0), score=0.8)  # ~80% of the image, as reported
    _fake_detection(monkeypatch, cat)
    with pytest.raises(NoFaceError, match="covers .* of the image.*'face_mask'"):
        face_region(_image(_portrait()), model_dirs=model_dirs)


def test_without_the_landmarker_score_and_keypoints_still_decide(model_dirs, tmp_path, caplog):
    only = tmp_path / "detector_only"
    only.mkdir()
    detector = find_detector(model_dirs)
    os.symlink(detector, only / detector.name)
    with caplog.at_level(logging.WARNING, logger="emo_core.face"):
        region = face_region(_image(_portrait()), model_dirs=[only])
    assert region.frame_boxes[0] is not None
    assert "score and keypoints only" in caplog.text
    with pytest.raises(NoFaceError, match="'face_mask'"):
        face_region(_image(Image.open(NOFACE)), model_dirs=[only])


def test_the_hallo_face_locator_names_face_mask_when_landmarks_are_missing(model_dirs, monkeypatch):
    """Through the node with a Hallo-family model: whichever check refuses, the way out is named."""
    pack = load_pack()
    monkeypatch.setattr(pack.nodes.comfy_services, "mediapipe_dirs", lambda: list(model_dirs))
    model = type("M", (), {"config": tiny_emo_config()})()
    from emo_core.config import AudioAttentionConfig, FaceLocatorConfig
    model.config = tiny_emo_config(audio_attention=AudioAttentionConfig(form="hierarchical", audio_dim=16),
                                   face_locator=FaceLocatorConfig(conditioning_channels=3,
                                                                  block_out_channels=(4, 8, 8, 16)))
    with pytest.raises(pack.emo_core.errors.InvalidInputError, match="'face_mask'"):
        pack.NODE_CLASS_MAPPINGS["EMO_FaceLocator"]().locate(model, _image(_drawings()["cat"]), 1.2)


CAT_PHOTO = os.environ.get("EMO_CAT_PHOTO")


@pytest.mark.skipif(not CAT_PHOTO, reason="set EMO_CAT_PHOTO to a photo of a cat (e.g. chelsea.png from the "
                                          "scikit-image wheel's skimage/data/) to check a real animal face")
def test_a_real_cat_photo_is_refused_in_every_crop(model_dirs):
    """BlazeFace scores some crops of scikit-image's cat photo above 0.5 with face-like keypoints (measured:
    0.61, box 51% of the image); the landmarker refuses them all."""
    photo = Image.open(CAT_PHOTO).convert("RGB")
    w, h = photo.size
    side = min(w, h)
    crops = [(0, 0, w, h)]
    for s in (side, side * 5 // 6):  # squares across the photo, as a user would crop a portrait
        crops += [(x, y, x + s, y + s) for x in range(0, w - s + 1, max(1, (w - s) // 3))
                  for y in range(0, h - s + 1, max(1, (h - s) // 2))]
    for box in crops:
        for size in (256, 512):
            with pytest.raises(NoFaceError, match="'face_mask'"):
                face_region(_image(photo.crop(box).resize((size, size))), model_dirs=model_dirs)

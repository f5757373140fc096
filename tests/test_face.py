"""Face-locator masks and Hallo attention masks, with REAL MediaPipe detection on the shared fixtures.

Models come from $EMO_MEDIAPIPE_MODELS (fill it with .ci/mediapipe_models.sh DIR). Without mediapipe, the
models or the fixtures these tests skip and say what is missing, unless EMO_REQUIRE_MEDIAPIPE=1 (CI),
where they fail.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import SHARED, mediapipe_missing
from emo_core.errors import InvalidInputError, MissingWeightsError
from emo_core.face import NoFaceError, detect_face_boxes, face_region
from emo_core.face_models import find_detector, find_landmarker, model_search_dirs

FIXTURES = SHARED / "fixtures"
PORTRAIT, NOFACE = FIXTURES / "portrait_astronaut_512.png", FIXTURES / "noface_coffee_512.png"


def _load(path) -> torch.Tensor:
    """PNG -> (H, W, 3) uint8, or skip/fail when the fixture is missing."""
    if not path.is_file():
        mediapipe_missing(f"fixture image {path} not found")
    from PIL import Image
    return torch.from_numpy(np.array(Image.open(path).convert("RGB")))


def _as_image(*frames: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) frames -> ComfyUI IMAGE (B, H, W, 3) float 0..1."""
    return torch.stack(frames).float() / 255


@pytest.fixture(scope="session")
def portrait():
    return _load(PORTRAIT)


# --- detection on real images ---------------------------------------------------------------------------

def test_portrait_face_is_found_where_it_is(model_dirs, portrait):
    boxes = detect_face_boxes(portrait, model_dirs)
    assert len(boxes) == 1
    x0, y0, x1, y1, score = boxes[0]
    assert 140 <= x0 <= 175 and 345 <= x1 <= 375 and 125 <= y0 <= 165 and 340 <= y1 <= 380, boxes[0]
    assert score > 0.7


def test_face_region_expands_the_box_and_renders_emo_and_hallo(model_dirs, portrait):
    emo = face_region(_as_image(portrait), expand_ratio=1.2, channels=1, model_dirs=model_dirs)
    raw = emo.frame_boxes[0]
    x0, y0, x1, y1 = emo.box
    assert emo.source == "detector"
    assert (x1 - x0) == pytest.approx((raw.x1 - raw.x0) * 1.2, abs=2)
    assert (y1 - y0) == pytest.approx((raw.y1 - raw.y0) * 1.2, abs=2)
    assert emo.mask.shape == (1, 512, 512) and emo.locator_input.shape == (1, 1, 512, 512)
    assert emo.mask.sum().item() == (x1 - x0) * (y1 - y0)
    assert set(emo.mask.unique().tolist()) == {0.0, 1.0}
    hallo = face_region(_as_image(portrait), expand_ratio=1.2, channels=3, model_dirs=model_dirs)
    assert hallo.locator_input.shape == (1, 3, 512, 512)
    assert torch.equal(hallo.locator_input, emo.locator_input.repeat(1, 3, 1, 1))


def test_no_face_is_a_clear_typed_error(model_dirs):
    image = _load(NOFACE)
    with pytest.raises(NoFaceError) as err:
        face_region(_as_image(image), model_dirs=model_dirs)
    assert isinstance(err.value, InvalidInputError)
    message = str(err.value)
    assert "no face found" in message and "512x512" in message and "'face_mask'" in message


def test_several_faces_the_largest_wins(model_dirs, portrait, caplog):
    face = portrait[100:420, 110:410]                        # (320, 300) crop around the face
    small = torch.nn.functional.interpolate(face.permute(2, 0, 1)[None].float(), scale_factor=0.6,
                                            mode="bilinear", antialias=True)[0].permute(1, 2, 0).round()
    canvas = torch.full((512, 768, 3), 128, dtype=torch.uint8)
    canvas[150:470, 448:748] = face
    canvas[20:212, 20:200] = small.to(torch.uint8)
    assert len(detect_face_boxes(canvas, model_dirs)) == 2
    with caplog.at_level(logging.INFO, logger="emo_core.face"):
        region = face_region(_as_image(canvas), expand_ratio=1.0, model_dirs=model_dirs)
    x0, y0, x1, y1 = region.box
    assert x0 >= 448 and y0 >= 150 and x1 <= 748 and y1 <= 470, region.box
    assert "2 faces found; using the largest" in caplog.text


def test_union_over_a_clip_of_shifted_crops(model_dirs, portrait):
    shifts = [(0, 0), (32, 16), (64, 64)]                    # (dx, dy): the face moves up-left by these
    clip = _as_image(*(portrait[dy:dy + 448, dx:dx + 448] for dx, dy in shifts))
    region = face_region(clip, expand_ratio=1.0, model_dirs=model_dirs)
    boxes = region.frame_boxes
    assert len(boxes) == 3 and all(b is not None for b in boxes)
    assert boxes[2].x0 < boxes[0].x0 - 40 and boxes[2].y0 < boxes[0].y0 - 40
    x0, y0, x1, y1 = region.box
    assert x0 == int(min(b.x0 for b in boxes)) and y0 == int(min(b.y0 for b in boxes))
    assert x1 == int(max(b.x1 for b in boxes)) and y1 == int(max(b.y1 for b in boxes))
    assert region.mask.shape == (3, 448, 448)
    assert all(torch.equal(region.mask[i], region.mask[0]) for i in range(3))


def test_non_square_image(model_dirs, portrait):
    region = face_region(_as_image(portrait[:, 64:448]), model_dirs=model_dirs)   # 384 wide, 512 high
    x0, y0, x1, y1 = region.box
    assert region.mask.shape == (1, 512, 384) and region.locator_input.shape == (1, 1, 512, 384)
    assert 60 <= x0 < x1 <= 384 and 100 <= y0 < y1 <= 400


# --- user mask instead of detection (no MediaPipe needed) ------------------------------------------------

def test_user_mask_replaces_detection():
    image = torch.rand(2, 256, 320, 3)
    user = torch.zeros(2, 256, 320)
    user[0, 60:200, 50:150] = 1.0
    user[1, 70:210, 80:170] = 0.8
    region = face_region(image, expand_ratio=1.0, user_mask=user, channels=3)
    assert region.source == "user_mask" and region.box == (50, 60, 170, 210)
    assert region.mask.shape == (2, 256, 320) and region.locator_input.shape == (1, 3, 256, 320)
    grown = face_region(image, expand_ratio=1.5, user_mask=user[0])
    assert grown.box == (25, 25, 175, 235)


def test_user_mask_errors_say_what_to_do():
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(InvalidInputError, match="empty"):
        face_region(image, user_mask=torch.zeros(64, 64))
    with pytest.raises(InvalidInputError, match="resize the mask"):
        face_region(image, user_mask=torch.ones(32, 64))
    with pytest.raises(InvalidInputError, match="channels"):
        face_region(image, user_mask=torch.ones(64, 64), channels=2)


def test_missing_model_names_the_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("EMO_MEDIAPIPE_MODELS", str(tmp_path / "env"))
    with pytest.raises(MissingWeightsError) as err:
        find_detector(model_search_dirs(tmp_path / "explicit"))
    message = str(err.value)
    assert "blaze_face_short_range.tflite" in message and "face_detection_short_range.tflite" in message
    assert str(tmp_path / "explicit") in message and str(tmp_path / "env") in message


# --- Hallo's hierarchical attention masks ---------------------------------------------------------------

def test_hallo_masks_levels_on_the_portrait(model_dirs, portrait):
    from emo_core.face_hallo import hallo_masks
    masks = hallo_masks(_as_image(portrait), levels=4, model_dirs=model_dirs)
    full, face, lip = masks
    for kind in (full, face, lip):
        assert [tuple(m.shape) for m in kind] == [(1, 64 * 64), (1, 32 * 32), (1, 16 * 16), (1, 8 * 8)]
        assert all(m.dtype == torch.float32 and 0 <= m.min() and m.max() <= 1 for m in kind)
    min_x, max_x, min_y, max_y = masks.face_box
    assert 120 <= min_x < 200 and 330 < max_x <= 400 and 90 <= min_y < 170 and 340 < max_y <= 420
    lx0, lx1, ly0, ly1 = masks.lip_box
    assert min_x <= lx0 < lx1 <= max_x and 230 < ly0 < ly1 <= max_y
    top = full[0].view(64, 64)
    assert top[0, 0] == 1.0 and top[32, 32] < 0.1            # background far from the face, not on it


def test_hallo_masks_non_square_clip(model_dirs, portrait):
    from emo_core.face_hallo import hallo_masks
    clip = _as_image(portrait[:, 64:448], portrait[:, 32:416])                  # 2 frames, 512 x 384
    full, face, lip = hallo_masks(clip, levels=3, model_dirs=model_dirs)
    assert [tuple(m.shape) for m in face] == [(2, 64 * 48), (2, 32 * 24), (2, 16 * 12)]
    assert torch.equal(lip[0][0], lip[0][1])


def test_hallo_mask_values_match_hallo_code():
    """Integer sums (x255) per level that Hallo's own util.py + torchvision Resize give for these boxes."""
    pytest.importorskip("cv2", reason="OpenCV (installed with mediapipe) is missing")
    from emo_core.face_hallo import masks_from_boxes
    masks = masks_from_boxes((147, 371, 121, 373), (164, 346, 260, 328), 512, 512, levels=4, frames=3)
    expected = {"full": [782148, 195704, 48880, 12196], "face": [180017, 45193, 11274, 2838],
                "lip": [82383, 20656, 5150, 1289]}
    for kind, sums in expected.items():
        levels = getattr(masks, kind)
        assert [tuple(m.shape) for m in levels] == [(3, 4096), (3, 1024), (3, 256), (3, 64)]
        assert [int(round(m[0].sum().item() * 255)) for m in levels] == sums, kind
    assert (masks.lip[3][0].view(8, 8)[4] * 255).round().tolist() == [1, 17, 104, 199, 195, 97, 15, 1]


def test_hallo_level_sizes():
    from emo_core.face_hallo import level_sizes
    assert level_sizes(512, 512, 4) == ((64, 64), (32, 32), (16, 16), (8, 8))
    assert level_sizes(512, 768, 4) == ((64, 96), (32, 48), (16, 24), (8, 12))
    assert level_sizes(576, 320, 4) == ((72, 40), (36, 20), (18, 10), (9, 5))
    with pytest.raises(InvalidInputError):
        level_sizes(512, 512, 0)


def test_built_landmarker_bundle_is_already_padded(model_dirs):
    """The CI bundle's mesh model reads as 478 landmarks; padding it again changes nothing."""
    import zipfile
    from emo_core.face_models import pad_mesh_output
    with zipfile.ZipFile(find_landmarker(model_dirs)) as bundle:
        mesh = bundle.read("face_landmarks_detector.tflite")
    assert pad_mesh_output(mesh) == mesh


# --- Hallo masks from a drawn face mask instead of landmarks ---------------------------------------------

def test_hallo_masks_from_user_mask_boxes_and_values():
    pytest.importorskip("cv2", reason="OpenCV (installed with mediapipe) is missing")
    from emo_core.face_hallo import LIP_FRACTION, hallo_masks, masks_from_boxes, user_mask_boxes
    user = torch.zeros(256, 320)
    user[40:240, 100:200] = 1.0                                  # box x 100..200, y 40..240
    face_box, lip_box = user_mask_boxes(user, 256, 320, face_expand_ratio=1.0, lip_expand_ratio=1.0)
    assert face_box == (100, 200, 40, 240)
    fx0, fx1, fy0, fy1 = LIP_FRACTION
    assert lip_box == (100 + fx0 * 100, 100 + fx1 * 100, 40 + fy0 * 200, 40 + fy1 * 200)
    face_box, lip_box = user_mask_boxes(user, 256, 320)          # Hallo's x1.2 face, x2.0 lip, shifted inside
    assert face_box == (90, 210, 16, 256) and lip_box == (100, 200, 152, 216)
    masks = hallo_masks(torch.rand(2, 256, 320, 3), levels=3, user_mask=user)
    expected = masks_from_boxes(face_box, lip_box, 256, 320, levels=3, frames=2)
    assert (masks.face_box, masks.lip_box) == (face_box, lip_box)
    for got, want in zip(masks, expected):
        assert [tuple(m.shape) for m in got] == [(2, 32 * 40), (2, 16 * 20), (2, 8 * 10)]
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_hallo_user_mask_unites_frames_and_checks_input():
    from emo_core.face_hallo import user_mask_boxes
    user = torch.zeros(2, 128, 128)
    user[0, 10:60, 10:50] = 1.0
    user[1, 40:100, 60:120] = 0.9
    face_box, lip_box = user_mask_boxes(user, 128, 128, face_expand_ratio=1.0, lip_expand_ratio=1.0)
    assert face_box == (10, 120, 10, 100)
    assert lip_box == (20, 105, 42, 88)                          # frame 0: x 20..40, y 42..50; 1: x 75..105, y 78..88
    with pytest.raises(InvalidInputError, match="empty"):
        user_mask_boxes(torch.zeros(128, 128), 128, 128)
    with pytest.raises(InvalidInputError, match="resize the mask"):
        user_mask_boxes(torch.ones(64, 128), 128, 128)
    with pytest.raises(InvalidInputError, match="lip_fraction"):
        user_mask_boxes(user, 128, 128, lip_fraction=(0.5, 0.4, 0.6, 0.9))


def test_hallo_user_mask_on_the_silhouette_box_matches_the_landmarks(model_dirs, portrait):
    """A mask painted over the landmark silhouette box gives Hallo's face box and nearly its lip box."""
    from emo_core.face_hallo import hallo_masks
    image = _as_image(portrait)
    landmarks = hallo_masks(image, model_dirs=model_dirs)
    user = torch.zeros(512, 512)
    user[142:352, 165:353] = 1.0                                 # silhouette landmark box on this portrait
    drawn = hallo_masks(image, user_mask=user)
    assert drawn.face_box == landmarks.face_box
    assert max(abs(a - b) for a, b in zip(drawn.lip_box, landmarks.lip_box)) <= 8, (drawn.lip_box, landmarks.lip_box)
    for got, want in zip(drawn, landmarks):
        assert (got[0] - want[0]).abs().mean() < 0.01

"""EMO Face Crop: the square around a face of any photo (emo_core.face_search, emo_core.face_crop, nodes/crop.py).

The photos are made from the shared fixtures: the portrait, resized to a fraction of the canvas, pasted on the
no-face photo stretched to a phone photo's or film still's size. Where the face must be is read from the
fixture itself (MediaPipe on the portrait alone), never written down. MediaPipe tests use the models in
$EMO_MEDIAPIPE_MODELS (they skip without, or fail under EMO_REQUIRE_MEDIAPIPE=1); the geometry and the drawn-mask
path need none.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_pack, shared_file
from emo_core.errors import InvalidInputError
from emo_core.face import NoFaceError, detect_face_boxes
from emo_core.face_crop import (FAMILY_EXPAND, CropSettings, choose_face, crop_image, crop_mask, face_crop,
                                family_expand_ratio, plan_crop)
from emo_core.face_search import find_faces, plan_windows
from emo_core.paste_back import paste_frames

PORTRAIT_FRACTION = 0.4  # the portrait's side in the canvas, as a fraction of the canvas's shorter side
TALL, WIDE = (1920, 1080), (1080, 1920)  # (height, width): a phone photo and a film still


def fixture_rgb(name: str) -> Image.Image:
    return Image.open(shared_file("fixtures", name)).convert("RGB")


def compose(size_hw, at, fraction=PORTRAIT_FRACTION, portrait=None, background=None):
    """(canvas (H, W, 3) uint8, (x, y) where the portrait's top-left went, its scale over the fixture).

    at: (fx, fy) in 0..1, the portrait's place between the canvas edges, or ("px", x, y) in pixels (may be
    negative: the portrait then hangs off the canvas)."""
    height, width = size_hw
    portrait = portrait or fixture_rgb("portrait_astronaut_512.png")
    canvas = (background or fixture_rgb("noface_coffee_512.png")).resize((width, height), Image.BICUBIC)
    side = round(fraction * min(height, width))
    scale = side / portrait.width
    placed = portrait.resize((side, round(portrait.height * scale)), Image.BICUBIC)
    if at[0] == "px":
        x, y = at[1], at[2]
    else:
        x, y = round(at[0] * (width - placed.width)), round(at[1] * (height - placed.height))
    canvas.paste(placed, (x, y))
    return torch.from_numpy(np.array(canvas)), (x, y), scale


def as_image(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255)[None]


@pytest.fixture(scope="module")
def fixture_face(model_dirs):
    """The portrait fixture's face box (x0, y0, x1, y1) in its own pixels, by the detector."""
    portrait = torch.from_numpy(np.array(fixture_rgb("portrait_astronaut_512.png")))
    boxes = detect_face_boxes(portrait, model_dirs)
    assert len(boxes) == 1, boxes
    return tuple(boxes[0][:4])


def expected_box(face, offset, scale):
    return tuple(v * scale + offset[i % 2] for i, v in enumerate(face))


def assert_near_box(got, want, tolerance=0.1):
    side = max(want[2] - want[0], want[3] - want[1])
    assert all(abs(g - w) <= tolerance * side for g, w in zip(got, want)), (got, want)


def contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def check_placement(result, expand, model_dirs):
    """The face in the crop sits centred, its box's longer side 1/expand of the crop: the training placement."""
    size = result.crop.size
    (face,) = find_faces((result.image[0] * 255).round().to(torch.uint8), model_dirs)
    cx, cy = (face.x0 + face.x1) / 2, (face.y0 + face.y1) / 2
    assert abs(cx - size / 2) < 0.06 * size and abs(cy - size / 2) < 0.06 * size, face
    assert max(face.x1 - face.x0, face.y1 - face.y0) == pytest.approx(size / expand, rel=0.15)


# --- where the windows go (no MediaPipe) -----------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(1, 1), (5, 3), (17, 40), (64, 64), (100, 37), (131, 67)])
def test_windows_lie_in_the_image_and_every_small_square_fits_one(height, width):
    windows = plan_windows(height, width, levels=3, min_side=1)
    assert windows[0] == type(windows[0])(0, 0, width, height)
    assert all(w.x >= 0 and w.y >= 0 and w.x + w.width <= width and w.y + w.height <= height for w in windows)
    assert len(set(windows)) == len(windows)
    short = min(height, width)
    for level in range(3):
        side = short // 2 ** level
        level_windows = [w for w in windows if w.width == side == w.height] or windows[:1]
        half = max(1, side // 2)
        for y in range(height - half + 1):
            for x in range(width - half + 1):
                assert any(w.x <= x and x + half <= w.x + w.width and w.y <= y and y + half <= w.y + w.height
                           for w in level_windows), (level, x, y)


def test_windows_stop_at_the_minimum_side():
    windows = plan_windows(1920, 1080)
    sides = sorted({w.width for w in windows[1:]}, reverse=True)
    assert sides == [1080, 540, 270]
    assert all(w.width >= 96 for w in plan_windows(300, 200)[1:])


# --- the square and its pixels (no MediaPipe) ---------------------------------------------------------------------

def test_the_square_is_centred_on_the_face_box_and_sized_by_the_ratio():
    crop = plan_crop((100.0, 200.0, 180.0, 300.0), (1920, 1080), 512, 1.65)
    assert crop.side == round(1.65 * 100)
    assert abs((crop.left + crop.side / 2) - 140) <= 0.5 and abs((crop.top + crop.side / 2) - 250) <= 0.5
    assert contains(crop.box, crop.face_box) and not crop.runs_off
    assert crop.scale == pytest.approx(512 / crop.side)


@pytest.mark.parametrize("padding", ["reflect", "edge"])
def test_pixels_outside_the_image_are_padded_as_numpy_pads(padding):
    """At scale 1 the crop is the image padded by numpy's own 'reflect' / 'edge' (any amount, even more
    than the image is wide)."""
    torch.manual_seed(0)
    image = torch.rand(13, 9, 4)  # RGBA: alpha is dropped
    for face, expand in [((1, 1, 7, 9), 2.0), ((-3, 4, 2, 8), 1.0), ((0, 0, 9, 13), 3.0)]:
        side = round(expand * max(face[2] - face[0], face[3] - face[1]))
        crop = plan_crop(face, (13, 9), side, expand, padding)
        pad = max(0, -crop.left, -crop.top, crop.left + side - 9, crop.top + side - 13)
        ref = np.pad(image[:, :, :3].numpy(), ((pad, pad), (pad, pad), (0, 0)), mode=padding)
        want = ref[crop.top + pad:crop.top + pad + side, crop.left + pad:crop.left + pad + side]
        assert torch.equal(crop_image(image, crop), torch.from_numpy(want).clamp(0, 1)), (face, expand)


def test_the_mask_is_zero_off_the_image():
    crop = plan_crop((0, 0, 10, 10), (20, 20), 40, 2.0)
    mask = crop_mask(torch.ones(20, 20), crop)
    assert crop.runs_off and mask.shape == (40, 40)
    assert mask[:8, :8].max() == 0 and mask[-8:, -8:].min() == 1


def test_settings_errors_name_the_value_and_the_fix():
    for bad, word in [(dict(size=500), "multiple of 8"), (dict(expand_ratio=0.5), "expand_ratio"),
                      (dict(padding="zeros"), "padding"), (dict(face_index=-2), "face_index")]:
        with pytest.raises(InvalidInputError, match=word):
            CropSettings(**bad).validate()
    assert family_expand_ratio("echomimic") == FAMILY_EXPAND["echomimic"] != family_expand_ratio("hallo")
    assert family_expand_ratio(None) == family_expand_ratio("hallo")


def test_a_stylised_face_with_a_drawn_mask_needs_no_detector(monkeypatch):
    """A drawn face (no detector runs: no MediaPipe models anywhere) in an RGBA image of odd size."""
    from PIL import ImageDraw

    monkeypatch.delenv("EMO_MEDIAPIPE_MODELS", raising=False)
    drawing = Image.new("RGBA", (1081, 1921), (40, 60, 90, 255))
    draw = ImageDraw.Draw(drawing)
    draw.ellipse([700, 300, 900, 540], fill=(240, 200, 160, 255))   # a cartoon head near the right edge
    draw.ellipse([750, 380, 775, 405], fill=(0, 0, 0, 255))
    draw.ellipse([825, 380, 850, 405], fill=(0, 0, 0, 255))
    image = torch.from_numpy(np.array(drawing)).float()[None] / 255
    mask = torch.zeros(1, 1921, 1081)
    mask[0, 300:540, 700:900] = 1.0
    result = face_crop(image, CropSettings(size=256, expand_ratio=2.0), user_mask=mask, model_dirs=())
    crop = result.crop
    assert crop.source == "mask" and crop.face_box == (700.0, 300.0, 900.0, 540.0)
    assert result.image.shape == (1, 256, 256, 3) and result.mask.shape == (1, 256, 256)
    assert crop.side == 480 and contains(crop.box, crop.face_box)
    # The mask comes out where the head is in the crop: its box, scaled, centred.
    ys, xs = torch.nonzero(result.mask[0] >= 0.5, as_tuple=True)
    assert abs((xs.min() + xs.max() + 1) / 2 - 128) <= 2 and abs((ys.min() + ys.max() + 1) / 2 - 128) <= 2
    assert int(ys.max() - ys.min() + 1) == pytest.approx(240 * crop.scale, abs=2)


def test_mask_errors_are_one_sentence():
    image = torch.rand(1, 64, 96, 3)
    with pytest.raises(InvalidInputError, match="resize the mask"):
        face_crop(image, CropSettings(size=64), user_mask=torch.ones(1, 64, 64))
    with pytest.raises(InvalidInputError, match="empty"):
        face_crop(image, CropSettings(size=64), user_mask=torch.zeros(1, 64, 96))
    with pytest.raises(InvalidInputError, match="IMAGE"):
        face_crop(torch.rand(64, 96, 3), CropSettings(size=64), user_mask=torch.ones(64, 96))


# --- real photos (MediaPipe) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size_hw, at", [(TALL, (0.25, 0.7)), (WIDE, (0.8, 0.3)),
                                         ((TALL[0] + 1, TALL[1] + 1), (0.6, 0.2)),
                                         ((WIDE[0] + 1, WIDE[1] + 1), (0.1, 0.9))])
def test_an_off_centre_face_in_a_phone_photo_or_still(model_dirs, fixture_face, size_hw, at):
    canvas, offset, scale = compose(size_hw, at)
    result = face_crop(as_image(canvas), CropSettings(), model_dirs=model_dirs)
    crop, want = result.crop, expected_box(fixture_face, offset, scale)
    assert crop.source == "detector" and crop.faces == 1 and crop.image_size == size_hw
    assert_near_box(crop.face_box, want)
    assert contains(crop.box, want) and not crop.runs_off
    assert result.image.shape == (1, 512, 512, 3) and result.mask.shape == (1, 512, 512)
    check_placement(result, CropSettings().expand_ratio, model_dirs)
    assert torch.equal(paste_frames(as_image(canvas), result.image, crop), as_image(canvas))


@pytest.mark.parametrize("padding", ["reflect", "edge"])
@pytest.mark.parametrize("size_hw, corner", [(TALL, "left"), (WIDE, "top")])
def test_a_face_near_the_edge_runs_off_and_is_padded(model_dirs, fixture_face, size_hw, corner, padding):
    """The face box a few pixels from the left (top) edge: the square runs off the image there."""
    side = round(PORTRAIT_FRACTION * min(size_hw))
    scale = side / 512
    margin = 0.05 * (fixture_face[2] - fixture_face[0]) * scale
    x = -fixture_face[0] * scale + margin if corner == "left" else (size_hw[1] - side) / 2
    y = -fixture_face[1] * scale + margin if corner == "top" else (size_hw[0] - side) / 2
    canvas, offset, scale = compose(size_hw, ("px", round(x), round(y)))
    result = face_crop(as_image(canvas), CropSettings(padding=padding), model_dirs=model_dirs)
    crop, want = result.crop, expected_box(fixture_face, offset, scale)
    assert crop.runs_off and (crop.left < 0 if corner == "left" else crop.top < 0)
    assert crop.padding == padding and contains(crop.box, want)
    assert_near_box(crop.face_box, want)
    check_placement(result, CropSettings().expand_ratio, model_dirs)
    assert torch.equal(paste_frames(as_image(canvas), result.image, crop), as_image(canvas))


@pytest.mark.parametrize("big_on_the_left", [True, False])
def test_two_faces_the_largest_by_default_and_by_index_left_to_right(model_dirs, fixture_face, big_on_the_left, caplog):
    canvas, big_at, big_scale = compose(WIDE, (0.15 if big_on_the_left else 0.85, 0.5), fraction=0.5)
    canvas, small_at, small_scale = compose(WIDE, (0.85 if big_on_the_left else 0.15, 0.4), fraction=0.3,
                                            background=Image.fromarray(canvas.numpy()))
    big, small = expected_box(fixture_face, big_at, big_scale), expected_box(fixture_face, small_at, small_scale)
    left, right = (big, small) if big_on_the_left else (small, big)
    with caplog.at_level(logging.INFO, logger="emo_core"):
        default = face_crop(as_image(canvas), CropSettings(), model_dirs=model_dirs).crop
    assert "2 face(s) found" in caplog.text and default.faces == 2
    assert_near_box(default.face_box, big)
    assert default.face_index == (0 if big_on_the_left else 1)
    other = face_crop(as_image(canvas), CropSettings(face_index=1), model_dirs=model_dirs).crop
    assert other.face_index == 1
    assert_near_box(other.face_box, right)
    faces = find_faces((as_image(canvas)[0] * 255).round().to(torch.uint8), model_dirs)
    assert_near_box(faces[choose_face(faces, 0)][:4], left)
    with pytest.raises(InvalidInputError, match="face_index is 2 but 2 face"):
        choose_face(faces, 2)


def test_rgba_input_is_cropped_from_its_colours(model_dirs, fixture_face):
    canvas, offset, scale = compose(TALL, (0.5, 0.5))
    alpha = torch.linspace(0, 1, TALL[1]).expand(TALL[0], -1)[..., None]  # any alpha: it is ignored
    rgba = torch.cat([canvas.float() / 255, alpha], -1)[None]
    with_alpha = face_crop(rgba, CropSettings(size=256), model_dirs=model_dirs)
    without = face_crop(rgba[..., :3], CropSettings(size=256), model_dirs=model_dirs)
    assert with_alpha.image.shape == (1, 256, 256, 3)
    assert with_alpha.crop == without.crop and torch.equal(with_alpha.image, without.image)
    assert_near_box(with_alpha.crop.face_box, expected_box(fixture_face, offset, scale))


def test_a_photo_without_a_face_names_face_mask(model_dirs):
    photo = torch.from_numpy(np.array(fixture_rgb("noface_coffee_512.png").resize((TALL[1], TALL[0]))))
    with pytest.raises(NoFaceError) as err:
        face_crop(as_image(photo), CropSettings(), model_dirs=model_dirs)
    assert f"{TALL[1]}x{TALL[0]}" in str(err.value) and "'face_mask'" in str(err.value)


# --- the node --------------------------------------------------------------------------------------------------------

def test_the_node_takes_the_family_default_and_previews_the_square(tmp_path, monkeypatch):
    """expand_ratio 0 follows the connected model's family; the preview and the handle come out (drawn mask,
    so no detector is needed)."""
    pack = load_pack()
    node = pack.NODE_CLASS_MAPPINGS["EMO_FaceCrop"]()
    monkeypatch.setattr(pack.nodes.comfy_services, "temp_directory", lambda: tmp_path)
    image = torch.rand(1, 300, 200, 3)
    mask = torch.zeros(1, 300, 200)
    mask[0, 100:160, 70:120] = 1

    class Model:
        class config:
            family = "echomimic"

    out = node.crop(image, 128, 0.0, -1, "edge", face_mask=mask, emo_model=Model())
    crop_out, handle, face_mask = out["result"]
    assert handle.crop.side == round(FAMILY_EXPAND["echomimic"] * 60) and handle.image is image
    assert crop_out.shape == (1, 128, 128, 3) and face_mask.shape == (1, 128, 128)
    (info,) = out["ui"]["emo_crop"]
    assert info["expand_ratio"] == FAMILY_EXPAND["echomimic"] and info["source"] == "mask"
    (preview,) = out["ui"]["images"]
    assert (tmp_path / preview["filename"]).is_file()
    plain = node.crop(image, 128, 0.0, -1, "edge", face_mask=mask)["result"][1]
    assert plain.crop.side == round(family_expand_ratio(None) * 60)
    info = node.crop(image, 128, 1.5, -1, "edge", face_mask=mask)["ui"]["emo_crop"][0]
    assert math.isclose(info["expand_ratio"], 1.5)


def test_every_input_has_a_tooltip():
    pack = load_pack()
    for name in ("EMO_FaceCrop", "EMO_PasteBack"):
        spec = pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
        for section in spec.values():
            for input_name, (_, *rest) in section.items():
                assert rest and rest[0].get("tooltip"), f"{name}.{input_name}"

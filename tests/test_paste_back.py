"""EMO Paste Back: animated crops composited back into the full photo (emo_core.paste_back, nodes/crop.py, and
EMO Save Video (Streaming) with a crop). No MediaPipe: the squares are planned around the pasted portrait of
test_face_crop's photos, whatever its face looks like."""
from __future__ import annotations

import av
import pytest
import torch

from comfy_fakes import TinyVAE
from conftest import load_pack
from emo_core.errors import InvalidInputError
from emo_core.face_crop import crop_image, plan_crop
from emo_core.paste_back import PasteSettings, feather_weights, paste_frames
from test_face_crop import PORTRAIT_FRACTION, TALL, WIDE, as_image, compose

ODD_TALL, ODD_WIDE = (TALL[0] + 1, TALL[1] + 1), (WIDE[0] + 1, WIDE[1] + 1)


def photo_and_crop(size_hw, at, size=128, expand=1.0, padding="reflect"):
    """(IMAGE of the photo, the crop around the middle half of the pasted portrait, the crop's pixels)."""
    canvas, (x, y), scale = compose(size_hw, at)
    side = PORTRAIT_FRACTION * min(size_hw)
    box = (x + side / 4, y + side / 4, x + 3 * side / 4, y + 3 * side / 4)
    crop = plan_crop(box, size_hw, size, expand, padding)
    image = as_image(canvas)
    return image, crop, crop_image(image[0], crop)[None]


def square_mask(crop, height, width) -> torch.Tensor:
    x0, y0, x1, y1 = crop.visible
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    return inside


CASES = {"tall": (TALL, (0.2, 0.6), 1.0), "wide": (WIDE, (0.7, 0.2), 1.65), "odd tall": (ODD_TALL, (0.5, 0.5), 2.0),
         "odd wide": (ODD_WIDE, (0.9, 0.8), 1.3),
         # the portrait flush with a corner and a square twice its middle: it runs off the image
         "runs off": (TALL, (0.0, 1.0), 3.0)}


@pytest.mark.parametrize("case", CASES)
def test_the_unchanged_crop_gives_back_the_photo_exactly(case):
    size_hw, at, expand = CASES[case]
    image, crop, frames = photo_and_crop(size_hw, at, expand=expand)
    assert crop.runs_off == (case == "runs off")
    out = paste_frames(image, frames.repeat(3, 1, 1, 1), crop)
    assert out.shape == (3, *size_hw, 3)
    assert torch.equal(out, image.expand(3, -1, -1, -1))


@pytest.mark.parametrize("case", CASES)
def test_8_bit_frames_stay_within_one_step_inside_and_exact_outside(case):
    """Frames that went through 8 bits (a PNG, a video) come back within 1/255 in the square and the feather
    band, and exactly outside the square."""
    size_hw, at, expand = CASES[case]
    image, crop, frames = photo_and_crop(size_hw, at, expand=expand)
    out = paste_frames(image, (frames * 255).round() / 255, crop)[0]
    diff = (out - image[0]).abs().amax(-1)
    inside = square_mask(crop, *size_hw)
    assert diff[~inside].max() == 0
    assert 0 < diff[inside].max() <= 1 / 255


@pytest.mark.parametrize("case", ["tall", "odd wide", "runs off"])
def test_without_keep_detail_the_square_is_the_upscaled_crop_blended_by_the_feather(case):
    size_hw, at, expand = CASES[case]
    image, crop, frames = photo_and_crop(size_hw, at, expand=expand)
    out = paste_frames(image, frames, crop, PasteSettings(keep_detail=False))[0]
    inside = square_mask(crop, *size_hw)
    assert torch.equal(out[~inside], image[0][~inside])
    x0, y0, x1, y1 = crop.visible
    w = feather_weights(crop, 0.1)[..., None]
    got, orig = out[y0:y1, x0:x1], image[0, y0:y1, x0:x1]
    roundtrip = orig + (got - orig) / w.clamp_min(1e-6)   # where w > 0: what the upscaled crop put there
    assert (roundtrip - orig)[w[..., 0] > 0.5].abs().mean() < 0.05  # resampled: close, not equal
    assert (got - orig).abs().max() > 0


def test_a_mark_in_the_crop_lands_where_the_crop_came_from_and_nothing_else_moves():
    image, crop, frames = photo_and_crop(TALL, (0.3, 0.4), size=256, expand=1.5)
    marked = frames.clone()
    u0, v0, n = 96, 112, 32                      # a white square in crop pixels
    marked[0, v0:v0 + n, u0:u0 + n] = 1.0
    out = paste_frames(image, marked, crop)[0]
    changed = (out - image[0]).abs().amax(-1) > 0.2
    ys, xs = torch.nonzero(changed, as_tuple=True)
    s = crop.scale
    assert abs(int(xs.min()) - (crop.left + u0 / s)) <= 2 and abs(int(xs.max()) + 1 - (crop.left + (u0 + n) / s)) <= 2
    assert abs(int(ys.min()) - (crop.top + v0 / s)) <= 2 and abs(int(ys.max()) + 1 - (crop.top + (v0 + n) / s)) <= 2
    # keep_detail: away from the mark (beyond the motion map's blur) the photo's own pixels stay.
    far = torch.ones_like(changed)
    pad = round(n / s)
    far[crop.top + round(v0 / s) - pad:crop.top + round((v0 + n) / s) + pad,
        crop.left + round(u0 / s) - pad:crop.left + round((u0 + n) / s) + pad] = False
    assert torch.equal(out[far], image[0][far])


def test_the_feather_ramps_in_from_inside_edges_only():
    image, crop, frames = photo_and_crop(TALL, (0.0, 0.5), size=128, expand=3.0)   # runs off on the left
    assert crop.left < 0 < crop.top
    grey = torch.full_like(frames, 0.5)
    out = paste_frames(image, grey, crop, PasteSettings(feather=0.2, keep_detail=False))[0]
    x0, y0, x1, y1 = crop.visible
    row = (crop.top + crop.side // 2)
    # The image's left edge is inside the square: no ramp there; the right edge of the square ramps to 0.
    assert out[row, 0].sub(0.5).abs().max() < 1e-6
    weights = feather_weights(crop, 0.2)[crop.side // 2 - (y0 - crop.top)]
    assert weights[0] == 1 and weights[-1] < 0.01 and bool((weights[1:] <= weights[:-1] + 1e-7).all())
    column = (out[y0:y1, x1 - 1] - image[0, y0:y1, x1 - 1]).abs().max()
    assert column < 0.02  # the last column of the square is (nearly) the photo
    hard = paste_frames(image, grey, crop, PasteSettings(feather=0.0, keep_detail=False))[0]
    assert hard[y0:y1, x0:x1].sub(0.5).abs().max() < 1e-6


def test_colour_matching_takes_out_a_uniform_drift():
    image, crop, _ = photo_and_crop(WIDE, (0.4, 0.5), expand=1.4)
    image = image * 0.8 + 0.1                            # room for the drift without clipping
    frames = crop_image(image[0], crop)[None]
    drift = torch.tensor([0.06, -0.04, 0.09])            # a model that made everything warmer
    for keep_detail in (True, False):
        plain = paste_frames(image, frames + drift, crop, PasteSettings(keep_detail=keep_detail))[0]
        matched = paste_frames(image, frames + drift, crop, PasteSettings(keep_detail=keep_detail,
                                                                          match_colors=True))[0]
        x0, y0, x1, y1 = crop.visible
        shown = (plain - image[0])[y0:y1, x0:x1].mean((0, 1)) / feather_weights(crop, 0.1).mean()
        assert (shown - drift).abs().max() < 0.01, shown  # unmatched, the drift shows across the square
        if keep_detail:  # the photo itself
            assert (matched - image[0]).abs().max() < 1e-5
        else:  # the resampled square, without the drift
            same = paste_frames(image, frames, crop, PasteSettings(keep_detail=False))[0]
            assert (matched - same).abs().max() < 1e-5
    assert torch.equal(paste_frames(image, frames, crop, PasteSettings(match_colors=True))[0], image[0])


def test_rgba_photo_comes_back_as_its_colours():
    image, crop, frames = photo_and_crop(ODD_TALL, (0.5, 0.3))
    rgba = torch.cat([image, torch.rand(*image.shape[:3], 1)], -1)
    out = paste_frames(rgba, crop_image(rgba[0], crop)[None], crop)
    assert out.shape == (1, *ODD_TALL, 3) and torch.equal(out, image)


def test_one_original_frame_per_animated_frame():
    image, crop, frames = photo_and_crop(WIDE, (0.5, 0.5), size=64)
    video = torch.cat([image, image.flip(1)])           # two different originals of the same size
    crops = torch.stack([crop_image(f, crop) for f in video])
    assert torch.equal(paste_frames(video, crops, crop), video)
    with pytest.raises(InvalidInputError, match="one original frame per animated frame"):
        paste_frames(video, crops.repeat(2, 1, 1, 1), crop)


def test_bad_inputs_are_one_sentence():
    image, crop, frames = photo_and_crop(TALL, (0.5, 0.5), size=64)
    with pytest.raises(InvalidInputError, match="EMO Face Crop made 64x64"):
        paste_frames(image, torch.rand(2, 128, 128, 3), crop)
    with pytest.raises(InvalidInputError, match="the image given to EMO Face Crop"):
        paste_frames(image[:, :-8], frames, crop)
    with pytest.raises(InvalidInputError, match="feather"):
        paste_frames(image, frames, crop, PasteSettings(feather=0.8))
    with pytest.raises(InvalidInputError, match="non-finite"):
        paste_frames(image, frames * float("nan"), crop)


# --- nodes ----------------------------------------------------------------------------------------------------------

def test_paste_back_node_refuses_what_cannot_fit_in_memory(monkeypatch):
    pack = load_pack()
    image, crop, frames = photo_and_crop(TALL, (0.5, 0.5), size=64)
    handle = pack.nodes.handles.CropHandle(crop, image)
    node = pack.NODE_CLASS_MAPPINGS["EMO_PasteBack"]()
    (out,) = node.paste(image, frames.repeat(2, 1, 1, 1), handle, 0.1, True, False)
    assert torch.equal(out, image.expand(2, -1, -1, -1))
    monkeypatch.setattr(pack.emo_core.memory, "available_host_bytes", lambda: 10 * 2 ** 20)
    too_big = pack.emo_core.errors.InsufficientMemoryError
    with pytest.raises(too_big, match="EMO Save Video \\(Streaming\\) with this crop"):
        node.paste(image, frames.repeat(2, 1, 1, 1), handle, 0.1, True, False)


@pytest.mark.parametrize("size_hw", [TALL, ODD_WIDE])
def test_the_streaming_saver_pastes_each_chunk_back_at_the_photos_even_size(size_hw, tmp_path, monkeypatch):
    """EMO Save Video (Streaming) with a crop: the MP4 is the photo's size (an odd side loses its last pixel),
    the pixels outside the square are the photo's, and no tensor ever holds more than a chunk of full frames."""
    pack = load_pack()
    monkeypatch.setenv("EMO_OUTPUT_DIR", str(tmp_path / "output"))
    image, crop, _ = photo_and_crop(size_hw, (0.3, 0.3), size=64)
    seen = []
    writer = pack.emo_core.video_writer.StreamingVideoWriter
    write = writer.write
    monkeypatch.setattr(writer, "write", lambda self, images: (seen.append(tuple(images.shape)), write(self, images)))
    latent = {"samples": torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    saver = pack.NODE_CLASS_MAPPINGS["EMO_SaveVideo"]()
    ui = saver.save(latent, TinyVAE(), 25.0, "EMO/photo", chunk_frames=3, crf=0,
                    crop=pack.nodes.handles.CropHandle(crop, image))
    assert seen == [(3, *size_hw, 3), (3, *size_hw, 3), (1, *size_hw, 3)]
    (entry,) = ui["ui"]["images"]
    even = (size_hw[0] - size_hw[0] % 2, size_hw[1] - size_hw[1] % 2)
    with av.open(str(tmp_path / "output" / entry["subfolder"] / entry["filename"])) as container:
        stream = container.streams.video[0]
        assert (stream.height, stream.width) == even
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 7
    outside = ~square_mask(crop, *even)
    photo = (image[0, :even[0], :even[1]] * 255)[outside]
    got = torch.from_numpy(frames[-1]).float()[outside]
    assert (got - photo).abs().mean() < 4  # H.264 in yuv420p at crf 0: chroma subsampling only

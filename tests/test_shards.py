"""Shard files alone (emo_core.train.shards, .shard_frames; no MediaPipe, no video): the frame formats' round
trips, their sizes, the webdataset member layout, shards of the first (raw) layout, damaged samples."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from emo_core.errors import CorruptFileError, InvalidInputError
from emo_core.train.shard_frames import FRAME_FORMATS, FrameCodec
from emo_core.train.shards import ClipSample, ShardDataset, ShardWriter, encode_sample, shard_paths
from tests.conftest import shared_file, wav2vec_shape

# JPEG at the default quality against the frames it stores, in 8-bit levels: the stated bound (README)
JPEG_MEAN_ERROR, JPEG_MAX_ERROR = 2.5, 24


def portrait_frames(length: int, side: int) -> torch.Tensor:
    """(length, side, side, 3) uint8: the fixture portrait, cropped a little further right and down each frame
    (a moving head: real image content, unlike noise, which no codec compresses)."""
    from PIL import Image

    with Image.open(shared_file("fixtures", "portrait_astronaut_512.png")) as image:
        image = image.convert("RGB")
        crop = min(image.size) * 3 // 4
        step = max(1, (min(image.size) - crop) // max(1, length))
        frames = [np.asarray(image.crop((i * step, i * step // 2, i * step + crop, i * step // 2 + crop))
                             .resize((side, side), Image.BILINEAR)) for i in range(length)]
    return torch.from_numpy(np.stack(frames))


def make_sample(frames: torch.Tensor, key: str = "vid/0000", seed: int = 0) -> ClipSample:
    """A ClipSample around (L, S, S, 3) uint8 frames, with a face box per frame and random audio and speed."""
    layers, hidden = wav2vec_shape()
    length, side = frames.shape[:2]
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(length, 1, side, side)
    for i, mask in enumerate(masks):
        x0, y0 = (int(v) for v in torch.randint(0, side // 2, (2,), generator=g))
        mask[0, y0:y0 + side // 3 + i % 3, x0:x0 + side // 4] = 1
    return ClipSample(key, frames.permute(0, 3, 1, 2).float() / 127.5 - 1, masks,
                      torch.randn(length, layers, hidden, generator=g).half().float(),
                      torch.rand(length, generator=g, dtype=torch.float64), None, 25.0, {"video": key[:3]})


def read_back(tmp_path, sample: ClipSample, codec: FrameCodec) -> ClipSample:
    with ShardWriter(tmp_path / f"{codec.kind}.tar", codec) as writer:
        writer.write(sample)
    return ShardDataset([tmp_path / f"{codec.kind}.tar"])[0]


def levels(frames: torch.Tensor) -> torch.Tensor:
    """(L, 3, S, S) in [-1, 1] -> int 0..255, as stored."""
    return ((frames + 1) * 127.5).round().long()


@pytest.mark.parametrize("kind", ["png", "raw"])
def test_lossless_formats_round_trip_bit_exactly(tmp_path, kind):
    g = torch.Generator().manual_seed(1)
    for frames in (portrait_frames(4, 48), torch.randint(0, 256, (3, 16, 16, 3), generator=g, dtype=torch.uint8)):
        sample = make_sample(frames)
        back = read_back(tmp_path, sample, FrameCodec(kind))
        assert back.frames.dtype == torch.float32 and back.frames.shape == sample.frames.shape
        assert torch.equal(levels(back.frames), frames.permute(0, 3, 1, 2).long())
        assert torch.equal(back.frames, sample.frames)
        for field in ("face_masks", "audio", "speed"):
            assert torch.equal(getattr(back, field), getattr(sample, field)), field
        assert back.meta["frame_format"] == kind and "jpeg_quality" not in back.meta


def test_jpeg_stays_within_its_stated_error(tmp_path):
    codec = FrameCodec()
    assert codec.kind == "jpeg"
    for side in (64, 128):
        frames = portrait_frames(4, side)
        sample = make_sample(frames)
        back = read_back(tmp_path, sample, codec)
        assert back.frames.shape == sample.frames.shape and back.frames.dtype == torch.float32
        assert -1 <= back.frames.min() and back.frames.max() <= 1
        error = (levels(back.frames) - frames.permute(0, 3, 1, 2).long()).abs().float()
        assert error.mean() < JPEG_MEAN_ERROR and error.max() <= JPEG_MAX_ERROR, (side, error.mean(), error.max())
        assert torch.equal(back.face_masks, sample.face_masks)  # masks are lossless in every format
        assert back.meta["frame_format"] == "jpeg" and back.meta["jpeg_quality"] == codec.jpeg_quality


def test_encoded_shards_are_smaller_than_raw(tmp_path, record_property):
    frames = portrait_frames(8, 128)
    sample = make_sample(frames)
    sizes = {}
    for kind in FRAME_FORMATS:
        with ShardWriter(tmp_path / f"{kind}.tar", FrameCodec(kind)) as writer:
            writer.write(sample)
        sizes[kind] = (tmp_path / f"{kind}.tar").stat().st_size
    raw_frames = frames.numel()
    assert sizes["jpeg"] < sizes["png"] < sizes["raw"] and sizes["raw"] > raw_frames
    figures = ", ".join(f"{k} {v / 1e3:.1f} kB (x{sizes['raw'] / v:.1f})" for k, v in sizes.items())
    record_property("shard_bytes", sizes)
    print(f"one sample of {frames.shape[0]} frames at {frames.shape[1]} px: {figures}")


def test_members_keep_the_webdataset_key_rule(tmp_path):
    samples = [make_sample(portrait_frames(3, 32), key=f"abc/{i:04d}", seed=i) for i in range(2)]
    with ShardWriter(tmp_path / "a.tar") as writer:
        for sample in samples:
            writer.write(sample)
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
    for i, sample in enumerate(samples):
        mine = [n for n in names if n.startswith(f"{sample.key}.")]
        assert [n.split(".", 1)[1] for n in mine if ".frames." in n] == [f"frames.{f:04d}.jpg" for f in range(3)]
        assert f"{sample.key}.face_masks.png" in mine and f"{sample.key}.meta.json" in mine
    # webdataset's key: the base name up to its first dot, so every member lands in one of the two samples
    keys = {n.rsplit("/", 1)[0] + "/" + n.rsplit("/", 1)[1].split(".", 1)[0] for n in names}
    assert keys == {s.key for s in samples}
    data = ShardDataset(shard_paths(tmp_path))
    assert [data[i].key for i in range(len(data))] == [s.key for s in samples]


def test_shards_of_the_first_raw_layout_still_read(tmp_path):
    """A shard written before frames were encoded (frames.npy, face_masks.npy, no frame_format in meta)."""
    frames = portrait_frames(3, 24)
    sample = make_sample(frames)

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()

    members = {"frames.npy": npy(frames.numpy()),
               "face_masks.npy": npy(sample.face_masks[:, 0].to(torch.uint8).numpy()),
               "audio.npy": npy(sample.audio.half().numpy()), "speed.npy": npy(sample.speed.numpy()),
               "meta.json": json.dumps({"fps": 25.0, "video": "vid"}).encode()}
    with tarfile.open(tmp_path / "old.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{sample.key}.{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    back = ShardDataset([tmp_path / "old.tar"])[0]
    for field in ("frames", "face_masks", "audio", "speed"):
        assert torch.equal(getattr(back, field), getattr(sample, field)), field
    assert back.meta == {"fps": 25.0, "video": "vid"}
    # and the raw format writes that same layout
    assert set(encode_sample(sample, FrameCodec("raw"))) == set(members)


def test_damaged_samples_and_bad_options_are_refused(tmp_path):
    from emo_core.train.shards import decode_sample

    fields = encode_sample(make_sample(portrait_frames(3, 16)))
    for drop in ("frames.0001.jpg", "face_masks.png", "speed.npy"):
        with pytest.raises(CorruptFileError):
            decode_sample("vid/0000", {k: v for k, v in fields.items() if k != drop})
    with pytest.raises(CorruptFileError, match="3 frames, 3 masks and 2 speeds"):
        decode_sample("vid/0000", {**fields, "speed.npy": encode_sample(make_sample(portrait_frames(2, 16)))
                                   ["speed.npy"]})
    with pytest.raises(InvalidInputError, match="frames must be one of"):
        ShardWriter(tmp_path / "x.tar", FrameCodec("webp"))
    with pytest.raises(InvalidInputError, match="jpeg_quality"):
        FrameCodec("jpeg", 0).validate()
    assert not list(tmp_path.iterdir())


def test_shard_writer_aborts_without_leaving_a_file(tmp_path):
    sample = make_sample(portrait_frames(2, 16))
    with ShardWriter(tmp_path / "a.tar") as w:
        w.write(sample)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "b.tar") as w:
            w.write(sample)
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]

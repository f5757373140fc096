"""Sample clips during training (emo_core.train.previews): MP4 clips of held-out data with the reference and
ground truth beside the sampled frames, written atomically, EMA weights, the sample's speed schedule, and bad
preview settings stopped at start-up. Tiny configs on the CPU (test_train.py's)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from emo_core.errors import InvalidConfigError
from emo_core.train.shards import ShardWriter
from test_train import FRAMES, NET, PIXELS, _config, _dataset
from train_helpers import plain_cpu_kernels  # noqa: F401  (autouse fixture)
from train_helpers import data_shape, tiny_samples

HELD_OUT_SEED = 7  # tiny_samples' seed for the held-out shard: other frames, audio and speeds than the training data



def _shard_folder(folder: Path, samples) -> Path:
    with ShardWriter(folder / "shard-000000.tar") as writer:
        for sample in samples:
            writer.write(sample)
    return folder


def _tiny_vae(folder: Path) -> Path:
    """A random 8x-downsampling diffusers AutoencoderKL (as test_render.py's)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4
                  ).save_pretrained(folder)
    return folder


def _read_clip(path: Path) -> tuple[torch.Tensor, float]:
    """-> ((F, H, W, 3) uint8 RGB, fps) through PyAV."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        return torch.stack(frames), float(stream.average_rate)


def _smooth(samples: list) -> list:
    """Flat frames whose brightness differs per sample and rises per frame (H.264 keeps flat areas nearly exact,
    where the training data's noise frames come back far off), so a panel tells which frames it shows."""
    for k, sample in enumerate(samples):
        steps = torch.arange(sample.frames.shape[0], dtype=torch.float32) * 0.05
        sample.frames = (0.5 * k - 0.6 + steps).clamp(-1, 1)[:, None, None, None].expand_as(sample.frames).clone()
    return samples


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    """Stage 3 for 1 step with EMA and the run's VAE, previews every step from sample 1 of a held-out shard."""
    from emo_core.train.trainer import train
    tmp = tmp_path_factory.mktemp("previews")
    held = _smooth(_dataset(count=2, seed=HELD_OUT_SEED).samples)
    cfg = _config(tmp, max_steps=1, sample_every=1, sample_steps=1, ema=True, preview_samples=[1],
                  preview_frames=NET.clip_length, preview_data=str(_shard_folder(tmp / "held", held)),
                  vae=str(_tiny_vae(tmp / "vae")))
    train(cfg, _dataset(), str(tmp / "out"))
    return cfg, held, tmp / "out"


def test_a_clip_per_preview_step_decodes_with_the_configured_frames_and_size(held_out_run):
    cfg, held, out = held_out_run
    sample = held[cfg.preview_samples[0]]
    clips = sorted((out / "samples").iterdir())
    assert [c.name for c in clips] == [f"step-{s:07d}.mp4" for s in range(cfg.sample_every, cfg.max_steps + 1,
                                                                          cfg.sample_every)]
    frames, fps = _read_clip(clips[0])
    size = sample.frames.shape[-1]
    assert frames.shape == (cfg.preview_frames, size, 3 * size, 3)  # reference | ground truth | sampled
    assert fps == pytest.approx(sample.fps)
    assert not list(out.rglob("*.partial"))


def test_tensorboard_gets_a_grid_of_frames_per_preview(held_out_run):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    from emo_core.train.previews import GRID_FRAMES
    cfg, held, out = held_out_run
    events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent), size_guidance={IMAGES: 0})
    events.Reload()
    tag = f"samples/{cfg.preview_samples[0]}"
    assert tag in events.Tags()["images"]
    image = events.Images(tag)[0]
    size = held[0].frames.shape[-1]
    rows = min(GRID_FRAMES, cfg.preview_frames)
    assert (image.step, image.width, image.height) == (cfg.sample_every, 3 * size, rows * size)


def test_the_clip_shows_the_held_out_sample_beside_the_sampled_frames(held_out_run):
    """The reference and ground-truth panels are the held-out sample's frames, not another sample's."""
    cfg, held, out = held_out_run
    frames, _ = _read_clip(out / "samples" / f"step-{cfg.sample_every:07d}.mp4")
    count, size = frames.shape[0], frames.shape[1]

    def error(sample, panel: int, rows) -> float:
        truth = ((sample.frames[rows] + 1) * 127.5).permute(0, 2, 3, 1)
        return float((frames[:, :, panel * size:(panel + 1) * size].float() - truth).abs().mean())

    own, other, train_data = held[cfg.preview_samples[0]], held[0], _dataset()[0]
    for panel, rows in ((0, [0] * count), (1, list(range(count)))):  # the reference repeats frame 0
        assert error(own, panel, rows) < 3  # of 255
        assert min(error(other, panel, rows), error(train_data, panel, rows)) > 9
    assert error(own, 1, list(range(count))[::-1]) > 9  # the ground truth in the sample's frame order


def _temporal_and_speed(net) -> list:
    from emo_core.train.stages import parameter_group
    return [p for name, p in net.named_parameters() if parameter_group(name) in ("temporal", "speed")]


def test_previews_sample_with_the_ema_weights_and_restore_the_trained_ones(tmp_path):
    from emo_core.network import EmoNet
    from emo_core.train.ema import EMA
    from emo_core.train.previews import sample_latents
    cfg = _config(tmp_path, sample_steps=1, preview_frames=2)
    torch.manual_seed(0)
    net = EmoNet(NET).train()
    params = _temporal_and_speed(net)
    ema = EMA(params, 0.5)
    for shadow in ema.shadow:
        shadow.add_(torch.randn(shadow.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    swapped = copy.deepcopy(net)
    with torch.no_grad():
        for p, shadow in zip(_temporal_and_speed(swapped), ema.shadow):
            p.copy_(shadow)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sample = _dataset(count=1)[0]
    got = sample_latents(cfg, net, sample, None, ema)
    assert torch.allclose(got, sample_latents(cfg, swapped, sample, None), atol=1e-6)
    assert not torch.allclose(got, sample_latents(cfg, net, sample, None), atol=1e-4)
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_preview_conditions_carry_the_sample_speed_schedule():
    from emo_core.network import EmoNet
    from emo_core.speed import speed_features
    from emo_core.train.previews import preview_conditions
    sample = _dataset(count=1)[0]
    frames = sample.frames.shape[0]
    video = preview_conditions(EmoNet(NET), sample, frames, None)
    assert torch.equal(video.speed, speed_features(sample.speed[:frames], NET.speed))
    assert video.num_frames == frames


def test_the_run_vae_decodes_previews_at_the_sample_size(tmp_path):
    from emo_core.train.previews import decode_frames, sampler_codec
    from emo_core.train.trainer import latent_codec
    encode, decode = latent_codec(str(_tiny_vae(tmp_path / "vae")), torch.device("cpu"))
    sample = _dataset(count=1)[0]
    latents = encode(sample.frames[:3]) / 0.18215
    images = decode_frames(latents, decode, chunk=2)
    size = sample.frames.shape[-1]
    assert images.shape == (3, size, size, 3) and 0 <= float(images.min()) and float(images.max()) <= 1
    view = decode_frames(latents, None)
    assert view.shape == (3, size // 8, size // 8, 3)
    codec = sampler_codec(encode, decode)  # what Hallo-family previews re-encode motion frames with
    pixels = ((sample.frames[:3] + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(codec.encode(pixels), latents, atol=1e-5)
    assert sampler_codec(encode, None) is None


def _bad_preview_folder(tmp_path: Path, case: str) -> Path:
    if case == "missing":
        return tmp_path / "nowhere"
    folder = tmp_path / "held"
    folder.mkdir()
    if case == "empty":
        return folder
    layers, hidden = data_shape(NET)
    return _shard_folder(folder, tiny_samples(2, FRAMES, PIXELS, layers, hidden + (case == "audio")))


@pytest.mark.parametrize("case, message", [
    ("missing", "preview_data=.* is not a folder"),
    ("empty", "preview_data=.* holds no .tar shards"),
    ("index", r"preview_samples=\[0, 5\] asks for samples \[5\] but .* has 2"),
    ("audio", "preview sample 0 .* has audio features of"),
])
def test_bad_preview_settings_fail_at_start_up_with_one_sentence(tmp_path, case, message):
    from emo_core.train.trainer import train
    cfg = _config(tmp_path, sample_every=5, preview_data=str(_bad_preview_folder(tmp_path, case)),
                  preview_samples=[0, 5] if case == "index" else [0])
    with pytest.raises(InvalidConfigError, match=message):
        train(cfg, _dataset(), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "loss.jsonl").exists()  # stopped before the first step

"""The chunked sampler on tiny random networks: frame counts, motion-frame carry-over, seeds, progress,
cancel, ReferenceNet passes, samplers and the Hallo family's rules."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import emo_core.network as network_module
from emo_core.errors import InvalidInputError
from emo_core.network import EmoNet
from emo_core.sampler import SD15_LATENT_SCALE, SamplerSettings, VaeCodec, VideoConditions, generate
from emo_core.scheduling import SAMPLERS
from emo_core.speed import constant_speed, speed_features

from conftest import tiny_emo_config

H = W = 8  # latent size: 64 px


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EmoNet(tiny_emo_config(clip_length=4, motion_frames=2)).eval()


def video(net, frames, seed=1, audio_frames=None):
    cfg = net.config
    ap = cfg.audio_projection
    g = torch.Generator().manual_seed(seed)
    reference = torch.randn(4, H, W, generator=g) * 5
    # Draw a fixed-length track and cut it, so frame i's audio does not depend on the video length.
    audio = torch.randn(64, ap.window, ap.blocks, ap.channels, generator=g)[:audio_frames or frames]
    mask = torch.zeros(cfg.face_locator.conditioning_channels, H * 8, W * 8)
    mask[:, 16:48, 16:48] = 1
    speed = speed_features(constant_speed(0.5, frames), cfg.speed) if cfg.speed else None
    return VideoConditions(reference=reference, audio=audio, num_frames=frames, face_mask=mask, speed=speed)


FAST = SamplerSettings(steps=2, seed=3)


@pytest.mark.parametrize("frames", [1, 4, 7, 9])
def test_output_has_exactly_the_audio_frame_count(net, frames):
    out = generate(net, video(net, frames), FAST)
    assert out.shape == (frames, 4, H, W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_same_seed_same_video_and_clip_noise_depends_only_on_seed_and_clip(net):
    a = generate(net, video(net, 9), FAST)
    assert_close(a, generate(net, video(net, 9), FAST), atol=0, rtol=0)
    # The first clip's frames do not depend on how long the video is.
    assert_close(generate(net, video(net, 4), FAST), a[:4], atol=1e-6, rtol=0)
    other = generate(net, video(net, 9), SamplerSettings(steps=2, seed=4))
    assert (other - a).abs().max() > 1e-3


def test_motion_frames_are_the_previous_clips_last_frames(net, monkeypatch):
    seen = []
    original = EmoNet.with_motion

    def spy(self, ref, motion, *args, **kwargs):
        seen.append(None if motion is None else motion.clone())
        return original(self, ref, motion, *args, **kwargs)

    monkeypatch.setattr(EmoNet, "with_motion", spy)
    out = generate(net, video(net, 10), FAST)
    assert len(seen) == 3 and seen[0] is None  # EMO: zero maps for the first clip
    assert_close(seen[1][0], out[2:4] * SD15_LATENT_SCALE, atol=1e-6, rtol=1e-6)
    assert_close(seen[2][0], out[6:8] * SD15_LATENT_SCALE, atol=1e-6, rtol=1e-6)


def test_motion_frames_reach_the_next_clip(net, monkeypatch):
    """Changing what clip 0 generates changes clip 1 (same noise and audio for clip 1)."""
    base = generate(net, video(net, 8), FAST)
    import emo_core.sampler as sampler_module
    real = sampler_module._motion_latents
    monkeypatch.setattr(sampler_module, "_motion_latents",
                        lambda run, plan, ref, out: None if plan.motion_from is None else
                        real(run, plan, ref, out) + 1.0)
    shifted = generate(net, video(net, 8), FAST)
    assert_close(shifted[:4], base[:4], atol=1e-6, rtol=0)
    assert (shifted[4:] - base[4:]).abs().max() > 1e-3


def test_reference_image_once_per_video_motion_frames_once_per_clip(net, monkeypatch):
    rows = []
    real = network_module.record_reference

    def counting(unet, latents, context, *rest):
        rows.append(latents.shape[0])
        return real(unet, latents, context, *rest)

    monkeypatch.setattr(network_module, "record_reference", counting)
    generate(net, video(net, 12), SamplerSettings(steps=3))
    n = net.config.motion_frames
    assert rows == [1, n, n]  # reference once; clips 2 and 3 each encode their n motion frames once


def test_progress_per_step_with_clip_numbers(net):
    seen = []
    generate(net, video(net, 9), SamplerSettings(steps=3), on_step=seen.append)
    assert [(p.clip, p.step) for p in seen] == [(c, s) for c in (1, 2, 3) for s in (1, 2, 3)]
    assert [p.done for p in seen] == list(range(1, 10))
    assert all(p.total == 9 and p.clips == 3 and p.steps == 3 for p in seen)


def test_progress_carries_the_predicted_middle_frame_for_previews(net):
    seen = []
    generate(net, video(net, 6), SamplerSettings(steps=2), on_step=seen.append)
    assert all(p.preview is not None and p.preview.shape == (1, 4, H, W) for p in seen)
    assert torch.isfinite(seen[-1].preview).all()
    assert (seen[0].preview - seen[1].preview).abs().max() > 0  # it follows the denoising


class Cancelled(Exception):
    pass


def test_cancel_between_steps_stops_without_a_result(net):
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 4:
            raise Cancelled()

    seen = []
    with pytest.raises(Cancelled):
        generate(net, video(net, 9), SamplerSettings(steps=3), on_step=seen.append, check_cancel=cancel)
    assert len(seen) < 9


def test_audio_or_speed_shorter_than_the_video_is_refused(net):
    """A track that ends before the video would repeat its last row unnoticed; the error names both lengths."""
    frames = 6
    v = video(net, frames)
    v.audio = v.audio[:frames - 1]
    with pytest.raises(InvalidInputError, match=f"audio features cover {frames - 1} frames but the video has {frames}"):
        generate(net, v, FAST)
    v = video(net, frames)
    v.speed = v.speed[:frames - 2]
    with pytest.raises(InvalidInputError, match=f"speed features cover {frames - 2} frames but the video has {frames}"):
        generate(net, v, FAST)


@pytest.mark.parametrize("frames,padded", [(7, 8), (5, 8)])
def test_audio_features_are_windowed_per_clip_with_the_same_result(net, frames, padded):
    """AudioFeatures in VideoConditions: windows cut clip by clip (never the whole video), same latents
    as the whole windowed tensor; features shorter than the video are refused as a tensor would be."""
    from emo_core.audio import AudioFeatures

    ap = net.config.audio_projection
    hidden = torch.randn(padded, ap.blocks, ap.channels, generator=torch.Generator().manual_seed(5))
    feats = AudioFeatures(hidden, num_frames=frames, fps=25.0, duration=frames / 25, window=ap.window)
    cut = []

    class Recording(AudioFeatures):
        def windowed(self, start=0, stop=None):
            out = super().windowed(start, stop)
            cut.append(out.shape[0])
            return out

    whole = video(net, frames)
    whole.audio = feats.windowed()
    per_clip = video(net, frames)
    per_clip.audio = Recording(hidden, frames, 25.0, frames / 25, ap.window)
    assert_close(generate(net, per_clip, FAST), generate(net, whole, FAST), atol=0, rtol=0)
    clip = net.config.clip_length
    assert len(cut) == -(-frames // clip) and max(cut) <= clip
    short = video(net, padded + 1)
    short.audio = feats
    with pytest.raises(InvalidInputError, match=f"audio features cover {padded} frames but the video has {padded + 1}"):
        generate(net, short, FAST)


def test_audio_features_on_disk_give_the_same_video_and_are_checked(net):
    """Long audio's features live in a FrameFile: the sampler reads them clip by clip with the same result,
    and a NaN in the file is refused before sampling, as in memory."""
    from emo_core.audio import AudioFeatures
    from emo_core.frame_file import FrameFile

    ap, frames = net.config.audio_projection, 2 * net.config.clip_length + 1
    hidden = torch.randn(frames, ap.blocks, ap.channels, generator=torch.Generator().manual_seed(6))
    on_disk = FrameFile(frames, tuple(hidden.shape[1:]))
    on_disk.write(0, hidden)
    in_memory, spilled = video(net, frames), video(net, frames)
    in_memory.audio = AudioFeatures(hidden, frames, 25.0, frames / 25, ap.window)
    spilled.audio = AudioFeatures(on_disk, frames, 25.0, frames / 25, ap.window)
    assert_close(generate(net, spilled, FAST), generate(net, in_memory, FAST), atol=0, rtol=0)
    hidden[frames // 2, 0, 0] = float("inf")
    on_disk.write(0, hidden)
    with pytest.raises(InvalidInputError, match=r"audio input of the sampler holds non-finite values \(0 NaN, 1 inf"):
        generate(net, spilled, FAST)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs(net, name):
    out = generate(net, video(net, 5), SamplerSettings(steps=3, sampler=name, seed=1))
    assert out.shape == (5, 4, H, W) and torch.isfinite(out).all()


def test_stochastic_sampling_is_reproducible(net):
    s = SamplerSettings(steps=3, eta=1.0, seed=2)
    assert_close(generate(net, video(net, 5), s), generate(net, video(net, 5), s), atol=0, rtol=0)


def test_bad_inputs(net):
    with pytest.raises(InvalidInputError, match="steps"):
        generate(net, video(net, 4), SamplerSettings(steps=0))
    with pytest.raises(InvalidInputError, match="sampler"):
        generate(net, video(net, 4), SamplerSettings(sampler="plms"))
    v = video(net, 4)
    v.reference = torch.zeros(3, H, W)
    with pytest.raises(InvalidInputError, match="reference latent"):
        generate(net, v, FAST)
    with pytest.raises(InvalidInputError, match="motion frames exceed"):
        generate(net, video(net, 4), SamplerSettings(steps=1, clip_length=40))


def hallo_video(net, frames, seed=1):
    ap = net.config.audio_projection
    g = torch.Generator().manual_seed(seed)
    levels = len(net.config.unet.block_out_channels)
    sizes = [(H // 2 ** lv) * (W // 2 ** lv) for lv in range(levels)]
    masks = tuple([torch.ones(1, s) for s in sizes] for _ in range(3))
    return VideoConditions(reference=torch.randn(4, H, W, generator=g) * 5,
                           audio=torch.randn(frames, ap.window, ap.blocks, ap.channels, generator=g),
                           num_frames=frames, face_mask=torch.ones(3, H * 8, W * 8), masks=masks,
                           identity=torch.randn(net.config.identity.embedding_dim, generator=g))


def test_hallo_first_clip_uses_the_reference_and_later_clips_re_encode_pixels(parity_net, monkeypatch):
    net = parity_net
    f, n = net.config.clip_length, net.config.motion_frames
    seen, decoded = [], []
    original = EmoNet.with_motion

    def spy(self, ref, motion, *args, **kwargs):
        seen.append(motion.clone())
        return original(self, ref, motion, *args, **kwargs)

    def decode(lat):
        decoded.append(lat.clone())
        return (lat.permute(0, 2, 3, 1)[..., :3] * 0.1 + 0.5)  # a fake VAE: (N, h, w, 3) "pixels"

    def encode(img):
        return torch.cat([(img - 0.5) / 0.1, torch.zeros_like(img[..., :1])], -1).permute(0, 3, 1, 2) + 0.25

    monkeypatch.setattr(EmoNet, "with_motion", spy)
    v = hallo_video(net, f + 3)
    out = generate(net, v, SamplerSettings(steps=1), codec=VaeCodec(encode=encode, decode=decode))
    assert out.shape == (f + 3, 4, H, W)
    scaled_ref = v.reference * SD15_LATENT_SCALE
    assert_close(seen[0][0], scaled_ref.expand(n, -1, -1, -1), atol=1e-6, rtol=1e-6)
    assert_close(decoded[0], out[f - n:f], atol=1e-6, rtol=1e-6)
    expected = out[f - n:f].clone()
    expected[:, :3] = expected[:, :3].clamp(-5, 5)  # the fake VAE's round trip clamps pixels to 0..1
    expected[:, 3] = 0
    assert_close(seen[1][0], (expected + 0.25) * SD15_LATENT_SCALE, atol=1e-5, rtol=1e-5)


def test_hallo_without_a_vae_carries_latents_and_needs_masks(parity_net):
    net = parity_net
    v = hallo_video(net, 3)
    out = generate(net, v, SamplerSettings(steps=1))
    assert out.shape == (3, 4, H, W) and torch.isfinite(out).all()
    v.masks = None
    with pytest.raises(InvalidInputError, match="masks"):
        generate(net, v, SamplerSettings(steps=1))


def test_unset_steps_and_guidance_take_the_familys_defaults(net):
    import dataclasses

    cfg = dataclasses.replace(net.config, default_steps=3, guidance_scale=2.0)
    assert SamplerSettings().for_model(cfg) == SamplerSettings(steps=3, guidance_scale=2.0)
    assert SamplerSettings(steps=5, guidance_scale=0.0).for_model(cfg) == SamplerSettings(steps=5, guidance_scale=0.0)
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(net, "config", cfg)
        generate(net, video(net, 4), SamplerSettings(), on_step=seen.append)
    assert seen and all(p.steps == 3 for p in seen) and [p.step for p in seen] == [1, 2, 3] * seen[0].clips
    with pytest.raises(InvalidInputError, match="steps must be >= 1"):
        SamplerSettings(steps=0).validate()

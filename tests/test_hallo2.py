"""The Hallo2 family: Hallo's net.pth layout chosen by the user or the file name, and Hallo2's inference rule
(motion-frame pixels dropped outside the face box before they are VAE-encoded)."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from emo_core.checkpoint import FAMILY_CHOICES, load_network, read_state_dict, save_native
from emo_core.config import hallo2_preset, hallo_preset
from emo_core.errors import IncompatibleCheckpointError, InvalidConfigError, InvalidInputError
from emo_core.motion_drop import drop_pixels, keep_mask
from emo_core.network import EmoNet
from emo_core.plan import clip_seed
from emo_core.sampler import SD15_LATENT_SCALE, SamplerSettings, VaeCodec, VideoConditions, generate
from emo_core.scheduling import build_scheduler

from comfy_fakes import TinyVAE, load_audio, load_image
from conftest import load_pack, mediapipe_models_or_skip, parity_dir, write_parity_checkpoint

H = W = 8  # latent size: 64 px
BOX = (slice(16, 40), slice(24, 56))  # the face box in pixels (rows, columns)


def face_mask(channels: int = 3, size: tuple[int, int] = (H * 8, W * 8)) -> torch.Tensor:
    mask = torch.zeros(channels, *size)
    mask[:, BOX[0], BOX[1]] = 1
    return mask


def hand_mask(size: tuple[int, int] = (H * 8, W * 8)) -> torch.Tensor:
    """A keep-mask drawn by hand: every third diagonal and the whole last row dropped."""
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    keep = (ys + xs) % 3 != 0
    keep[-1] = False
    return keep


# --- configuration ---------------------------------------------------------------------------------------

def test_hallo2_is_hallo_plus_the_pixel_drop():
    hallo, hallo2 = hallo_preset(), hallo2_preset()
    assert hallo2.family == "hallo2" and hallo2.motion_pixel_drop == 0.25  # Hallo2 long.yaml mask_rate
    assert dataclasses.replace(hallo2, family="hallo", motion_pixel_drop=0.0) == hallo
    assert hallo.is_hallo_layout and hallo2.is_hallo_layout and not hallo2_preset().family == "emo"
    assert hallo2_preset(motion_pixel_drop=0.1).motion_pixel_drop == 0.1
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InvalidConfigError, match="motion_pixel_drop"):
            hallo2_preset(motion_pixel_drop=bad)
    with pytest.raises(InvalidConfigError, match="motion_source"):
        hallo2_preset(motion_source="latents")
    assert build_scheduler("hallo2").config == build_scheduler("hallo").config


# --- the rule on its own ---------------------------------------------------------------------------------

def test_drop_on_a_hand_made_mask_sets_dropped_pixels_to_zero_in_minus_one_one():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, H * 8, W * 8, 3, generator=g)
    keep = hand_mask()
    out = drop_pixels(images, keep, None)
    signed_in, signed_out = images * 2 - 1, out * 2 - 1  # Hallo2 works on [-1, 1] pixels
    assert torch.equal(signed_out, signed_in * keep[None, :, :, None])
    for y, x in ((0, 0), (0, 1), (5, 7), (H * 8 - 1, 4)):  # a few pixels by hand, every frame and channel
        want = images[:, y, x] if keep[y, x] else torch.full((3, 3), 0.5)
        assert torch.equal(out[:, y, x], want)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_face_box_is_never_dropped(channels):
    images = torch.rand(2, H * 8, W * 8, 3, generator=torch.Generator().manual_seed(1))
    nothing_kept = torch.zeros(H * 8, W * 8, dtype=torch.bool)
    out = drop_pixels(images, nothing_kept, face_mask(channels))
    assert torch.equal(out[:, BOX[0], BOX[1]], images[:, BOX[0], BOX[1]])
    outside = torch.ones(H * 8, W * 8, dtype=torch.bool)
    outside[BOX[0], BOX[1]] = False
    assert (out[:, outside] == 0.5).all()


def test_bad_mask_shapes_are_refused():
    images = torch.rand(1, 64, 64, 3)
    with pytest.raises(InvalidInputError, match="pixel-drop mask"):
        drop_pixels(images, torch.ones(32, 32, dtype=torch.bool), None)
    with pytest.raises(InvalidInputError, match="face mask"):
        drop_pixels(images, torch.ones(64, 64, dtype=torch.bool), face_mask(3, (32, 32)))


def test_the_mask_is_seeded_per_clip_on_its_own_stream():
    size = (64, 64)
    assert torch.equal(keep_mask(7, 2, size, 0.25), keep_mask(7, 2, size, 0.25))
    assert not torch.equal(keep_mask(7, 2, size, 0.25), keep_mask(7, 3, size, 0.25))
    assert not torch.equal(keep_mask(7, 2, size, 0.25), keep_mask(8, 2, size, 0.25))
    assert clip_seed(7, 2, 1) != clip_seed(7, 2)  # not the clip noise's seed
    assert keep_mask(7, 2, size, 0.0).all()


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.6])
def test_the_fraction_dropped_outside_the_box_is_the_rate(rate):
    """Fixed seeds, so no flake; the bound is ~10 binomial standard deviations at 256x256."""
    size = (256, 256)
    box = torch.zeros(3, *size)
    box[:, 40:120, 60:200] = 1
    outside = box[0] == 0
    for clip in range(3):
        out = drop_pixels(torch.ones(1, *size, 3), keep_mask(11, clip, size, rate), box)
        dropped = (out[0, ..., 0] == 0.5)
        assert not dropped[~outside].any()
        fraction = dropped[outside].float().mean().item()
        sigma = math.sqrt(rate * (1 - rate) / outside.sum().item())
        assert abs(fraction - rate) < 10 * sigma, (clip, fraction)


# --- the rule in the sampler -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nets(parity_checkpoint, parity_net):
    """The parity net as Hallo, as Hallo2, and as Hallo2 with rate 0 (same weights)."""
    hallo2 = load_network(str(parity_checkpoint), family="hallo2")
    zero = load_network(str(parity_checkpoint), config=dataclasses.replace(hallo2.config, motion_pixel_drop=0.0))
    return parity_net, hallo2, zero


def hallo_video(net, frames, seed=1, image=True):
    ap = net.config.audio_projection
    g = torch.Generator().manual_seed(seed)
    levels = len(net.config.unet.block_out_channels)
    sizes = [(H // 2 ** lv) * (W // 2 ** lv) for lv in range(levels)]
    masks = tuple([torch.ones(1, s) for s in sizes] for _ in range(3))
    return VideoConditions(reference=torch.randn(4, H, W, generator=g),
                           audio=torch.randn(frames, ap.window, ap.blocks, ap.channels, generator=g),
                           num_frames=frames, face_mask=face_mask(net.config.face_locator.conditioning_channels),
                           masks=masks, identity=torch.randn(net.config.identity.embedding_dim, generator=g),
                           reference_image=torch.rand(H * 8, W * 8, 3, generator=g) if image else None)


class RecordingVAE(TinyVAE):
    def __init__(self):
        super().__init__()
        self.inputs = []

    def encode(self, image):
        self.inputs.append(image.clone())
        return super().encode(image)

    def codec(self):
        return VaeCodec(encode=self.encode, decode=self.decode)


def kept(keep):
    box = torch.zeros_like(keep)
    box[BOX[0], BOX[1]] = True
    return (keep | box)[..., None]


def test_reference_copies_and_carried_frames_are_dropped_before_encoding(nets, monkeypatch):
    _, net, _ = nets
    f, n = net.config.clip_length, net.config.motion_frames
    seen, asked = [], []
    original = EmoNet.with_motion

    def spy(self, ref, motion, *args, **kwargs):
        seen.append(motion.clone())
        return original(self, ref, motion, *args, **kwargs)

    def hook(clip, size):
        asked.append((clip, size))
        return hand_mask(size)

    monkeypatch.setattr(EmoNet, "with_motion", spy)
    vae, v = RecordingVAE(), hallo_video(net, f + 3)
    out = generate(net, v, SamplerSettings(steps=1), codec=vae.codec(), drop_mask_fn=hook)
    assert asked == [(0, (H * 8, W * 8)), (1, (H * 8, W * 8))]
    keep = kept(hand_mask())
    # First clip: the portrait's copies, pixels dropped, encoded (Hallo2 encodes the masked pixel copies).
    first = torch.where(keep, v.reference_image, torch.tensor(0.5))[None]
    assert torch.equal(vae.inputs[0], first)
    expected = TinyVAE().encode(first) * SD15_LATENT_SCALE
    torch.testing.assert_close(seen[0][0], expected.expand(n, -1, -1, -1), atol=1e-6, rtol=1e-6)
    # Later clip: the previous clip's last n frames decoded, dropped with the same mask on every frame.
    decoded = vae.decode(out[f - n:f]).clamp(0, 1)
    torch.testing.assert_close(vae.inputs[1], torch.where(keep, decoded, torch.tensor(0.5)), atol=1e-6, rtol=0)


def test_without_the_portrait_the_decoded_reference_is_dropped(nets):
    _, net, _ = nets
    vae, v = RecordingVAE(), hallo_video(net, 2, image=False)
    generate(net, v, SamplerSettings(steps=1), codec=vae.codec(), drop_mask_fn=lambda clip, size: hand_mask(size))
    decoded = vae.decode(v.reference[None]).clamp(0, 1)
    torch.testing.assert_close(vae.inputs[0], torch.where(kept(hand_mask()), decoded, torch.tensor(0.5)),
                               atol=1e-6, rtol=0)


def test_continued_segments_drop_pixels_of_their_first_motion_frames(nets):
    _, net, _ = nets
    n = net.config.motion_frames
    vae, v = RecordingVAE(), hallo_video(net, 2)
    v.first_motion = torch.randn(n, 4, H, W, generator=torch.Generator().manual_seed(3))
    generate(net, v, SamplerSettings(steps=1), codec=vae.codec(), drop_mask_fn=lambda clip, size: hand_mask(size))
    decoded = vae.decode(v.first_motion).clamp(0, 1)
    torch.testing.assert_close(vae.inputs[0], torch.where(kept(hand_mask()), decoded, torch.tensor(0.5)),
                               atol=1e-6, rtol=0)


def consistent_video(net, frames):
    """A video whose reference latent is the VAE's latent of its portrait (as EMO Reference Encode makes it)."""
    v = hallo_video(net, frames)
    v.reference = TinyVAE().encode(v.reference_image[None])[0]
    return v


def test_rate_zero_is_bit_identical_to_hallo_and_the_rule_changes_the_video(nets):
    hallo, hallo2, zero = nets
    assert zero.config.family == "hallo2" and zero.config.motion_pixel_drop == 0
    f = hallo.config.clip_length
    settings = SamplerSettings(steps=2, seed=5)
    base = generate(hallo, consistent_video(hallo, f + 3), settings, codec=RecordingVAE().codec())
    assert torch.equal(base, generate(zero, consistent_video(zero, f + 3), settings, codec=RecordingVAE().codec()))
    # Keeping every pixel encodes the portrait's copies untouched (the video itself is compared with Hallo's
    # only at rate 0: a re-encoded copy may differ from the reference latent by an ulp, which a random
    # network can amplify without bound over clips), while Hallo2's seeded drop changes every clip.
    vae, video = RecordingVAE(), consistent_video(hallo2, f + 3)
    generate(hallo2, video, settings, codec=vae.codec(), drop_mask_fn=lambda clip, size: torch.ones(size, dtype=torch.bool))
    portrait = video.reference_image[None].expand_as(vae.inputs[0])
    torch.testing.assert_close(vae.inputs[0], portrait, atol=1e-6, rtol=0)
    dropped = generate(hallo2, consistent_video(hallo2, f + 3), settings, codec=RecordingVAE().codec())
    tolerance = 1e-3 * base.abs().max().item()
    for clip in (slice(0, f), slice(f, None)):
        assert (dropped[clip] - base[clip]).abs().max().item() > 10 * tolerance


def test_seeded_masks_same_seed_same_mask_other_clip_other_mask(nets, monkeypatch):
    import emo_core.sampler as sampler_module

    _, net, _ = nets
    masks = []

    def recording(seed, clip, size, rate):
        masks.append((seed, clip, keep_mask(seed, clip, size, rate)))
        return masks[-1][2]

    monkeypatch.setattr(sampler_module, "keep_mask", recording)
    f = net.config.clip_length
    outs = [generate(net, hallo_video(net, f + 1), SamplerSettings(steps=1, seed=9), codec=RecordingVAE().codec())
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert [(s, c) for s, c, _ in masks] == [(9, 0), (9, 1)] * 2
    assert torch.equal(masks[0][2], masks[2][2]) and torch.equal(masks[1][2], masks[3][2])
    assert not torch.equal(masks[0][2], masks[1][2])
    rate = net.config.motion_pixel_drop
    assert abs((~masks[0][2]).float().mean().item() - rate) < 0.1


def test_without_a_vae_the_rule_is_skipped_and_said(nets, caplog):
    _, net, _ = nets
    with caplog.at_level("WARNING", logger="emo_core.sampler"):
        out = generate(net, hallo_video(net, 2), SamplerSettings(steps=1))
    assert torch.isfinite(out).all() and "pixel drop" in caplog.text


# --- choosing the family ---------------------------------------------------------------------------------

def test_the_family_is_chosen_by_the_caller(parity_checkpoint):
    assert load_network(str(parity_checkpoint)).config.family == "hallo"  # auto: Hallo, as before
    net = load_network(str(parity_checkpoint), family="hallo2")
    assert (net.config.family, net.config.motion_pixel_drop) == ("hallo2", 0.25)
    with pytest.raises(IncompatibleCheckpointError, match="cannot load as family 'emo'"):
        load_network(str(parity_checkpoint), family="emo", device="meta")
    with pytest.raises(InvalidInputError, match="unknown model family"):
        load_network(str(parity_checkpoint), family="hallo3", device="meta")
    assert FAMILY_CHOICES[0] == "auto" and {"emo", "hallo", "hallo2"} <= set(FAMILY_CHOICES)


@pytest.mark.parametrize("rel, family", [("hallo2/net.safetensors", "hallo2"), ("Hallo2_net.safetensors", "hallo2"),
                                         ("hallo/net.safetensors", "hallo"), ("my_hallo_2.safetensors", "hallo")])
def test_the_family_follows_the_file_name(parity_checkpoint, tmp_path, rel, family):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(parity_checkpoint, path)
    assert load_network(str(path)).config.family == family
    assert load_network(str(path), family="hallo").config.family == "hallo"  # the caller wins


def test_metadata_wins_over_the_name(parity_checkpoint, tmp_path):
    """Hallo2's own `use_mask` / `mask_rate` in hallo_config make it Hallo2 with that rate; a native file
    keeps the family its emo_config names, whatever the file is called."""
    state, metadata = read_state_dict(str(parity_checkpoint))
    hallo = json.loads(metadata["hallo_config"])
    save_file(state, str(tmp_path / "plain.safetensors"),
              metadata={**metadata, "hallo_config": json.dumps({**hallo, "use_mask": True, "mask_rate": 0.3})})
    config = load_network(str(tmp_path / "plain.safetensors")).config
    assert (config.family, config.motion_pixel_drop) == ("hallo2", 0.3)
    (tmp_path / "hallo2").mkdir()
    save_native(load_network(str(parity_checkpoint)), str(tmp_path / "hallo2" / "native.safetensors"))
    assert load_network(str(tmp_path / "hallo2" / "native.safetensors")).config.family == "hallo"
    net = load_network(str(tmp_path / "hallo2" / "native.safetensors"), family="hallo2")
    assert net.config.family == "hallo2"


# --- the loader node -------------------------------------------------------------------------------------

def test_loader_family_input_has_a_tooltip_and_defaults_to_today(parity_checkpoint, tmp_path, monkeypatch):
    loader = load_pack().NODE_CLASS_MAPPINGS["EMO_ModelLoader"]
    types = loader.INPUT_TYPES()
    assert list(types["required"]) == ["model_name", "precision"]  # existing inputs unchanged
    choices, options = types["optional"]["family"]
    assert choices == list(FAMILY_CHOICES) and options["default"] == "auto"
    assert "auto" in options["tooltip"] and "name" in options["tooltip"]
    (tmp_path / "emo" / "hallo2").mkdir(parents=True)
    shutil.copy(parity_checkpoint, tmp_path / "emo" / "hallo_tiny.safetensors")
    shutil.copy(parity_checkpoint, tmp_path / "emo" / "hallo2" / "net.safetensors")
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path))
    assert {"hallo_tiny.safetensors", "hallo2/net.safetensors"} <= set(loader.INPUT_TYPES()["required"]["model_name"][0])

    def load(name, **kwargs):
        out = loader().load(model_name=name, precision="fp32", **kwargs)
        return out["result"][0], out["ui"]["emo_model"][0]

    model, info = load("hallo_tiny.safetensors")  # no family given: what the loader did before
    assert model.config.family == info["family"] == "hallo" and info["motion_pixel_drop"] == 0
    model, info = load("hallo_tiny.safetensors", family="hallo2")
    assert model.config.family == info["family"] == "hallo2" and info["motion_pixel_drop"] == 0.25
    assert load("hallo2/net.safetensors")[1]["family"] == "hallo2"


def run(node_id, **kwargs):
    node = load_pack().NODE_CLASS_MAPPINGS[node_id]()
    out = getattr(node, node.FUNCTION)(**kwargs)
    return out["result"] if isinstance(out, dict) else out


def test_hallo2_through_the_nodes_drops_pixels_of_the_portrait(parity, tmp_path, monkeypatch):
    """Loaded as Hallo2 by its folder name, the sampler node's first clip encodes the portrait itself (carried
    in EMO_REFERENCE) with about the rate of its pixels outside the face box dropped, the box untouched."""
    mediapipe_models_or_skip()
    (tmp_path / "emo" / "hallo2").mkdir(parents=True)
    write_parity_checkpoint(tmp_path / "emo" / "hallo2" / "net.safetensors", parity[2])
    shutil.copytree(parity_dir() / "wav2vec2", tmp_path / "audio_encoders" / "wav2vec2-tiny")
    monkeypatch.setenv("EMO_MODELS_DIR", str(tmp_path))
    (model,) = run("EMO_ModelLoader", model_name="hallo2/net.safetensors", precision="fp32")
    assert model.config.family == "hallo2"
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    vae, portrait = RecordingVAE(), load_image("portrait_astronaut_512.png", 128)
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=vae, image=portrait)
    feats, _, _ = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder,
                      audio=load_audio("speech_en_44k_stereo.wav", 0.3), fps=25.0)
    region, _ = run("EMO_FaceLocator", emo_model=model, image=portrait, expand_ratio=1.2)
    vae.inputs.clear()
    run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region, seed=4,
        steps=1, cfg=3.5, sampler_name="ddim", vae=vae)
    first, image = vae.inputs[0][0], portrait[0]
    box = region.region.mask[0] > 0
    assert box.any() and not box.all()
    assert torch.equal(first[box], image[box])
    outside, original = first[~box], image[~box]
    dropped = (outside == 0.5).all(-1)
    assert torch.equal(outside[~dropped], original[~dropped])
    assert abs(dropped.float().mean().item() - model.config.motion_pixel_drop) < 0.05


"""NaN / infinite IMAGE and LATENT values are refused where they enter, naming the input; guidance scales
at or below 1 disable classifier-free guidance, as the cfg tooltip says."""
from __future__ import annotations

import types

import pytest
import torch
from torch.testing import assert_close

from emo_core.errors import InvalidInputError
from emo_core.face import face_region
from emo_core.network import EmoNet
from emo_core.sampler import SamplerSettings, VideoConditions, generate

from comfy_fakes import TinyVAE, load_image
from conftest import load_pack, tiny_emo_config

pack = load_pack()
N = pack.NODE_CLASS_MAPPINGS
errors = pack.emo_core.errors
H = W = 8


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EmoNet(tiny_emo_config(clip_length=4, motion_frames=2)).eval()


def _video(net, frames=4):
    cfg, g = net.config, torch.Generator().manual_seed(1)
    ap = cfg.audio_projection
    mask = torch.zeros(cfg.face_locator.conditioning_channels, H * 8, W * 8)
    mask[:, 16:48, 16:48] = 1
    return VideoConditions(reference=torch.randn(4, H, W, generator=g) * 5, num_frames=frames, face_mask=mask,
                           audio=torch.randn(frames, ap.window, ap.blocks, ap.channels, generator=g))


def _spoil(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone(memory_format=torch.contiguous_format)
    x.view(-1)[x.numel() // 2] = value
    return x


@pytest.mark.parametrize("value, says", [(float("nan"), "1 NaN, 0 infinite"), (float("inf"), "0 NaN, 1 infinite"),
                                         (float("-inf"), "0 NaN, 1 infinite")])
def test_a_portrait_with_one_bad_pixel_is_refused_by_every_node_that_takes_it(value, says):
    image = _spoil(load_image("portrait_astronaut_512.png", 64), value)
    model = types.SimpleNamespace(config=tiny_emo_config(), net=None)
    vae = TinyVAE()
    with pytest.raises(errors.InvalidInputError, match=f"the reference image holds non-finite values \\({says}"):
        N["EMO_ReferenceEncode"]().encode(model, vae, image)
    assert vae.encoded == 0  # refused before the VAE ran
    with pytest.raises(errors.InvalidInputError, match=f"the face-locator image holds .*{says}"):
        N["EMO_FaceLocator"]().locate(model, image, 1.2)
    with pytest.raises(InvalidInputError, match="the image holds non-finite"):
        face_region(image, user_mask=torch.ones(64, 64))  # emo_core's own entry point


def test_a_vae_that_returns_nan_latents_is_named():
    class NanVAE(TinyVAE):
        def encode(self, image):
            return _spoil(super().encode(image), float("nan"))

    model = types.SimpleNamespace(config=tiny_emo_config(), net=None)
    with pytest.raises(errors.InvalidInputError, match="VAE's latent of the reference image .*--fp32-vae"):
        N["EMO_ReferenceEncode"]().encode(model, NanVAE(), load_image("portrait_astronaut_512.png", 64))


@pytest.mark.parametrize("field", ["reference", "audio", "face_mask"])
def test_the_sampler_refuses_non_finite_conditions(net, field):
    video = _video(net)
    setattr(video, field, _spoil(getattr(video, field), float("nan")))
    with pytest.raises(InvalidInputError, match=f"the {field.replace('_', ' ')} input of the sampler holds"):
        generate(net, video, SamplerSettings(steps=1))


def test_a_sampler_result_with_nan_is_an_error_not_a_black_video(net, monkeypatch):
    frames = 4
    monkeypatch.setattr(pack.nodes.sampler, "generate",
                        lambda *a, **k: _spoil(torch.zeros(frames, 4, H, W), float("nan")))
    from emo_core.audio import AudioFeatures

    handles, cfg = pack.nodes.handles, net.config
    model = handles.EmoModel(net, "tiny.safetensors", torch.device("cpu"), torch.float32)
    reference = handles.Reference(latent=torch.zeros(4, H, W), identity=None, features=None, model=model,
                                  image_size=(H * 8, W * 8))
    ap, clip = cfg.audio_projection, cfg.clip_length
    hidden = torch.zeros(-(-frames // clip) * clip, ap.blocks, ap.channels)
    feats = handles.AudioFeaturesHandle(AudioFeatures(hidden, frames, 25.0, frames / 25, ap.window), clip,
                                        cfg.motion_frames)
    region = types.SimpleNamespace(region=types.SimpleNamespace(mask=torch.zeros(1, H * 8, W * 8),
                                                                locator_input=torch.zeros(1, 1, H * 8, W * 8)),
                                   hallo_masks=None)
    with pytest.raises(errors.InvalidInputError, match="the sampled video holds non-finite .*fp32 or bf16"):
        N["EMO_Sampler"]().sample(model, reference, feats, region, 0, 1, 1.0, "ddim")


def _unet_batches(net, monkeypatch):
    seen = []
    forward = net.denoising_unet.forward

    def spy(x, *a, **k):
        seen.append(x.shape[0])
        return forward(x, *a, **k)

    monkeypatch.setattr(net.denoising_unet, "forward", spy)
    return seen


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_guidance_at_or_below_one_is_the_conditional_prediction_alone(net, monkeypatch, scale):
    video = _video(net)
    settings = dict(steps=2, seed=5)
    seen = _unet_batches(net, monkeypatch)
    out = generate(net, video, SamplerSettings(guidance_scale=scale, **settings))
    assert seen and set(seen) == {1}, "one conditional forward per step, no unconditional half"
    seen.clear()
    reference = generate(net, video, SamplerSettings(guidance_scale=1.0, **settings))
    assert_close(out, reference, atol=0, rtol=0)
    guided = generate(net, video, SamplerSettings(guidance_scale=3.5, **settings))
    assert set(seen[len(seen) // 2:]) == {2}  # [uncond; cond] in one batch
    assert (guided - out).abs().max() > 1e-4


def test_negative_guidance_is_refused_and_the_tooltip_says_what_happens(net):
    with pytest.raises(InvalidInputError, match="guidance_scale must be >= 0"):
        generate(net, _video(net), SamplerSettings(steps=1, guidance_scale=-0.5))
    cfg = N["EMO_Sampler"].INPUT_TYPES()["required"]["cfg"][1]
    # The node's only negative value, -1, stands for the family's default (tests/test_echomimic_nodes.py).
    assert cfg["min"] == -1.0 and "<= 1 disables it" in cfg["tooltip"] and "-1 = the loaded model's" in cfg["tooltip"]

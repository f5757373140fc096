"""Parity with Hallo's own code on the fixture set in EMO_PARITY_DIR (tolerances from its README).

Every size, count and setting is read from the fixture (tensor shapes and metadata), so another fixture
set in the same format passes these tests unchanged.
"""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from emo_core.network import ClipConditions
from emo_core.scheduling import build_scheduler, denoise_clip

from conftest import meta_json

SMALL = dict(atol=1e-5, rtol=1e-5)
BANK = dict(atol=1e-4, rtol=1e-4)
STEP = dict(atol=5e-4, rtol=5e-4)


def _reference(net, cases, meta):
    """ReferenceNet features for case d, with its inputs split into reference and motion-frame latents."""
    lat = cases["reference.latents"]
    batch = cases["denoise_step.latents"].shape[0]
    per_video = lat.shape[0] // batch
    assert per_video == int(meta["n_motion_frames"]) + 1
    lat = lat.reshape(batch, per_video, *lat.shape[1:])
    cond, uncond = net.identity_tokens(cases["imageproj.in"])
    guidance = float(meta["guidance_scale"]) > 1.0
    motion = lat[:, 1:] if per_video > 1 else None
    return net.encode_reference(lat[:, 0], motion, cond, uncond, guidance=guidance), cond, uncond


def _conditions(net, cases, meta):
    ref, cond, uncond = _reference(net, cases, meta)
    levels = len([k for k in cases if k.startswith("denoise_step.full_mask.")])
    masks = tuple([cases[f"denoise_step.{kind}_mask.{lv}"] for lv in range(levels)] for kind in ("full", "face", "lip"))
    return ClipConditions(audio=cases["audioproj.out"], face=cases["face_locator.out"], context=cond,
                          uncond_context=uncond, masks=masks, motion_scale=cases["denoise_step.motion_scale"],
                          reference=ref)


@torch.no_grad()
def test_audio_projection(parity, parity_net):
    _, cases, _ = parity
    assert_close(parity_net.audio_tokens(cases["audioproj.in"]), cases["audioproj.out"], **SMALL)


@torch.no_grad()
def test_identity_tokens_cond_and_uncond(parity, parity_net):
    _, cases, _ = parity
    cond, uncond = parity_net.identity_tokens(cases["imageproj.in"])
    assert_close(cond, cases["imageproj.out"], **SMALL)
    assert_close(uncond, cases["imageproj.out_uncond"], **SMALL)


@torch.no_grad()
def test_face_locator(parity, parity_net):
    _, cases, _ = parity
    frames = cases["face_locator.out"].shape[2]
    assert_close(parity_net.face_features(cases["face_locator.in"], frames), cases["face_locator.out"], **SMALL)


@torch.no_grad()
def test_reference_features_match_every_bank(parity, parity_net):
    _, cases, meta = parity
    ref, cond, uncond = _reference(parity_net, cases, meta)
    assert_close(torch.cat([uncond, cond]), cases["reference.encoder_hidden_states"], **SMALL)
    order = meta_json(meta, "reference_bank_order")
    assert len(order) == len(ref.tokens)
    for i, key in enumerate(order):
        ours = ref.tokens[key][:, None]
        if key in ref.motion:
            ours = torch.cat([ours, ref.motion[key]], dim=1)
        assert_close(ours.flatten(0, 1), cases[f"reference.bank.{i:03d}"], **BANK, msg=f"bank {i} ({key})")


@torch.no_grad()
def test_one_cfg_denoising_step(parity, parity_net):
    _, cases, meta = parity
    cond = _conditions(parity_net, cases, meta)
    guided, uncond, conditional = parity_net.denoise(cases["denoise_step.latents"], cases["denoise_step.timestep"],
                                                     cond, float(cases["denoise_step.guidance_scale"]))
    assert_close(uncond, cases["denoise_step.noise_pred_uncond"], **STEP)
    assert_close(conditional, cases["denoise_step.noise_pred_cond"], **STEP)
    assert_close(guided, cases["denoise_step.noise_pred"], **STEP)


@torch.no_grad()
def test_full_ddim_sampling_of_one_clip(parity, parity_net):
    _, cases, meta = parity
    cond = _conditions(parity_net, cases, meta)
    scheduler = build_scheduler("hallo", meta_json(meta, "scheduler_config"))
    steps = int(cases["sample_clip.num_inference_steps"])
    seen = []
    original_step = scheduler.step

    def recording_step(pred, t, x, **kw):
        seen.append((int(t), pred.clone()))
        out = original_step(pred, t, x, **kw)
        seen[-1] += (out.prev_sample.clone(),)
        return out

    scheduler.step = recording_step
    final = denoise_clip(parity_net, cases["sample_clip.noise"], cond, scheduler, steps,
                         float(meta["guidance_scale"]), eta=float(meta["eta"]))
    assert [t for t, *_ in seen] == cases["sample_clip.timesteps"].tolist()
    assert_close(scheduler.alphas_cumprod, cases["sample_clip.alphas_cumprod"], atol=1e-6, rtol=1e-6)
    for i, (_, pred, latents) in enumerate(seen):
        assert_close(pred, cases[f"sample_clip.noise_pred.{i}"], **STEP, msg=f"noise_pred step {i}")
        assert_close(latents, cases[f"sample_clip.latents.{i}"], **STEP, msg=f"latents step {i}")
    assert_close(final, cases["sample_clip.latents_final"], **STEP)


def _break_tiling(ref):
    ref.frame_major = False


def _break_reference(ref):
    ref.plain = 2 * ref.plain  # every row without the reference


def _distinct_halves(ref):
    """Where the fixture's two CFG halves carry the same reference tokens, make them differ, so a tiling
    mistake has something to mix up. With an odd motion-frame count Hallo's tiled ReferenceNet rows hand
    both reference rows the unconditional token set: there both tilings are the same function."""
    for key, tokens in ref.tokens.items():
        if tokens.shape[0] == 2 and torch.allclose(tokens[0], tokens[1], atol=1e-5, rtol=1e-5):
            # Rolled channels: other values of the same statistics (a token permutation would not do:
            # attention is blind to the order of its keys).
            ref.tokens[key] = torch.stack([tokens[0].roll(1, dims=-1), tokens[1]])


def _outside_tolerance(a, b) -> bool:
    try:
        assert_close(a, b, **STEP)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("mistake", [_break_reference, _break_tiling])
@torch.no_grad()
def test_semantic_errors_are_caught(parity, parity_net, mistake):
    """The parity tolerances see real mistakes: dropping reference-attention, or Hallo's frame-major tiling.

    Built to show the mistake on any fixture set: the broken network is compared with the unbroken one (which
    test_one_cfg_denoising_step ties to the fixture) on the fixture's step, with guidance on (the family's
    default when the fixture's scale would switch it off: both mistakes live in the guided batch), and for
    the tiling with CFG halves whose reference tokens differ (see _distinct_halves).
    """
    _, cases, meta = parity
    frames = cases["denoise_step.latents"].shape[2]
    if mistake is _break_tiling and frames == 1:
        pytest.skip("with one frame per clip both tilings are the same function; the fixture cannot show it")
    scale = float(cases["denoise_step.guidance_scale"])
    if scale <= 1.0:
        scale = parity_net.config.guidance_scale
    meta = {**meta, "guidance_scale": str(scale)}
    latents, timestep = cases["denoise_step.latents"], cases["denoise_step.timestep"]
    unbroken, broken = _conditions(parity_net, cases, meta), _conditions(parity_net, cases, meta)
    if mistake is _break_tiling:
        _distinct_halves(unbroken.reference)
        _distinct_halves(broken.reference)
    good = parity_net.denoise(latents, timestep, unbroken, scale)
    mistake(broken.reference)
    bad = parity_net.denoise(latents, timestep, broken, scale)
    # The parity test compares guided, unconditional and conditional predictions: one of them must move
    # beyond its tolerance.
    assert any(_outside_tolerance(b, g) for b, g in zip(bad, good)), \
        f"{mistake.__name__} stays within the parity tolerance; the parity tests could not see it"


@torch.no_grad()
def test_sample_clip_reproduces_through_the_chunked_sampler(parity, parity_net):
    """The fixture's whole sample_clip case through emo_core.sampler.generate: reference and motion-frame
    latents, audio windows, face mask, masks, identity, noise and schedule all from the fixture."""
    from emo_core.sampler import SD15_LATENT_SCALE, SamplerSettings, VideoConditions, generate

    _, cases, meta = parity
    lat = cases["reference.latents"] / SD15_LATENT_SCALE  # the sampler takes ComfyUI's unscaled latents
    frames = cases["sample_clip.noise"].shape[2]
    levels = len([k for k in cases if k.startswith("denoise_step.full_mask.")])
    masks = tuple([cases[f"denoise_step.{kind}_mask.{lv}"] for lv in range(levels)] for kind in ("full", "face", "lip"))
    video = VideoConditions(reference=lat[0], audio=cases["audioproj.in"][0], num_frames=frames,
                            face_mask=cases["face_locator.in"][0], masks=masks, identity=cases["imageproj.in"][0],
                            first_motion=lat[1:])
    assert meta_json(meta, "scheduler_config")["prediction_type"] == "v_prediction"
    settings = SamplerSettings(steps=int(cases["sample_clip.num_inference_steps"]), clip_length=frames,
                               guidance_scale=float(meta["guidance_scale"]), eta=float(meta["eta"]),
                               motion_scale=tuple(cases["denoise_step.motion_scale"].tolist()))
    out = generate(parity_net, video, settings, noise_fn=lambda clip, shape: cases["sample_clip.noise"])
    expected = cases["sample_clip.latents_final"][0].permute(1, 0, 2, 3) / SD15_LATENT_SCALE
    assert_close(out, expected, atol=5e-4 / SD15_LATENT_SCALE, rtol=5e-4)

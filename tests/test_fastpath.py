"""The fast path's per-clip caches (emo_core.fastpath) give the plain path's video, and do their work once:
audio keys/values once per clip per audio module, the face locator on one frame of a static mask, nothing
for the unconditional rows' all-zero audio. The parity tests (tests/test_parity_hallo.py,
tests/test_echomimic_network.py) run with it on, at the fixtures' tolerances."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.testing import assert_close

from emo_core import fastpath
from emo_core.models.attention import AudioBlock
from emo_core.sampler import SamplerSettings, generate

from test_compile import FAMILIES, _float64, echomimic_net, emo_net, family_run  # noqa: F401  (fixtures)


@pytest.mark.parametrize("guidance", [2.0, 1.0])
@pytest.mark.parametrize("family_run", FAMILIES, indirect=True)
def test_every_step_of_a_run_gives_the_plain_paths_prediction(family_run, guidance, monkeypatch):
    """Each network call of a whole fast run (cached conditions reused from the second step on, new ones per
    clip or window) against the plain path on the very same inputs, in float64: there the caches' other
    order of operations (keys projected apart, the face locator on 1 frame instead of F) leaves nothing but
    rounding, so a tolerance of 1e-9 proves them exact. (In float32 they round differently by up to ~1e-5.)"""
    net, video = _float64(*family_run)
    real = net.denoise
    pairs = []

    def both(latents, t, cond, scale):
        out = real(latents, t, cond, scale)
        with fastpath.enabled(False):
            pairs.append((out[0], real(latents, t, cond, scale)[0]))
        return out

    monkeypatch.setattr(net, "denoise", both)
    steps = 3
    with fastpath.enabled(True):
        generate(net, video, SamplerSettings(steps=steps, guidance_scale=guidance, seed=7))
    assert len(pairs) >= 2 * steps
    for fast, plain in pairs:
        assert fast.dtype == torch.float64
        assert_close(fast, plain, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("family_run", ["emo", "hallo"], indirect=True)
def test_audio_keys_and_values_are_projected_once_per_clip(family_run, monkeypatch):
    net, video = family_run
    blocks = [m for m in net.denoising_unet.modules() if isinstance(m, AudioBlock)]
    calls = []
    real = AudioBlock.project_audio
    monkeypatch.setattr(AudioBlock, "project_audio", lambda self, audio: (calls.append(audio.shape), real(self, audio))[1])
    steps = 3
    generate(net, video, SamplerSettings(steps=steps, guidance_scale=2.0))
    clip = net.config.clip_length
    clips = -(-video.num_frames // clip)
    assert len(calls) == clips * len(blocks)
    assert all(shape[0] == clip for shape in calls)  # the conditional rows only: CFG's zero audio is skipped


@pytest.mark.parametrize("family_run", ["emo", "hallo"], indirect=True)
def test_motion_constants_and_identity_folds_are_built_once_per_clip(family_run, monkeypatch):
    """The temporal modules' motion-frame part and the identity cross-attention's folded maps are per-clip work."""
    from emo_core.models.context_fold import ContextFold
    from emo_core.models.motion import TemporalTransformer

    net, video = family_run
    unet = net.denoising_unet
    with torch.no_grad():
        folds = len(unet.context_folds(torch.zeros(1, 1, net.config.unet.cross_attention_dim))) \
            if net.config.identity else 0
    seen = {"motion": 0, "fold": 0}
    real_motion, real_fold = TemporalTransformer.motion_constants, ContextFold.compose.__func__

    def motion_constants(self, motion):
        seen["motion"] += 1
        return real_motion(self, motion)

    def compose(cls, attn, context):
        seen["fold"] += 1
        return real_fold(cls, attn, context)

    monkeypatch.setattr(TemporalTransformer, "motion_constants", motion_constants)
    monkeypatch.setattr(ContextFold, "compose", classmethod(compose))
    generate(net, video, SamplerSettings(steps=3, guidance_scale=2.0))
    clips = -(-video.num_frames // net.config.clip_length)
    motion_modules = sum(len(b.motion_modules) for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)
                         if b.attentions or (b.apply_plain_motion and b.motion_keys))
    assert net.config.motion_frames > 0 and motion_modules > 0
    assert seen["motion"] == clips * motion_modules
    assert seen["fold"] == clips * folds
    assert (folds > 0) == (net.config.family == "hallo")


@pytest.mark.parametrize("family_run", ["hallo"], indirect=True)
def test_a_run_under_inference_mode_equals_one_under_no_grad(family_run):
    """ComfyUI runs nodes under torch.inference_mode (weights and every cached tensor are inference tensors):
    the per-clip caches must work there and give the same video."""
    net, video = family_run
    settings = SamplerSettings(steps=2, guidance_scale=2.0, seed=3)
    with torch.no_grad():
        want = generate(net, video, settings)
    with torch.inference_mode():
        loaded = copy.deepcopy(net)  # weights made in inference mode, as ComfyUI's loader makes them
        got = generate(loaded, video, settings)
    assert next(loaded.parameters()).is_inference()
    assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_the_face_locator_runs_one_frame_of_a_static_mask(emo_net):
    net = emo_net
    mask = (torch.rand(1, net.config.face_locator.conditioning_channels, 64, 64) > 0.5).float()
    seen = []
    handle = net.face_locator.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[2]))
    try:
        with torch.no_grad(), fastpath.enabled(True):
            fast = net.face_features(mask, 6)
        with torch.no_grad(), fastpath.enabled(False):
            plain = net.face_features(mask, 6)
    finally:
        handle.remove()
    assert seen == [1, 6] and fast.shape == plain.shape
    assert_close(fast, plain, atol=1e-6, rtol=1e-6)


def test_changed_conditions_are_not_served_from_the_cache(emo_net):
    """The per-clip conditions are rebuilt when a field of the ClipConditions is replaced."""
    import test_emo_network

    latents, cond = test_emo_network.inputs(emo_net, h=8, w=8)
    net, latents, cond = copy.deepcopy(emo_net).double(), _double(latents), _double(cond)  # exact: see above
    latents = latents[:, :, :net.config.clip_length]
    first = test_emo_network.predict(net, latents, cond)
    cond.audio = torch.zeros_like(cond.audio)
    changed = test_emo_network.predict(net, latents, cond)
    with fastpath.enabled(False):
        plain = test_emo_network.predict(net, latents, cond)
    assert not torch.allclose(first, changed, atol=1e-6, rtol=1e-6)
    assert_close(changed, plain, atol=1e-9, rtol=1e-9)


def _double(value):
    """A copy of conditions (tensors, dataclasses, lists, dicts of them) with float tensors in float64."""
    if isinstance(value, torch.Tensor):
        return value.detach().double() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_double(v) for v in value)
    if isinstance(value, dict):
        return {k: _double(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _double(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value

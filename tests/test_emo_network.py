"""The EMO configuration on a tiny random network: shapes, determinism, speed, motion frames, dtypes."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from emo_core.errors import InvalidConfigError, InvalidInputError
from emo_core.models.attention import SpatialTransformer
from emo_core.models.motion import SpeedAttention
from emo_core.network import ClipConditions, EmoNet

from conftest import tiny_emo_config


def build(config, seed=0):
    torch.manual_seed(seed)
    return EmoNet(config).eval()


def inputs(net, batch=1, h=16, w=16, seed=1, motion="latents", speed_seed=2):
    """Random clip conditions in EMO's layout: f frames, n motion frames, 1-channel face mask."""
    cfg = net.config
    g = torch.Generator().manual_seed(seed)
    frames, n = cfg.clip_length, cfg.motion_frames
    ap = cfg.audio_projection
    ref_latent = torch.randn(batch, 4, h, w, generator=g)
    motion_latents = torch.randn(batch, n, 4, h, w, generator=g) if motion == "latents" else None
    context, uncond = net.identity_tokens(None, batch)
    reference = net.encode_reference(ref_latent, motion_latents, context, uncond, guidance=True,
                                     zero_motion=n if motion == "zeros" else 0)
    audio = net.audio_tokens(torch.randn(batch, frames, ap.window, ap.blocks, ap.channels, generator=g))
    mask = (torch.rand(batch, 1, h * 8, w * 8, generator=g) > 0.5).float()
    sg = torch.Generator().manual_seed(speed_seed)
    speed = net.speed_tokens(torch.rand(batch, frames, cfg.speed.window, len(cfg.speed.centres), generator=sg) * 2 - 1)
    latents = torch.randn(batch, 4, frames, h, w, generator=g)
    cond = ClipConditions(audio=audio, face=net.face_features(mask, frames), context=context, uncond_context=uncond,
                          speed=speed, reference=reference)
    return latents, cond


def predict(net, latents, cond, t=500, scale=3.5):
    with torch.no_grad():
        return net.denoise(latents, torch.tensor(t), cond, scale)[0]


def randomise_speed_layers(net, seed=5):
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, SpeedAttention):
            for p in module.attn.to_out[0].parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.5


@pytest.mark.parametrize("batch", [1, 2])
def test_shapes_follow_emo_clip_settings(tiny_config, batch):
    net = build(tiny_config)
    latents, cond = inputs(net, batch=batch)
    assert tiny_config.clip_length == 12 and tiny_config.motion_frames == 4
    assert cond.audio.shape == (batch, 12, 4, 16)
    assert cond.speed.shape == (batch, 12, 2, 16)
    # The EMO preset adds the face locator's output to the noisy latent: 4 channels at latent size.
    assert tiny_config.face_added_to == "latent"
    assert cond.face.shape == (batch, tiny_config.unet.in_channels, 12, 16, 16)
    ref = cond.reference
    assert ref.plain == batch  # [uncond; cond]: the first half attends without the reference
    transformers = sum(isinstance(m, SpatialTransformer) for m in net.denoising_unet.modules())
    plain_keys = net.denoising_unet.plain_motion_keys()
    assert plain_keys and set(ref.tokens) == set(ref.motion) and len(ref.tokens) == transformers + len(plain_keys)
    assert all(v.shape[:2] == (2 * batch, 4) for v in ref.motion.values())
    out = predict(net, latents, cond)
    assert out.shape == (batch, 4, 12, 16, 16) and torch.isfinite(out).all()


def test_same_seed_same_output(tiny_config):
    a, b = build(tiny_config, seed=3), build(tiny_config, seed=3)
    assert_close(predict(a, *inputs(a)), predict(b, *inputs(b)), atol=0, rtol=0)
    c = build(tiny_config, seed=4)
    assert not torch.equal(predict(a, *inputs(a)), predict(c, *inputs(c)))


def test_speed_layers_start_neutral_and_speed_changes_output_once_trained(tiny_config):
    net = build(tiny_config)
    lat, slow = inputs(net, speed_seed=10)
    _, fast = inputs(net, speed_seed=11)
    assert not torch.equal(slow.speed, fast.speed)
    assert_close(predict(net, lat, slow), predict(net, lat, fast), atol=0, rtol=0)
    randomise_speed_layers(net)
    assert (predict(net, lat, slow) - predict(net, lat, fast)).abs().max() > 1e-3


def test_motion_frames_change_the_output(tiny_config):
    net = build(tiny_config)
    lat, cond_a = inputs(net, seed=1)
    _, cond_b = inputs(net, seed=7)
    cond_b.audio, cond_b.face, cond_b.speed = cond_a.audio, cond_a.face, cond_a.speed
    # Same reference image and conditions, other motion-frame latents: only the motion features differ.
    cond_b.reference.tokens = cond_a.reference.tokens
    _, cond_zero = inputs(net, seed=1, motion="zeros")
    assert all(float(v.abs().max()) == 0 for v in cond_zero.reference.motion.values())
    out_a, out_b, out_zero = (predict(net, lat, c) for c in (cond_a, cond_b, cond_zero))
    assert (out_a - out_b).abs().max() > 1e-3
    assert (out_a - out_zero).abs().max() > 1e-3


def test_without_guidance_all_rows_use_the_reference(tiny_config):
    net = build(tiny_config)
    lat, cond = inputs(net)
    context, _ = net.identity_tokens(None, 1)
    ref = net.encode_reference(torch.zeros(1, 4, 16, 16), None, context, context, guidance=False)
    assert ref.plain == 0 and ref.motion == {}
    cond.reference = ref
    guided, uncond, conditional = net.denoise(lat, 10, cond, 1.0)
    assert guided is conditional and guided.shape == lat.shape


@pytest.mark.parametrize("hw", [(10, 6), (6, 13), (8, 24)])
def test_non_square_latents(tiny_config, hw):
    net = build(tiny_config)
    lat, cond = inputs(net, h=hw[0], w=hw[1])
    out = predict(net, lat, cond)
    assert out.shape == (1, 4, 12, *hw) and torch.isfinite(out).all()


def test_non_square_reference_tokens_are_row_major(tiny_config):
    net = build(tiny_config)
    _, cond = inputs(net, h=8, w=12)
    key = "down_blocks.0.attentions.0.transformer_blocks.0"
    _, _, motion = cond.reference.for_block(key, 12, 8, 12)
    flat = cond.reference.motion[key]  # (B, n, h*w, C)
    assert motion.shape == (2, 32, 4, 8, 12)
    assert_close(motion[:, :, :, 2, 5], flat[:, :, 2 * 12 + 5].transpose(1, 2))


def test_runs_in_bfloat16_on_cpu(tiny_config):
    net = build(tiny_config).to(torch.bfloat16)
    lat, cond = inputs(net)
    out = predict(net, lat.to(torch.bfloat16), cond)
    assert out.dtype == torch.bfloat16 and out.shape == lat.shape and torch.isfinite(out.float()).all()


def test_bad_inputs_get_clear_errors(tiny_config):
    net = build(tiny_config)
    with pytest.raises(InvalidInputError, match=r"audio features must be"):
        net.audio_tokens(torch.zeros(1, 12, 5, 4, 16))
    with pytest.raises(InvalidInputError, match=r"1 channel"):
        net.face_features(torch.zeros(1, 3, 128, 128), 12)


def test_hierarchical_audio_needs_masks(parity_net):
    _, cond = inputs_for_hallo(parity_net)
    cond.masks = None
    with pytest.raises(InvalidInputError, match="full/face/lip masks"):
        predict(parity_net, torch.zeros(1, 4, 4, 8, 8), cond)


def inputs_for_hallo(net, h=8, w=8, frames=4):
    ap = net.config.audio_projection
    emb = torch.randn(1, net.config.identity.embedding_dim)
    cond_tokens, uncond = net.identity_tokens(emb)
    ref = net.encode_reference(torch.randn(1, 4, h, w), torch.randn(1, 2, 4, h, w), cond_tokens, uncond, True)
    levels = len(net.config.unet.block_out_channels)
    sizes = [((h + 2 ** l - 1) // 2 ** l) * ((w + 2 ** l - 1) // 2 ** l) for l in range(levels)]
    masks = tuple([torch.ones(frames, s) for s in sizes] for _ in range(3))
    audio = net.audio_tokens(torch.randn(1, frames, ap.window, ap.blocks, ap.channels))
    face = net.face_features(torch.ones(1, 3, h * 8, w * 8), frames)
    return None, ClipConditions(audio=audio, face=face, context=cond_tokens, uncond_context=uncond, masks=masks,
                                motion_scale=torch.ones(3), reference=ref)


def test_hallo_weights_run_non_square_latents(parity_net):
    """Hallo's own code cannot run these (square reshape); ours can."""
    _, cond = inputs_for_hallo(parity_net, h=12, w=20)
    out = predict(parity_net, torch.randn(1, 4, 4, 12, 20), cond)
    assert out.shape == (1, 4, 4, 12, 20) and torch.isfinite(out).all()


def test_config_errors_name_the_field():
    with pytest.raises(InvalidConfigError, match=r"clip_length"):
        tiny_emo_config(clip_length=40)
    with pytest.raises(InvalidConfigError, match=r"audio_attention.form"):
        from emo_core.config import AudioAttentionConfig
        tiny_emo_config(audio_attention=AudioAttentionConfig(form="stacked", audio_dim=16))

"""The EMO preset follows the paper (arXiv 2402.17485, section 3.2) where it is specific, and Hallo's choices stay
Hallo's: speed layers across the clip's frames, motion frames in every temporal module, reference-attention in
SD's cross-attention slot, the face locator added to the noisy latent. Old native EMO files load as they were."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from einops import rearrange
from safetensors import safe_open
from safetensors.torch import save_file

from emo_core.checkpoint import load_network, save_native
from emo_core.config import EMO_PAPER_CHOICES, HALLO_CODE_CHOICES, IdentityConfig, emo_preset, hallo_preset
from emo_core.errors import InvalidConfigError
from emo_core.models.attention import ReferenceTransformerBlock
from emo_core.models.motion import MotionModule, SpeedAttention
from emo_core.network import EmoNet

from conftest import tiny_emo_config
from test_emo_network import build, inputs, predict, randomise_speed_layers


def old_emo_config(**overrides):
    """The tiny EMO configuration as native EMO files were written before the paper's choices were fields."""
    return tiny_emo_config(**HALLO_CODE_CHOICES, reference_cross_attention=True, **overrides)


# -- speed layers ------------------------------------------------------------------------------------------------
def _speed_layer(across: bool, cfg, seed=0):
    torch.manual_seed(seed)
    layer = SpeedAttention(32, cfg.motion.heads, cfg.speed.output_dim, across_frames=across).eval()
    torch.nn.init.normal_(layer.attn.to_out[0].weight)  # a trained layer: the zero start would hide everything
    return layer


@pytest.mark.parametrize("across", [True, False])
def test_one_frames_speed_reaches_every_frame_only_across_frames(tiny_config, across):
    cfg, batch, tokens = tiny_config, 2, 6
    frames = cfg.clip_length
    layer = _speed_layer(across, cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch * tokens, frames, 32, generator=g)
    speed = torch.randn(batch, frames, cfg.speed.tokens, cfg.speed.output_dim, generator=g)
    changed = speed.clone()
    changed[:, 7] += 1.0
    with torch.no_grad():
        diff = (layer(x, speed, tokens) - layer(x, changed, tokens)).abs().amax(dim=(0, 2))  # per frame
    others = torch.cat([diff[:7], diff[8:]])
    assert diff[7] > 1e-3
    if across:
        assert (others > 1e-4).all()
    else:
        assert float(others.max()) == 0.0


def test_across_frames_is_the_papers_repeat_and_cross_attend(tiny_config):
    """Paper: speed features repeated to (b*h*w) x f x c_speed, cross-attention with the feature map reshaped
    across the temporal dimension f. The layer does it without the copies; the result must be the same."""
    cfg, batch, tokens = tiny_config, 2, 5
    frames = cfg.clip_length
    layer = _speed_layer(True, cfg)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch * tokens, frames, 32, generator=g)
    speed = torch.randn(batch, frames, cfg.speed.tokens, cfg.speed.output_dim, generator=g)
    repeated = speed.flatten(1, 2).repeat_interleave(tokens, dim=0)  # ((b h w), f*T, S)
    with torch.no_grad():
        literal = x + layer.attn(layer.norm(x), encoder_hidden_states=repeated)
        ours = layer(x, speed, tokens)
    torch.testing.assert_close(ours, literal, atol=1e-5, rtol=1e-5)


def test_zero_started_speed_layers_leave_the_network_unchanged(tiny_config):
    assert tiny_config.speed_attention == "across_frames"
    net = build(tiny_config)
    lat, cond = inputs(net, speed_seed=10)
    with_speed = predict(net, lat, cond)
    cond.speed = None
    assert torch.equal(with_speed, predict(net, lat, cond))
    randomise_speed_layers(net)
    assert not torch.equal(with_speed, predict(net, lat, inputs(net, speed_seed=10)[1]))


# -- motion frames in every temporal module ------------------------------------------------------------------------
def _motion_seen(net, lat, cond) -> list[int]:
    """How many motion frames each temporal module received in one prediction (0 = none)."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(0 if args[1] is None else args[1].shape[2]))
             for m in net.denoising_unet.modules() if isinstance(m, MotionModule)]
    try:
        predict(net, lat, cond)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_every_temporal_module_sees_the_motion_frames_in_the_emo_preset(tiny_config):
    net = build(tiny_config)
    modules = sum(isinstance(m, MotionModule) for m in net.denoising_unet.modules())
    seen = _motion_seen(net, *inputs(net))
    assert len(seen) == modules and set(seen) == {tiny_config.motion_frames}


def test_without_plain_block_motion_the_attention_free_blocks_see_none():
    config = old_emo_config()
    net = build(config)
    seen = _motion_seen(net, *inputs(net))
    plain = sum(len(b.motion_modules) for b in [*net.denoising_unet.down_blocks, *net.denoising_unet.up_blocks]
                if not b.attentions)
    assert plain > 0 and seen.count(0) == plain and net.denoising_unet.plain_motion_keys() == []


def test_the_attention_free_blocks_read_referencenets_resnet_outputs(tiny_config):
    net = build(tiny_config)
    lat, cond = inputs(net)
    keys = net.denoising_unet.plain_motion_keys()
    resnets = dict(net.reference_unet.named_modules())
    for key in keys:  # the same path in ReferenceNet, and its output's width
        width = resnets[key].out_channels
        assert cond.reference.motion[key].shape[-1] == width
    before = predict(net, lat, cond)
    g = torch.Generator().manual_seed(9)  # not a constant shift: the temporal modules' GroupNorm would remove it
    cond.reference.motion = {k: (torch.randn(v.shape, generator=g) if k in keys else v)
                             for k, v in cond.reference.motion.items()}
    assert (predict(net, lat, cond) - before).abs().max() > 1e-4


# -- reference-attention in the cross-attention slot --------------------------------------------------------------
def test_reference_attention_takes_the_text_slot_and_no_text_attention_is_left(tiny_config):
    net = build(tiny_config)
    blocks = [m for m in net.denoising_unet.modules() if isinstance(m, ReferenceTransformerBlock)]
    assert blocks and all(b.reference_in_cross and b.attn2.to_k.in_features == b.norm1.normalized_shape[0]
                          for b in blocks)
    assert not any(getattr(m, "attn2", None) is not None for m in net.reference_unet.modules())
    lat, cond = inputs(net)
    before = predict(net, lat, cond)
    g = torch.Generator().manual_seed(9)
    cond.reference.tokens = {k: torch.randn(v.shape, generator=g) for k, v in cond.reference.tokens.items()}
    cond.reference.kv = {}
    assert (predict(net, lat, cond) - before).abs().max() > 1e-4


def test_reference_in_cross_slot_refuses_what_needs_the_text_slot():
    with pytest.raises(InvalidConfigError, match="identity"):
        emo_preset(identity=IdentityConfig())
    assert hallo_preset().reference_attention == "self_concat"  # Hallo keeps its layout


def test_the_paper_choices_drop_the_dead_text_cross_attention():
    """Full size on the meta device: the preset has no text cross-attention left (it attended to one zero token)."""
    with torch.device("meta"):
        old = EmoNet(dataclasses.replace(emo_preset(), **HALLO_CODE_CHOICES, reference_cross_attention=True))
        new = EmoNet(emo_preset())
    text = sum(p.numel() for n, p in old.named_parameters() if ".attn2." in n and "audio_modules" not in n)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert text > 0 and count(new) < count(old)
    assert not any(".attn2." in n for n, _ in new.reference_unet.named_parameters())


# -- face locator ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("place", ["latent", "features"])
def test_face_locator_adds_where_the_config_says(place):
    net = build(tiny_emo_config(face_added_to=place))
    lat, cond = inputs(net)
    seen = {}
    unet = net.denoising_unet
    hooks = [unet.conv_in.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out)),
             unet.down_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(z=args[0]))]
    try:
        predict(net, lat, cond)  # under guidance: rows [uncond; cond], the unconditional half without the face
    finally:
        for hook in hooks:
            hook.remove()
    after_conv_in = rearrange(seen["z"], "b c f h w -> (b f) c h w")
    face = rearrange(torch.cat([torch.zeros_like(cond.face), cond.face]), "b c f h w -> (b f) c h w")
    sample = rearrange(torch.cat([lat, lat]), "b c f h w -> (b f) c h w")
    if place == "latent":
        assert face.shape[1] == net.config.unet.in_channels
        torch.testing.assert_close(seen["x"], sample + face, atol=0, rtol=0)
        torch.testing.assert_close(after_conv_in, seen["y"], atol=0, rtol=0)
    else:
        assert face.shape[1] == net.config.unet.block_out_channels[0]
        torch.testing.assert_close(seen["x"], sample, atol=0, rtol=0)
        torch.testing.assert_close(after_conv_in, seen["y"] + face, atol=0, rtol=0)


# -- checkpoints: the new preset round-trips, an old native file keeps its behaviour --------------------------------
def _strip_paper_fields(path, dest):
    with safe_open(str(path), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    config = json.loads(meta["emo_config"])
    for name in EMO_PAPER_CHOICES:
        if name != "reference_cross_attention":  # an existing field: old files hold it
            del config[name]
    meta["emo_config"] = json.dumps(config)
    save_file(state, str(dest), metadata=meta)


def test_an_old_native_emo_file_loads_with_its_old_behaviour(tmp_path):
    torch.manual_seed(0)
    net = EmoNet(old_emo_config()).eval()
    randomise_speed_layers(net)
    written = tmp_path / "written.safetensors"
    save_native(net, str(written))
    old = tmp_path / "old.safetensors"
    _strip_paper_fields(written, old)
    loaded = load_network(str(old))
    assert loaded.config == net.config
    assert all(getattr(loaded.config, k) == v for k, v in HALLO_CODE_CHOICES.items())
    lat, cond = inputs(net)
    assert torch.equal(predict(net, lat, cond), predict(loaded, lat, inputs(loaded)[1]))


def test_the_new_preset_round_trips_with_its_choices(tmp_path):
    torch.manual_seed(0)
    net = EmoNet(tiny_emo_config()).eval()
    path = tmp_path / "new.safetensors"
    save_native(net, str(path))
    loaded = load_network(str(path))
    assert all(getattr(loaded.config, k) == v for k, v in EMO_PAPER_CHOICES.items())
    assert loaded.config == net.config

"""The trainer (emo_core.train): stage parameter selection, initialisation key maps, loss, DDP equivalence,
exact resume and the written files working in the loader node and the sampler. Tiny configs on the CPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import parity_dir, shared_file, tiny_emo_config
from emo_core.config import EmoNetConfig
from emo_core.network import EmoNet
from emo_core.train import stages
from emo_core.train.config import STAGE_GROUPS, STAGES, TrainConfig, load_config, parse_override
from train_helpers import plain_cpu_kernels  # noqa: F401  (autouse fixture)
from train_helpers import (ListDataset, Run, data_shape, launch, load_in_loader_node, read_losses, tiny_samples,
                           write_network_config)

NET = tiny_emo_config(clip_length=4, motion_frames=2)
PIXELS = 96  # latent 12x12; at 8x8 the lowest level is 1x1, where CPU GroupNorm backward crashes
FRAMES = NET.clip_length + NET.motion_frames + 2



def _dataset(count=4, **kw):
    layers, hidden = data_shape(NET)
    return ListDataset(tiny_samples(count, FRAMES, PIXELS, layers, hidden, **kw))


def _config(tmp: Path, stage="stage3", **overrides) -> TrainConfig:
    base = dict(network=str(write_network_config(NET, tmp / "net.json")), batch_size=2, max_steps=2,
                clip_frames=NET.clip_length, motion_frames=NET.motion_frames, mixed_precision="no", num_workers=0,
                sample_every=0, checkpoint_every=0, gradient_checkpointing=False, learning_rate=1e-3, ema=False)
    return load_config(None, {**base, **overrides}, stage=stage)


# --- configs and parameter groups ------------------------------------------------------------------------

def test_packaged_configs_carry_the_paper_defaults():
    paper = EmoNetConfig()  # f and n of the network preset are the paper's
    for stage in STAGES:
        cfg = load_config(None, {"init_from": "x"} if stage == "hallo_speed" else None, stage=stage)
        assert cfg.stage == stage and cfg.learning_rate == TrainConfig.learning_rate
        if stage in ("stage2", "stage3"):
            assert (cfg.clip_frames, cfg.motion_frames, cfg.batch_size) == (
                paper.clip_length, paper.motion_frames, TrainConfig.batch_size)
    assert load_config(None, stage="stage1").batch_size > TrainConfig.batch_size  # images: the large batch


def test_bad_config_values_say_which_field(tmp_path):
    from emo_core.errors import InvalidConfigError
    with pytest.raises(InvalidConfigError, match="stage"):
        load_config(None, {"stage": "stage9"}, stage="stage3")
    with pytest.raises(InvalidConfigError, match="unknown keys"):
        _config(tmp_path, lr=1)
    with pytest.raises(InvalidConfigError, match="init_from"):
        load_config(None, stage="hallo_speed").check_runnable()
    with pytest.raises(InvalidConfigError, match="key=value"):
        parse_override("learning_rate")


def test_overrides_read_toml_values_and_plain_paths():
    assert parse_override("learning_rate=2e-5") == ("learning_rate", 2e-5)
    assert parse_override("trainable=['speed', 'temporal']") == ("trainable", ["speed", "temporal"])
    assert parse_override("init_from=runs/s2/emo_stage2.safetensors") == ("init_from", "runs/s2/emo_stage2.safetensors")


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_each_stage_trains_only_its_groups(stage):
    net = EmoNet(NET)
    names = stages.select_trainable(net, STAGE_GROUPS[stage])
    groups = {stages.parameter_group(n) for n in names}
    assert groups == set(STAGE_GROUPS[stage])
    for name, p in net.named_parameters():
        assert p.requires_grad == (stages.parameter_group(name) in STAGE_GROUPS[stage]), name
    if stage == "stage3":  # the paper: audio layers frozen while the speed layers learn
        assert not any(p.requires_grad for n, p in net.named_parameters() if "audio" in n)
        assert any(p.requires_grad for n, p in net.named_parameters() if ".speed." in n or "speedproj" in n)


# --- initialisation key maps ------------------------------------------------------------------------------

def test_sd_init_fills_matching_tensors_and_reports_the_rest(tmp_path):
    from diffusers import UNet2DConditionModel
    u = NET.unet
    torch.manual_seed(1)
    UNet2DConditionModel(block_out_channels=u.block_out_channels, layers_per_block=u.layers_per_block,
                         cross_attention_dim=u.cross_attention_dim, attention_head_dim=u.attention_heads,
                         norm_num_groups=u.norm_num_groups).save_pretrained(tmp_path / "unet")
    sd = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    net = EmoNet(NET)
    report = stages.init_from_sd(net, str(tmp_path))
    state = net.state_dict()
    assert report.loaded and all(torch.equal(state[k], sd[k.split(".", 1)[1]]) for k in report.loaded)
    assert any(k.startswith("reference_unet.") for k in report.loaded)
    assert any(k.startswith("denoising_unet.") for k in report.loaded)
    # EMO preset: attn2 takes the reference tokens, so SD's text-width key/value projections cannot fit
    assert any("attn2.to_k" in k for k in report.left) and any("attn2.to_k" in s for s in report.skipped)
    assert not any(stages.parameter_group(k) in ("temporal", "audio", "speed") for k in report.left)


def test_animatediff_map_covers_the_full_size_mm_v2_layout():
    keys = shared_file("parity", "keys-hallo-full.txt").read_text().splitlines()
    hallo_motion = {k.split("\t")[0].removeprefix("denoising_unet.") for k in keys if ".motion_modules." in k}
    with torch.device("meta"):
        net = EmoNet(dataclasses.replace(EmoNetConfig(), speed=None))
    ours = {k.removeprefix("denoising_unet.") for k in net.state_dict() if ".motion_modules." in k}
    assert hallo_motion and hallo_motion == ours  # Hallo's motion modules are AnimateDiff mm_sd_v15_v2's


def test_animatediff_init_loads_motion_modules(tmp_path):
    net = EmoNet(NET)
    temporal = {k.removeprefix("denoising_unet."): torch.randn_like(v) for k, v in net.state_dict().items()
                if ".motion_modules." in k and ".speed." not in k}
    save_file(temporal, str(tmp_path / "mm.safetensors"))
    report = stages.init_from_animatediff(net, str(tmp_path / "mm.safetensors"))
    state = net.state_dict()
    assert len(report.loaded) == len(temporal) and not report.left
    assert all(torch.equal(state[f"denoising_unet.{k}"], v) for k, v in temporal.items())


# --- training runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Stage 3 for 4 steps, uninterrupted (EMA on, a checkpoint every 2 steps)."""
    from emo_core.train.trainer import train
    tmp = tmp_path_factory.mktemp("full")
    cfg = _config(tmp, max_steps=4, checkpoint_every=2, ema=True)
    return cfg, train(cfg, _dataset(), str(tmp / "out")), tmp / "out"


def test_loss_falls_on_a_fixed_batch(tmp_path, full_run):
    from emo_core.checkpoint import load_network
    from emo_core.train.batches import build_batch
    from emo_core.train.objective import DiffusionObjective
    from emo_core.train.trainer import _batch_spec, build_network
    cfg, result, _ = full_run
    data = _dataset()
    start = build_network(cfg)
    spec = _batch_spec(cfg, start)
    batch = build_batch([data[0], data[1]], [0, 1], dataclasses.replace(spec, drop_audio=0, drop_reference=0), NET)
    with torch.no_grad():
        before = DiffusionObjective(start.eval())(batch)
        after = DiffusionObjective(load_network(result.model))(batch)
    assert after < before


def test_resume_continues_the_same_loss_curve_and_weights(tmp_path, full_run):
    from emo_core.train.trainer import train
    cfg, result, out = full_run
    part = tmp_path / "out"
    train(dataclasses.replace(cfg, max_steps=2), _dataset(), str(part))
    resumed = train(cfg, _dataset(), str(part), resume=True)
    assert resumed.losses.keys() == {3, 4}
    curve, reference = read_losses(part), read_losses(out)
    assert curve.keys() == reference.keys()
    assert all(abs(curve[s] - reference[s]) <= 1e-6 for s in reference)
    _assert_same_weights(resumed.model, result.model, 0)
    _assert_same_weights(resumed.ema_model, result.ema_model, 0)


def _assert_same_weights(a: str, b: str, atol: float) -> float:
    """Weights of two native files equal within atol; returns how far the speed layers moved from zero."""
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa if wa[k].numel())
    assert worst <= atol, worst
    return max(float(v.abs().max()) for k, v in wa.items() if k.endswith("speed.attn.to_out.0.weight"))


# Adam divides by sqrt(v): for tensors whose gradient is zero up to rounding (inputs of the zero-initialised speed
# output) it turns summation-order noise into full-size steps. eps = 1 keeps each step proportional to the
# gradient, so the comparison checks what DDP is responsible for: the averaged gradients.
DDP_SETTINGS = dict(adam_epsilon=1.0, learning_rate=1e-2)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """DDP over gloo on the CPU: 2 processes x 1 sample == 1 process x 2 samples (same global batch)."""
    from emo_core.train.trainer import train
    single = train(_config(tmp_path, **DDP_SETTINGS), _dataset(), str(tmp_path / "one"))
    launch(tmp_path, [Run(tmp_path / "two", DDP_SETTINGS)])
    two = read_losses(tmp_path / "two")
    assert two.keys() == single.losses.keys()
    assert all(abs(two[s] - single.losses[s]) <= 1e-6 for s in two)
    moved = _assert_same_weights(str(tmp_path / "two" / "emo_stage3.safetensors"), single.model, 1e-6)
    assert moved > 0  # the weights did train: equal weights are not the untouched start


# --- the written file in the pack -------------------------------------------------------------------------

def test_stage_output_loads_in_the_loader_node_with_speed(full_run, tmp_path, monkeypatch):
    _, result, _ = full_run
    load_in_loader_node(result.model, tmp_path, monkeypatch, NET)


def test_trained_speed_layers_change_the_sampler_output(full_run):
    from emo_core.checkpoint import load_network
    from emo_core.sampler import SamplerSettings, generate
    from emo_core.speed import constant_speed, speed_features
    from emo_core.train.previews import preview_conditions
    _, result, _ = full_run
    net = load_network(result.model)
    sample = _dataset()[0]
    video = preview_conditions(net, sample, NET.clip_length, None)
    settings = SamplerSettings(steps=2, seed=0)
    outs = []
    for speed in (0.0, 3.0):
        video.speed = speed_features(constant_speed(speed, NET.clip_length), NET.speed)
        outs.append(generate(net, video, settings))
    assert not torch.allclose(outs[0], outs[1])


def test_hallo_shortcut_trains_speed_on_a_hallo_checkpoint(parity_checkpoint, tmp_path):
    from emo_core.checkpoint import load_network
    from emo_core.train.trainer import train
    hallo = load_network(str(parity_checkpoint))
    cfg_h = hallo.config
    layers, hidden = cfg_h.audio_projection.blocks, cfg_h.audio_projection.channels
    frames = cfg_h.clip_length + cfg_h.motion_frames
    data = ListDataset(tiny_samples(2, frames, 128, layers, hidden))
    cfg = load_config(None, dict(init_from=str(parity_checkpoint), batch_size=2, max_steps=1,
                                 clip_frames=cfg_h.clip_length, motion_frames=cfg_h.motion_frames,
                                 mixed_precision="no", num_workers=0, sample_every=0, checkpoint_every=0,
                                 gradient_checkpointing=True, learning_rate=1e-3, ema=False),
                      stage="hallo_speed")
    result = train(cfg, data, str(tmp_path / "out"))
    trained = load_network(result.model)
    assert trained.config.speed is not None and trained.config.is_hallo_layout
    before, after = hallo.state_dict(), trained.state_dict()
    for key, value in after.items():
        if stages.parameter_group(key) == "speed":
            continue
        assert torch.equal(value, before[key]), key  # everything but the speed layers is Hallo's, untouched
    assert any(float(v.abs().sum()) > 0 for k, v in after.items() if k.endswith("speed.attn.to_out.0.weight"))


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_stage_moves_only_its_groups(stage, tmp_path):
    """Stage 1 encodes frames itself (no precomputed latents, the `vae = "none"` stand-in) with gradient
    checkpointing on; stage 2 reads latents. The frozen groups come out bit-identical."""
    from emo_core.checkpoint import load_network
    from emo_core.train.trainer import build_network, train
    cfg = _config(tmp_path, stage=stage, max_steps=1, vae="none", gradient_checkpointing=stage == "stage1")
    start = build_network(cfg).state_dict()
    result = train(cfg, _dataset(latents=stage != "stage1"), str(tmp_path / "out"))
    after = load_network(result.model).state_dict()
    moved = {stages.parameter_group(k) for k in after if not torch.equal(after[k], start[k])}
    assert moved and moved <= set(STAGE_GROUPS[stage])


def test_gradient_checkpointing_gives_the_same_gradients():
    from emo_core.train.batches import build_batch
    from emo_core.train.objective import DiffusionObjective
    from emo_core.train.trainer import _batch_spec
    cfg = load_config(None, dict(clip_frames=NET.clip_length, motion_frames=NET.motion_frames), stage="stage2")
    data = _dataset()
    torch.manual_seed(0)
    net = EmoNet(NET)
    stages.select_trainable(net, ("temporal", "audio", "backbone"))
    batch = build_batch([data[0], data[1]], [0, 1], _batch_spec(cfg, net), NET)
    grads = []
    for on in (False, True):
        net.zero_grad()
        net.denoising_unet.gradient_checkpointing = on
        DiffusionObjective(net)(batch).backward()
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_cli_trains_from_prepared_shards(tmp_path):
    from emo_core.checkpoint import load_network
    from emo_core.train.shards import ShardWriter
    from emo_core.train.train_cli import main
    data = tmp_path / "data"
    data.mkdir()
    with ShardWriter(data / "shard-000000.tar") as writer:
        for sample in _dataset(count=2):
            writer.write(sample)
    net_json = write_network_config(NET, tmp_path / "net.json")
    code = main(["--config", "stage3", "--data", str(data), "--out", str(tmp_path / "out"), f"network='{net_json}'",
                 "batch_size=2", "max_steps=1", f"clip_frames={NET.clip_length}",
                 f"motion_frames={NET.motion_frames}", "mixed_precision='no'", "num_workers=0", "sample_every=1",
                 "sample_steps=1", "ema=false", "gradient_checkpointing=false"])
    assert code == 0
    assert load_network(str(tmp_path / "out" / "emo_stage3.safetensors")).config == NET
    assert [p.name for p in (tmp_path / "out" / "samples").iterdir()] == ["step-0000001.mp4"]  # the training data's
    assert main(["--config", "stage3", "--data", str(data), "--out", str(tmp_path / "bad"), "lr=1"]) == 2


def test_bf16_mixed_precision_runs_under_autocast(tmp_path, full_run):
    """Accelerate's bf16 on the CPU: the loss is computed under autocast (close to, not equal to, fp32)."""
    from emo_core.train.trainer import train
    cfg, _, out = full_run
    result = train(dataclasses.replace(cfg, mixed_precision="bf16", max_steps=1), _dataset(), str(tmp_path / "out"))
    fp32 = read_losses(out)[1]
    assert result.losses[1] != fp32 and abs(result.losses[1] - fp32) < 0.05 * fp32


def test_gradient_accumulation_equals_the_whole_batch_at_once(tmp_path):
    from emo_core.train.trainer import train
    whole = train(_config(tmp_path, **DDP_SETTINGS), _dataset(), str(tmp_path / "whole"))
    halves = train(_config(tmp_path, gradient_accumulation_steps=2, **DDP_SETTINGS), _dataset(),
                   str(tmp_path / "halves"))
    assert all(abs(halves.losses[s] - whole.losses[s]) <= 1e-6 for s in whole.losses)
    assert _assert_same_weights(halves.model, whole.model, 1e-6) > 0

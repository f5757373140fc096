"""EchoMimic v1 through the one EmoNet: loading (merged file, the four files, acc names), the full-size key
map on the meta device, and parity with EchoMimic's own code on its tiny fixture (face locator, reference
banks, one CFG step). The fixture set comes from EMO_ECHOMIMIC_PARITY_DIR (default
../shared/parity/echomimic-tiny); every size is read from it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch.testing import assert_close

from emo_core.checkpoint import load_network, read_state_dict
from emo_core.config import echomimic_preset
from emo_core.echomimic_config import config_from_echomimic
from emo_core.errors import IncompatibleCheckpointError, MissingWeightsError
from emo_core.network import ClipConditions, EmoNet

from conftest import echomimic_file, echomimic_parity_dir, fixtures_missing

PART_FILES = ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth")


def _file(name: str) -> Path:
    return echomimic_file(name)


@pytest.fixture(scope="module")
def fixture():
    net_file = _file("net.safetensors")
    with safe_open(str(_file("cases.safetensors")), "pt") as f:
        cases, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    with safe_open(str(net_file), "pt") as f:
        config = config_from_echomimic(json.loads(f.metadata()["echomimic_config"]))
    return cases, meta, config


@pytest.fixture(scope="module")
def net(fixture):
    return load_network(str(_file("net.safetensors")))


def _tol(x: float) -> dict:
    return dict(atol=x, rtol=x)


def test_the_merged_file_and_the_four_files_load_the_same_network(fixture, net, tmp_path):
    _, _, config = fixture
    assert net.config == config and net.config.family == "echomimic"
    folder = load_network(str(echomimic_parity_dir()), config=config)
    one_part = load_network(str(_file("denoising_unet.pth")), config=config)
    expected = net.state_dict()
    for other in (folder, one_part):
        got = other.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_denoising_file_wins_over_the_motion_module_file_and_acc_names_pick_acc_files(fixture, tmp_path):
    """EchoMimic loads motion_module.pth into the UNet, then denoising_unet.pth over it (strict=False)."""
    for name in PART_FILES:
        _file(name)
    src = echomimic_parity_dir()
    for name in PART_FILES:
        shutil.copy(src / name, tmp_path / name)
    motion = torch.load(src / "motion_module.pth", weights_only=True)
    key = next(iter(motion))
    denoising = torch.load(src / "denoising_unet.pth", weights_only=True)
    denoising[key] = torch.full_like(motion[key], 7.0)
    torch.save(denoising, tmp_path / "denoising_unet.pth")
    state, _ = read_state_dict(str(tmp_path))
    assert torch.equal(state["denoising_unet." + key], denoising[key])
    acc = tmp_path / "acc"
    acc.mkdir()
    for name in PART_FILES:
        stem = name[:-4]
        target = f"{stem}_acc.pth" if stem in ("denoising_unet", "motion_module") else name
        shutil.copy(src / name, acc / target)
    state_acc, _ = read_state_dict(str(acc / "denoising_unet_acc.pth"))
    assert torch.equal(state_acc["denoising_unet." + key], motion[key])  # the untouched acc copy
    _, _, config = fixture
    fast = load_network(str(acc / "denoising_unet_acc.pth"), config=config).config
    assert (fast.default_steps, fast.guidance_scale) == (6, 1.0)  # acc: 6 steps, no CFG
    assert (config.default_steps, config.guidance_scale) != (6, 1.0)
    (acc / "motion_module_acc.pth").unlink()
    with pytest.raises(MissingWeightsError, match=r"lacks motion_module_acc\.pth"):
        read_state_dict(str(acc / "denoising_unet_acc.pth"))


def test_full_size_keys_map_to_the_full_size_network_with_their_shapes():
    """Every key of EchoMimic's released files (full-size list) is a tensor of EmoNet(echomimic_preset())
    with the same shape, and the network has no other tensor."""
    listing = echomimic_parity_dir().parent / "keys-echomimic-full.txt"
    if not listing.is_file():
        fixtures_missing(f"{listing} not found (the full-size key list beside the EchoMimic fixture)")
    expected, prefix = {}, None
    for line in listing.read_text().splitlines():
        if line.startswith("## "):  # "## reference_unet.pth", "## denoising_unet.pth (+ motion_module.pth ...)"
            prefix = line[3:].split(".", 1)[0].strip() + "."
        elif line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            expected[prefix + key] = tuple(json.loads(shape.replace("(", "[").replace(",)", "]").replace(")", "]")))
    with torch.device("meta"):
        model = EmoNet(echomimic_preset())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_face_locator_parity(fixture, net):
    cases, _, _ = fixture
    with torch.no_grad():
        out = net.face_features(cases["face_locator.in"], cases["face_locator.in"].shape[2])
    assert_close(out, cases["face_locator.out"], **_tol(1e-5))


def _reference(net, cases, guidance: bool):
    context, uncond = net.identity_tokens(None)
    with torch.no_grad():
        return net.reference_features(cases["reference.latents"], context, uncond, guidance)


def test_reference_banks_parity(fixture, net):
    cases, meta, _ = fixture
    ref = _reference(net, cases, guidance=False)
    order = json.loads(meta["reference_bank_order"])
    assert len(order) == len(ref.tokens)
    for i, key in enumerate(order):
        assert_close(ref.tokens[f"{key}"], cases[f"reference.bank.{i:03d}"], **_tol(1e-4))


def _step(net, cases, *, scale=None):
    frames = cases["denoise_step.latents"].shape[2]
    face = net.face_features(cases["face_locator.in"], 1).expand(-1, -1, frames, -1, -1)
    g = float(cases["denoise_step.guidance_scale"]) if scale is None else scale
    cond = ClipConditions(audio=cases["denoise_step.audio_tokens"], face=face,
                          reference=_reference(net, cases, guidance=g > 1.0))
    with torch.no_grad():
        return net.denoise(cases["denoise_step.latents"], cases["denoise_step.timestep"], cond, g)


def test_one_cfg_step_parity(fixture, net):
    cases, _, _ = fixture
    guided, uncond, cond = _step(net, cases)
    assert_close(uncond, cases["denoise_step.noise_pred_uncond"], **_tol(5e-4))
    assert_close(cond, cases["denoise_step.noise_pred_cond"], **_tol(5e-4))
    assert_close(guided, cases["denoise_step.noise_pred"], **_tol(5e-4))


def test_audio_ratio_and_reference_matter(fixture, net, monkeypatch):
    """Two pitfalls of the README must show: the audio attention's x3 and the reference tokens."""
    cases, _, _ = fixture
    for module in net.denoising_unet.modules():
        if hasattr(module, "cross_scale"):
            monkeypatch.setattr(module, "cross_scale", 1.0)
    _, _, cond = _step(net, cases)
    assert (cond - cases["denoise_step.noise_pred_cond"]).abs().max() > 1e-2
    monkeypatch.undo()
    frames = cases["denoise_step.latents"].shape[2]
    face = net.face_features(cases["face_locator.in"], 1).expand(-1, -1, frames, -1, -1)
    with torch.no_grad():
        no_ref = net.denoise(cases["denoise_step.latents"], cases["denoise_step.timestep"],
                             ClipConditions(audio=cases["denoise_step.audio_tokens"], face=face), 1.0)[2]
    assert (no_ref - cases["denoise_step.noise_pred_cond"]).abs().max() > 1e-2


def test_a_hallo_file_is_not_taken_for_echomimic_and_a_part_is_named(tmp_path):
    from conftest import parity_dir
    hallo = parity_dir() / "net.safetensors"
    if not hallo.is_file():
        fixtures_missing(f"Hallo fixture {hallo} not found")
    from emo_core.checkpoint import detect_family
    state, meta = read_state_dict(str(hallo))
    assert detect_family(state, meta).family == "hallo"
    lone = tmp_path / "face_locator.pth"
    shutil.copy(_file("face_locator.pth"), lone)
    with pytest.raises(MissingWeightsError, match=r"lacks reference_unet\.pth, motion_module\.pth, "
                                                  r"denoising_unet\.pth"):
        load_network(str(lone))


def test_the_tiny_files_without_their_config_say_what_does_not_fit(fixture):
    """Full-size files carry no config, so a folder loads with the released configuration; tiny weights
    then fail with the shape mismatches named, not a crash."""
    with pytest.raises(IncompatibleCheckpointError, match=r"family 'echomimic' does not fit.*shape mismatches"):
        load_network(str(echomimic_parity_dir()))


def test_merged_file_written_by_us_round_trips(fixture, net, tmp_path):
    from emo_core.checkpoint import save_native
    path = tmp_path / "echomimic_native.safetensors"
    save_native(net, str(path))
    again = load_network(str(path))
    assert again.config == net.config
    assert all(torch.equal(again.state_dict()[k], v) for k, v in net.state_dict().items())


def _video(cases, net, *, scale: float):
    """The fixture's run as VideoConditions: the whisper tokens as (frames, window, layers, width) rows."""
    from emo_core.sampler import VideoConditions

    tokens = cases["audio.tokens"]
    window = cases["audio.token_frame_index"].shape[1]
    frames = cases["sample_context.noise"].shape[2]
    return VideoConditions(reference=cases["reference.latents"][0] / scale,
                           audio=tokens.reshape(tokens.shape[0], window, -1, tokens.shape[-1]),
                           num_frames=frames, face_mask=cases["face_locator.in"][0, :, 0])


@pytest.mark.parametrize("case", ["sample_context", "sample_acc"])
def test_whole_run_in_context_windows_parity(fixture, net, case):
    """EchoMimic's whole pipeline (windows shifted per step, averaged, CFG or none, DDIM on v) through the
    sampler, from the fixture's noise: every step's latents and the final ones."""
    from emo_core.sampler import SD15_LATENT_SCALE, SamplerSettings, generate

    cases, meta, _ = fixture
    steps = int(cases[f"{case}.num_inference_steps"])
    g = float(cases[f"{case}.guidance_scale"])
    video = _video(cases, net, scale=SD15_LATENT_SCALE)
    assert video.num_frames == int(meta["video_length"]) and net.config.clip_length == int(meta["context_frames"])
    seen = []
    out = generate(net, video, SamplerSettings(steps=steps, guidance_scale=g, seed=int(meta["seed"])),
                   noise_fn=lambda clip, shape: cases[f"{case}.noise"], on_step=lambda p: seen.append(p.step))
    assert seen == list(range(1, steps + 1))
    final = out.permute(1, 0, 2, 3).unsqueeze(0) * SD15_LATENT_SCALE
    assert_close(final, cases[f"{case}.latents_final"], **_tol(5e-4))


def test_the_seeded_noise_is_echomimics_clamped_noise(fixture, net, monkeypatch):
    """Without a noise override the sampler draws EchoMimic's noise: randn from the seed, clamped to +-1.5."""
    from emo_core import context_sampling
    from emo_core.sampler import SD15_LATENT_SCALE, SamplerSettings, generate

    cases, meta, _ = fixture
    drawn = []
    real = context_sampling.initial_noise

    def spy(seed, shape, clamp):
        drawn.append(real(seed, shape, clamp))
        return drawn[-1]
    monkeypatch.setattr("emo_core.sampler_windows.initial_noise", spy)
    generate(net, _video(cases, net, scale=SD15_LATENT_SCALE), SamplerSettings(steps=1, seed=int(meta["seed"])))
    assert_close(drawn[0], cases["sample_context.noise"], atol=0, rtol=0)

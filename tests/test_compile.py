"""The denoising step is one graph with no host sync, for every family (tiny EMO, the Hallo and EchoMimic
parity nets), with and without classifier-free guidance:
- a whole run with the UNet compiled with fullgraph=True (zero graph breaks, else it raises) is traced once
  and equals the eager run;
- inside the step loop no tensor is read back to Python (`.item()`, `bool()`, `.tolist()`, `.cpu()`, ...):
  on a GPU each of those is a device-to-host sync that stalls the queue.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch
from torch.testing import assert_close

from emo_core.compile import compile_unet, is_compiled, uncompile_unet
from emo_core.errors import InvalidInputError
from emo_core.network import EmoNet
from emo_core.sampler import SamplerSettings, generate

from conftest import echomimic_file, tiny_emo_config

FAMILIES = ("emo", "hallo", "echomimic")
# Tensor -> Python conversions: each is a device-to-host copy and a sync on a GPU.
READBACKS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    saved = {name: getattr(torch.Tensor, name) for name in READBACKS}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise HostSync(f"Tensor.{name}() inside the denoising step")
        return method

    try:
        for name in READBACKS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture(scope="module")
def emo_net():
    torch.manual_seed(0)
    return EmoNet(tiny_emo_config(clip_length=4, motion_frames=2)).eval()


@pytest.fixture(scope="module")
def echomimic_net():
    from emo_core.checkpoint import load_network

    return load_network(str(echomimic_file("net.safetensors")))


@pytest.fixture
def family_run(request, emo_net, parity_net, echomimic_net):
    """(net, VideoConditions) of one family, with a video of two clips (or windows)."""
    import test_hallo2
    import test_sampler

    family = request.param
    if family == "emo":
        return emo_net, test_sampler.video(emo_net, 2 * emo_net.config.clip_length - 1)
    if family == "hallo":
        return parity_net, test_hallo2.hallo_video(parity_net, parity_net.config.clip_length + 1, image=False)
    net = echomimic_net
    frames = net.config.clip_length + net.config.context_overlap + 1
    return net, echomimic_video(net, frames)


def _float64(net, video):
    net = copy.deepcopy(net).double()
    for f in dataclasses.fields(video):
        value = getattr(video, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.double()
        elif isinstance(value, tuple):  # Hallo's masks: (full, face, lip) lists of per-level tensors
            value = tuple([m.double() for m in level] for level in value)
        setattr(video, f.name, value)
    return net, video


def echomimic_video(net, frames: int):
    from emo_core.sampler import VideoConditions

    g = torch.Generator().manual_seed(4)
    width = net.config.audio_attention.audio_dim
    # Whisper tokens per frame: (window, layers, width); any window x layers split of the tokens works.
    audio = torch.randn(frames, 2, 5, width, generator=g)
    mask = torch.zeros(net.config.face_locator.conditioning_channels, 64, 64)
    mask[:, 16:48, 16:48] = 1
    return VideoConditions(reference=torch.randn(4, 8, 8, generator=g), audio=audio, num_frames=frames,
                           face_mask=mask)


@pytest.mark.parametrize("family_run", FAMILIES, indirect=True)
def test_no_tensor_is_read_back_inside_the_step_loop(family_run, monkeypatch):
    """Every network call of a whole run (CFG on) and, on the clip path, every scheduler step runs with
    Tensor -> Python conversions refused."""
    net, video = family_run
    real_denoise = net.denoise
    calls = []

    def guarded(*args, **kwargs):
        calls.append(1)
        with no_host_sync():
            return real_denoise(*args, **kwargs)

    monkeypatch.setattr(net, "denoise", guarded)
    import emo_core.scheduling as scheduling

    real_build = scheduling.build_scheduler

    def guarded_scheduler(*args, **kwargs):
        scheduler = real_build(*args, **kwargs)
        step = scheduler.step

        def guarded_step(*a, **k):
            with no_host_sync():
                return step(*a, **k)
        scheduler.step = guarded_step
        return scheduler

    import emo_core.sampler as sampler_module
    monkeypatch.setattr(sampler_module, "build_scheduler", guarded_scheduler)
    generate(net, video, SamplerSettings(steps=2, guidance_scale=2.0))
    assert calls


def test_the_guard_sees_a_readback():
    with no_host_sync(), pytest.raises(HostSync, match="__bool__"):
        bool(torch.ones(1) > 0)


@pytest.mark.parametrize("family_run, guidance", [("emo", 2.0), ("emo", 1.0), ("hallo", 2.0), ("echomimic", 1.0)],
                         indirect=["family_run"])
def test_a_compiled_unet_runs_a_whole_video_from_one_graph(family_run, guidance):
    """fullgraph=True (a graph break raises), traced once for the whole run, with and without CFG: later
    steps, clips and windows reuse the graph (no recompilation on new conditions). The graph runs as traced
    (CompileCounter's eager backend); bench/step_speed.py times inductor's code against eager. In float64, as
    the traced graph keeps diffusers' modules where eager runs the fused kernels (models.fused), and the tiny
    random nets amplify float32 rounding differences to ~1e-3 per call (measured; 0 in float64)."""
    from torch._dynamo.testing import CompileCounter

    net, video = _float64(*family_run)  # float64: the eager fast path's fused kernels round otherwise
    settings = SamplerSettings(steps=2, guidance_scale=guidance, seed=5)
    eager = generate(net, video, settings)
    torch._dynamo.reset()
    counter = CompileCounter()
    compile_unet(net, backend=counter)
    try:
        assert is_compiled(net)
        compiled = generate(net, video, settings)
    finally:
        uncompile_unet(net)
    assert not is_compiled(net)
    assert counter.frame_count == 1
    assert_close(compiled, eager, atol=1e-9, rtol=1e-9)


def test_compile_modes_are_checked(emo_net):
    with pytest.raises(InvalidInputError, match="unknown compile mode 'fast'"):
        compile_unet(emo_net, "fast")
    compile_unet(emo_net, "off")
    assert not is_compiled(emo_net)

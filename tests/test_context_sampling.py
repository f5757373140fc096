"""The context-window step without fixtures: averaging placement, guidance switch, callbacks, refusals, device.

Parity with EchoMimic's own runs is in test_echomimic_sampling.py.
"""
from __future__ import annotations

import pytest
import torch

from emo_core.context_sampling import (average_windows, denoise_context, guide, initial_noise, uses_guidance)
from emo_core.context_windows import plan_context
from emo_core.errors import InvalidInputError
from emo_core.scheduling import build_scheduler


def position_predictor(calls=None):
    """cond = the frame's position k in its window, uncond = -10 * k: a window-dependent toy network."""
    def predict(x, window, t, *, guided):
        if calls is not None:
            calls.append((tuple(window), guided))
        k = torch.arange(len(window), dtype=x.dtype, device=x.device).view(1, 1, -1, 1, 1).expand_as(x)
        return (-10 * k if guided else None), k.clone()
    return predict


@pytest.mark.parametrize("frames, context, overlap", [(20, 12, 3), (7, 4, 2), (5, 8, 3), (13, 5, 0)])
def test_each_frame_gets_the_mean_over_the_windows_that_hold_it(frames, context, overlap):
    plan = plan_context(frames, 3, context, overlap)
    latents = torch.zeros(1, 4, frames, 2, 3)
    for step in range(3):
        windows = plan.windows(step)
        uncond, cond = average_windows(latents, windows, torch.tensor(999), position_predictor(), True)
        for f in range(frames):
            positions = [w.index(f) for w in windows if f in w]
            assert torch.all(cond[:, :, f] == sum(positions) / len(positions))
            assert torch.all(uncond[:, :, f] == -10 * sum(positions) / len(positions))


def test_guidance_only_above_one_and_no_uncond_pass_without_it():
    assert [uses_guidance(g) for g in (0.0, 0.5, 1.0, 1.0001, 2.5)] == [False, False, False, True, True]
    u, c = torch.full((2,), 1.0), torch.full((2,), 3.0)
    assert torch.equal(guide(u, c, 2.5), torch.full((2,), 6.0))
    assert guide(None, c, 1.0) is c and guide(u, c, 0.5) is c
    calls = []
    plan = plan_context(10, 2, 4, 1)
    denoise_context(torch.zeros(1, 4, 10, 2, 2), plan, position_predictor(calls), build_scheduler("echomimic"), 1.0)
    assert calls and all(not guided for _, guided in calls)


def test_callbacks_and_cancel_between_windows():
    plan = plan_context(20, 3, 12, 3)
    per_step = len(plan.windows(0))
    checks, steps, x0s = [], [], []
    denoise_context(torch.zeros(1, 4, 20, 2, 2), plan, position_predictor(), build_scheduler("echomimic"), 2.5,
                    on_step=lambda d, n: steps.append((d, n)), check_cancel=lambda: checks.append(1),
                    on_x0=x0s.append)
    assert len(checks) == 3 * per_step and steps == [(1, 3), (2, 3), (3, 3)] and len(x0s) == 3

    class Stop(Exception):
        pass

    calls = []

    def cancel():
        if len(calls) == per_step + 1:
            raise Stop

    with pytest.raises(Stop):
        denoise_context(torch.zeros(1, 4, 20, 2, 2), plan, position_predictor(calls), build_scheduler("echomimic"),
                        2.5, check_cancel=cancel)
    assert len(calls) == per_step + 1


def test_bad_predictions_and_inputs_are_refused():
    latents, t = torch.zeros(1, 4, 6, 2, 2), torch.tensor(999)
    windows = plan_context(6, 1, 4, 1).windows(0)
    with pytest.raises(InvalidInputError, match="no unconditional prediction"):
        average_windows(latents, windows, t, lambda x, w, t, guided: (None, x), True)
    with pytest.raises(InvalidInputError, match=r"cond prediction has shape \(1, 4, 3, 2, 2\)"):
        average_windows(latents, windows, t, lambda x, w, t, guided: (x, x[:, :, 1:]), True)
    with pytest.raises(InvalidInputError, match=r"leave latent frames \[4, 5\] uncovered"):
        average_windows(latents, [(0, 1, 2, 3)], t, position_predictor(), False)
    with pytest.raises(InvalidInputError, match="does not match a context plan of 6 frames"):
        denoise_context(torch.zeros(1, 4, 7, 2, 2), plan_context(6, 1, 4, 1), position_predictor(),
                        build_scheduler("echomimic"), 2.5)


def test_initial_noise_is_float32_cpu_clamped_and_seeded():
    a = initial_noise(5, (1, 4, 30, 8, 8))
    assert a.dtype == torch.float32 and a.device.type == "cpu" and a.abs().max() <= 1.5
    raw = initial_noise(5, (1, 4, 30, 8, 8), clamp=None)
    assert raw.abs().max() > 1.5 and torch.equal(raw.clamp(-1.5, 1.5), a)
    assert torch.equal(initial_noise(5, (1, 4, 30, 8, 8)), a) and not torch.equal(initial_noise(6, a.shape), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the window goes to the GPU)")
def test_windows_on_cuda_match_the_cpu_run():
    torch.backends.cuda.matmul.allow_tf32 = False
    plan = plan_context(40, 4, 12, 3)
    noise = initial_noise(0, (1, 4, 40, 8, 8))
    seen = set()

    def predict(x, window, t, *, guided):
        seen.add(x.device.type)
        k = torch.arange(len(window), dtype=x.dtype, device=x.device).view(1, 1, -1, 1, 1)
        return torch.tanh(x) * 0.5 + 0.01 * k, torch.sin(x) + 0.02 * k

    cpu = denoise_context(noise, plan, predict, build_scheduler("echomimic"), 2.5)
    gpu = denoise_context(noise, plan, predict, build_scheduler("echomimic"), 2.5, device="cuda")
    assert seen == {"cpu", "cuda"} and gpu.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-5)

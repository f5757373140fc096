"""EchoMimic v1's long-video sampling rule against its own runs (parity set echomimic-tiny, cases e and f),
without the network: stored predictions stand in for it.

Every size, count and setting comes from the fixture's metadata and tensors. Tolerances: the set's README
section 6 (sample_context.* and sample_acc.*: atol = rtol = 5e-4; windows and timesteps exact).
"""
from __future__ import annotations

import json

import pytest
import torch

from emo_core.context_sampling import average_windows, context_step, denoise_context, guide, initial_noise
from emo_core.context_windows import plan_context
from emo_core.scheduling import ECHOMIMIC_SCHEDULER, build_scheduler

from conftest import echomimic_dir

TOL = 5e-4
RUNS = {"sample_context": "noise_pred", "sample_acc": "pseudo_velocity"}  # run -> the per-step averaged prediction


@pytest.fixture(scope="module")
def fixture():
    """(tensors, metadata) of the set's cases.safetensors, or skip naming the missing file."""
    from safetensors import safe_open
    with safe_open(str(echomimic_dir("cases.safetensors") / "cases.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


class Run:
    """One stored sampler run (e or f) as the test needs it."""

    def __init__(self, fixture, name):
        tensors, meta = fixture
        self.name, self.meta = name, meta
        self.t = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        self.steps = int(self.t["num_inference_steps"].item())
        self.guidance = float(self.t["guidance_scale"].item())
        self.timesteps = self.t["timesteps"].tolist()
        self.preds = [self.t[f"{RUNS[name]}.{i}"] for i in range(self.steps)]
        self.chain = [self.t["noise"]] + [self.t[f"latents.{i}"] for i in range(self.steps)]
        self.frames = self.t["noise"].shape[2]
        self.eta = float(meta["eta"])

    def plan(self, shift=None):
        m = self.meta
        shift = int(m["context_shift_per_step"]) if shift is None else shift
        return plan_context(self.frames, self.steps, int(m["context_frames"]), int(m["context_overlap"]), shift)

    def scheduler(self):
        s = build_scheduler("echomimic")
        s.set_timesteps(self.steps)
        return s


@pytest.fixture(params=list(RUNS))
def run(fixture, request):
    return Run(fixture, request.param)


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=TOL)


def far(actual, expected) -> bool:
    """Beyond the README tolerance somewhere (a semantic error, not float noise)."""
    return not torch.allclose(actual, expected, atol=TOL, rtol=TOL)


def test_plan_reproduces_the_stored_windows(run):
    assert int(run.meta["context_stride"]) == 1, "EchoMimic's uniform schedule runs with context_stride 1"
    assert int(run.meta["video_length"]) == run.frames
    plan = run.plan()
    stored_meta = json.loads(run.meta[f"{run.name}_windows"])
    assert [[list(w) for w in plan.windows(i)] for i in range(run.steps)] == stored_meta
    assert torch.equal(torch.tensor(plan.steps), run.t["windows"])


def test_scheduler_entry_is_the_stored_config_and_gives_the_stored_timesteps(run):
    stored = json.loads(run.meta["scheduler_config"])
    built = build_scheduler("echomimic")
    assert type(built).__name__ == run.meta["scheduler_class"].rsplit(".", 1)[-1]
    assert {k: built.config[k] for k in stored} == stored
    assert all(stored[k] == v for k, v in ECHOMIMIC_SCHEDULER.items())
    assert run.scheduler().timesteps.tolist() == run.timesteps


def test_ddim_step_uses_prev_t_equal_t_minus_1000_over_n(run):
    s = run.scheduler()
    abar = s.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, *run.chain[0].shape, generator=gen, dtype=torch.float32)
    for t in run.timesteps:
        prev = t - s.config.num_train_timesteps // run.steps
        a_t, a_p = abar[t], (abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
        x0 = a_t.sqrt() * x.double() - (1 - a_t).sqrt() * v.double()
        eps = a_t.sqrt() * v.double() + (1 - a_t).sqrt() * x.double()
        expected = (a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps).float()
        torch.testing.assert_close(s.step(v, t, x, eta=run.eta).prev_sample, expected, atol=1e-5, rtol=1e-5)


def test_stored_predictions_through_the_scheduler_reproduce_the_latents_chain(run):
    s = run.scheduler()
    latents = run.chain[0]
    for i, t in enumerate(s.timesteps):
        close(s.step(run.preds[i], t, run.chain[i], eta=run.eta).prev_sample, run.chain[i + 1])
        latents = s.step(run.preds[i], t, latents, eta=run.eta).prev_sample
    close(latents, run.t["latents_final"])
    assert torch.equal(run.chain[-1], run.t["latents_final"])


def test_initial_noise_rule_reproduces_the_stored_noise(fixture):
    tensors, meta = fixture
    seed, raw = int(meta["seed"]), tensors["sample_context.noise_raw"]
    state = torch.get_rng_state()
    assert torch.equal(initial_noise(seed, raw.shape, clamp=None), raw)
    for name in RUNS:
        assert torch.equal(initial_noise(seed, raw.shape), tensors[f"{name}.noise"])
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must stay untouched"
    assert far(initial_noise(seed, raw.shape, clamp=None), tensors["sample_context.noise"])


def slice_stub(run, calls, check_input=True):
    """The network replaced by the stored per-frame averaged prediction of that step, cut to the window."""
    step_of = {t: i for i, t in enumerate(run.timesteps)}

    def predict(x, window, t, *, guided):
        i = step_of[int(t)]
        calls.append((i, tuple(window), guided, x.device))
        if check_input:   # the network sees latents[:, :, window], frames in window order
            close(x.cpu(), run.chain[i][:, :, list(window)])
        pred = run.preds[i][:, :, list(window)]
        return (pred.clone() if guided else None), pred.clone()
    return predict


def test_window_loop_with_stored_predictions_reproduces_the_run(run):
    calls = []
    plan = run.plan()
    final = denoise_context(run.chain[0], plan, slice_stub(run, calls), build_scheduler("echomimic"),
                            run.guidance, eta=run.eta)
    close(final, run.t["latents_final"])
    assert [(i, w) for i, w, _, _ in calls] == [(i, w) for i in range(run.steps) for w in plan.windows(i)]
    # EchoMimic's do_classifier_free_guidance = guidance_scale > 1: no uncond pass is asked for otherwise
    assert {g for _, _, g, _ in calls} == {run.guidance > 1.0}


def test_only_the_window_goes_to_the_predictor_device(run):
    """device='meta' stands in for an accelerator: the stub sees meta windows, the video stays on the host."""
    calls = []
    final = denoise_context(run.chain[0], run.plan(), slice_stub(run, calls, check_input=False),
                            build_scheduler("echomimic"), run.guidance, eta=run.eta, device="meta")
    assert {d.type for *_, d in calls} == {"meta"} and final.device.type == "cpu"
    close(final, run.t["latents_final"])


def window_pred_stub(fixture, windows, swap=False):
    tensors, _ = fixture
    calls = []

    def predict(x, window, t, *, guided):
        j = len(calls)
        calls.append(window)
        assert tuple(window) == tuple(windows[j]) and guided
        uncond, cond = tensors[f"sample_context.window_pred.0.{j}"].chunk(2)
        return (cond, uncond) if swap else (uncond, cond)
    return predict


def test_step_zero_window_predictions_average_and_guide_like_echomimic(fixture):
    run = Run(fixture, "sample_context")
    assert run.guidance > 1.0, "case e is the guided run"
    windows, s = run.plan().windows(0), run.scheduler()
    result = context_step(run.chain[0], windows, s.timesteps[0], window_pred_stub(fixture, windows), s,
                          run.guidance, step_kwargs={"eta": run.eta})
    close(result.prediction, run.preds[0])
    close(result.latents, run.chain[1])


def test_pitfall_halves_swapped_or_last_window_wins_miss_the_step_zero_prediction(fixture):
    run = Run(fixture, "sample_context")
    windows, t = run.plan().windows(0), run.scheduler().timesteps[0]
    swapped = guide(*average_windows(run.chain[0], windows, t, window_pred_stub(fixture, windows, swap=True), True),
                    run.guidance)
    assert far(swapped, run.preds[0])
    last_wins = torch.zeros(2, *run.chain[0].shape[1:])
    for j, w in enumerate(windows):
        last_wins[:, :, list(w)] = fixture[0][f"sample_context.window_pred.0.{j}"]
    assert far(guide(*last_wins.chunk(2), run.guidance), run.preds[0])


@pytest.mark.parametrize("shift", [0, 3])
def test_pitfall_other_shifts_give_other_windows(run, shift):
    if all((shift * i) % run.frames == (int(run.meta["context_shift_per_step"]) * i) % run.frames
           for i in range(run.steps)):
        pytest.skip(f"with {run.frames} frames and {run.steps} steps shift {shift} cannot differ from the stored one")
    assert run.plan(shift).steps != run.plan().steps
    assert not torch.equal(torch.tensor(run.plan(shift).steps), run.t["windows"])


def test_pitfall_unclamped_noise_changes_the_run(run):
    noise = initial_noise(int(run.meta["seed"]), run.chain[0].shape, clamp=None)
    final = denoise_context(noise, run.plan(), slice_stub(run, [], check_input=False),
                            build_scheduler("echomimic"), run.guidance, eta=run.eta)
    assert far(final, run.t["latents_final"])


def test_pitfall_prev_t_from_the_next_list_entry_changes_the_run(run):
    """Different from t - 1000 // n only when n does not divide 1000 (README: 0 at 4 steps, 5.6e-02 at 6)."""
    s = run.scheduler()
    abar, x = s.alphas_cumprod, run.chain[0]
    for i, t in enumerate(run.timesteps):
        a_t = abar[t]
        a_p = abar[run.timesteps[i + 1]] if i + 1 < run.steps else torch.tensor(1.0)
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * run.preds[i]
        eps = a_t.sqrt() * run.preds[i] + (1 - a_t).sqrt() * x
        x = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
    if s.config.num_train_timesteps % run.steps == 0:
        close(x, run.t["latents_final"])
    else:
        assert far(x, run.t["latents_final"])


def test_pitfall_window_sum_without_guidance_changes_the_run(run):
    """The standard pipeline at cfg <= 1 does not divide by the counter; averaging is what both runs show."""
    plan, s = run.plan(), run.scheduler()
    latents = run.chain[0]
    for i, t in enumerate(s.timesteps):
        counts = torch.tensor(plan.counts(i), dtype=latents.dtype).view(1, 1, -1, 1, 1)
        latents = s.step(run.preds[i] * counts, t, latents, eta=run.eta).prev_sample
    assert far(latents, run.t["latents_final"])

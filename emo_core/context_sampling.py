"""EchoMimic v1's long-video sampling rule: every step runs the network once per context window of the
whole latent video, averages the overlapping predictions per frame, applies classifier-free guidance and
takes one scheduler step on all frames (pipeline_echo_mimic.py / pipeline_echo_mimic_acc.py; parity
fixture README sections 2.e and 2.f).

One step i at timestep t, windows W_i from a ContextPlan (context_windows.py):
1. for each window w, in plan order: x_w = scale_model_input(latents[:, :, w], t) (frames in window order, so a
   wrapped window shows the tail before frame 0); (u_w, c_w) = predict(x_w, w, t, guided=g > 1);
2. per frame f: u_f, c_f = sums over the windows holding f divided by how many hold f;
3. prediction = u + g (c - u) with CFG (g > 1, EchoMimic's `do_classifier_free_guidance`), else c alone:
   the predictor is then asked for the conditional half only (`guided=False`), so no uncond pass runs;
4. latents = scheduler.step(prediction, t, latents).prev_sample on all L frames.

Always averaged, also without CFG: that is the acc pipeline's rule and what both fixture runs show (the
standard pipeline at cfg <= 1 feeds the *sum* of overlapping windows to the scheduler, which only its acc
twin avoids; the released standard defaults use cfg 2.5, where both divide). The acc pipeline's
"pseudo-velocity" is pv = (a_t x - x0) / b_t with x0 = a_t x - b_t v, i.e. v itself up to float rounding
(8.6e-06 on the fixture), so acc weights need no second code path: plain DDIM on v.

Noise (`initial_noise`): randn((1, 4, L, h, w)) from a CPU generator seeded with the seed, float32,
clamped to [-1.5, 1.5] (the `_pose` pipelines do not clamp: clamp=None).

Memory: the whole video's latents, the two per-frame accumulators and the counter stay where the caller
put them (the host: 1200 frames of 64 x 64 latents are 79 MB per tensor, about 0.4 GB for the step),
and only one window (1, 4, context, h, w) at a time goes to the predictor's `device`; its prediction comes
straight back. The device therefore holds the network plus one window whatever the video length.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from .context_windows import ContextPlan, Window
from .errors import InvalidInputError
from .scheduling import _step_kwargs

log = logging.getLogger(__name__)

ECHOMIMIC_NOISE_CLAMP = 1.5  # pipeline_echo_mimic.py prepare_latents: torch.clamp(latents, -1.5, 1.5)


class WindowPredictor(Protocol):
    """The network on one window: latents (b, 4, F, h, w) on the predictor's device, in window order;
    frames: their F latent frame indices (to slice per-frame conditions such as audio tokens); t: the
    scheduler's timestep. Returns (uncond, cond), each shaped like `latents`; with guided=False only the
    conditional prediction is wanted and uncond may be None (it is ignored)."""

    def __call__(self, latents: torch.Tensor, frames: Window, t: torch.Tensor, *,
                 guided: bool) -> tuple[torch.Tensor | None, torch.Tensor]: ...


@dataclass(frozen=True)
class StepResult:
    """latents: after the scheduler step (b, 4, L, h, w); prediction: the guided, window-averaged network
    output fed to the scheduler; x0: the scheduler's predicted clean latents (None if it has none)."""
    latents: torch.Tensor
    prediction: torch.Tensor
    x0: torch.Tensor | None


def uses_guidance(guidance_scale: float) -> bool:
    """EchoMimic's rule: classifier-free guidance only when the scale is above 1 (acc default 1.0: none)."""
    return guidance_scale > 1.0


def initial_noise(seed: int, shape: Sequence[int], clamp: float | None = ECHOMIMIC_NOISE_CLAMP) -> torch.Tensor:
    """(b, 4, L, h, w) float32 CPU noise: EchoMimic's randn(shape, generator=torch.manual_seed(seed)) drawn from a
    private generator (same numbers, the global RNG untouched), clamped to [-clamp, clamp] unless clamp is None."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise if clamp is None else noise.clamp(-clamp, clamp)


def _window_prediction(predict: WindowPredictor, x: torch.Tensor, window: Window, t, guided: bool):
    uncond, cond = predict(x, window, t, guided=guided)
    if guided and uncond is None:
        raise InvalidInputError(f"the window predictor returned no unconditional prediction for frames {list(window)} "
                                "although guidance is on; return (uncond, cond)")
    for name, pred in (("cond", cond), ("uncond", uncond if guided else None)):
        if pred is not None and tuple(pred.shape) != tuple(x.shape):
            raise InvalidInputError(f"the window predictor's {name} prediction has shape {tuple(pred.shape)}, "
                                    f"expected the window's {tuple(x.shape)}")
    return (uncond if guided else None), cond


def average_windows(latents: torch.Tensor, windows: Sequence[Window], t: torch.Tensor, predict: WindowPredictor,
                    guided: bool, *, scheduler=None, device: torch.device | str | None = None,
                    check_cancel: Callable[[], None] = lambda: None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-frame mean of the window predictions: (uncond or None, cond), each shaped and placed like `latents`
    (b, 4, L, h, w). Only one window is on `device` at a time; `check_cancel` runs before every window."""
    num_frames = latents.shape[2]
    device = latents.device if device is None else torch.device(device)
    cond_sum = torch.zeros_like(latents)
    uncond_sum = torch.zeros_like(latents) if guided else None
    counter = torch.zeros(num_frames, dtype=latents.dtype, device=latents.device)
    for window in windows:
        check_cancel()
        index = torch.tensor(window, dtype=torch.long, device=latents.device)
        x = latents.index_select(2, index)
        if scheduler is not None:
            x = scheduler.scale_model_input(x, t)
        uncond, cond = _window_prediction(predict, x.to(device), window, t, guided)
        cond_sum.index_add_(2, index, cond.to(latents.device, latents.dtype))
        if guided:
            uncond_sum.index_add_(2, index, uncond.to(latents.device, latents.dtype))
        counter.index_add_(0, index, torch.ones(len(window), dtype=latents.dtype, device=latents.device))
    if not bool((counter > 0).all()):
        missing = (counter == 0).nonzero().flatten().tolist()
        raise InvalidInputError(f"the context windows leave latent frames {missing[:8]} uncovered; build the "
                                "windows with context_windows.plan_context")
    counter = counter.view(1, 1, num_frames, 1, 1)
    return (None if uncond_sum is None else uncond_sum / counter), cond_sum / counter


def guide(uncond: torch.Tensor | None, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """u + g (c - u) with guidance (g > 1), else c."""
    if not uses_guidance(guidance_scale):
        return cond
    return uncond + guidance_scale * (cond - uncond)


def context_step(latents: torch.Tensor, windows: Sequence[Window], t: torch.Tensor, predict: WindowPredictor,
                 scheduler, guidance_scale: float, *, device: torch.device | str | None = None,
                 step_kwargs: dict | None = None, check_cancel: Callable[[], None] = lambda: None) -> StepResult:
    """One denoising step over all windows (module docstring, points 1-4); `latents` stay where they are."""
    guided = uses_guidance(guidance_scale)
    uncond, cond = average_windows(latents, windows, t, predict, guided, scheduler=scheduler, device=device,
                                   check_cancel=check_cancel)
    prediction = guide(uncond, cond, guidance_scale)
    out = scheduler.step(prediction, t, latents, **(step_kwargs or {}))
    return StepResult(out.prev_sample, prediction, getattr(out, "pred_original_sample", None))


def denoise_context(noise: torch.Tensor, plan: ContextPlan, predict: WindowPredictor, scheduler,
                    guidance_scale: float, *, eta: float = 0.0, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None,
                    on_step: Callable[[int, int], None] = lambda done, total: None,
                    check_cancel: Callable[[], None] = lambda: None,
                    on_x0: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """The whole run: noise (b, 4, L, h, w) (see initial_noise) -> denoised scaled latents, plan.num_steps steps
    of `scheduler` (set here), step i over plan.windows(i). Latents stay on noise's device; see the module
    docstring for memory. `check_cancel` runs before every window and may raise; `on_x0` gets each step's x0."""
    if noise.ndim != 5 or noise.shape[2] != plan.num_frames:
        raise InvalidInputError(f"noise of shape {tuple(noise.shape)} does not match a context plan of "
                                f"{plan.num_frames} frames; pass (batch, 4, {plan.num_frames}, h, w) latents")
    scheduler.set_timesteps(plan.num_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    total = len(scheduler.timesteps)
    log.debug("context sampling: %d frames, %d steps, %d windows per step", plan.num_frames, total,
              len(plan.windows(0)))
    for i, t in enumerate(scheduler.timesteps):
        result = context_step(latents, plan.windows(i), t, predict, scheduler, guidance_scale, device=device,
                              step_kwargs=step_kwargs, check_cancel=check_cancel)
        latents = result.latents
        if on_x0 is not None:
            on_x0(latents if result.x0 is None else result.x0)
        on_step(i + 1, total)
    return latents

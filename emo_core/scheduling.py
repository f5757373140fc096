"""Noise schedules per checkpoint family and the denoising loop of one clip (diffusers' DDIMScheduler)."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from .errors import InvalidInputError

# Hallo: configs/inference/default.yaml with enable_zero_snr (v-prediction, zero-terminal-SNR, trailing).
HALLO_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
    "clip_sample": False, "steps_offset": 1, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
}
# Native EMO: SD 1.5's training schedule (epsilon prediction), sampled with DDIM.
EMO_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "steps_offset": 1, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}
# EchoMimic v1: configs/inference/inference_v2.yaml noise_scheduler_kwargs (standard and acc weights alike);
# the same schedule as Hallo's. set_alpha_to_one is diffusers' default, which EchoMimic leaves alone: the
# last DDIM step (prev_t < 0) lands on abar = 1.
ECHOMIMIC_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
    "clip_sample": False, "steps_offset": 1, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "set_alpha_to_one": True,
}
FAMILY_SCHEDULERS = {"hallo": HALLO_SCHEDULER, "hallo2": HALLO_SCHEDULER,  # Hallo2: long.yaml
                     "emo": EMO_SCHEDULER, "echomimic": ECHOMIMIC_SCHEDULER}
# Sampler name -> diffusers class. All of them take the family's noise schedule (betas, prediction type,
# zero-SNR rescaling, spacing); DDIM is the papers' sampler and the default.
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def build_scheduler(family: str, overrides: dict | None = None, sampler: str = "ddim"):
    """A fresh diffusers scheduler for the family (overrides win, e.g. a fixture's stored config)."""
    import diffusers

    if family not in FAMILY_SCHEDULERS:
        raise InvalidInputError(f"no noise schedule for family '{family}'; known: {sorted(FAMILY_SCHEDULERS)}")
    if sampler not in SAMPLERS:
        raise InvalidInputError(f"unknown sampler '{sampler}'; choose one of {list(SAMPLERS)}")
    cls = getattr(diffusers, SAMPLERS[sampler])
    config = {**FAMILY_SCHEDULERS[family], **(overrides or {})}
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def _step_kwargs(scheduler, eta: float, generator) -> dict:
    """eta and generator only where the scheduler's step takes them (DDIM: eta; ancestral: generator)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": eta} if "eta" in params else {}
    if "generator" in params and generator is not None:
        kwargs["generator"] = generator
    return kwargs


def _loop_timesteps(scheduler, device) -> tuple[list, torch.Tensor]:
    """(the scheduler's timesteps as Python numbers, the same as a tensor on `device`). Samplers that look their
    step index up from the timestep (Euler, DPM-Solver, UniPC: a nonzero().item()) are told it starts at 0."""
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    values = scheduler.timesteps
    return values.tolist(), values.to(device)


def denoise_clip(net, noise: torch.Tensor, cond, scheduler, steps: int, guidance_scale: float, eta: float = 0.0,
                 on_step: Callable[[int, int], None] = lambda done, total: None,
                 check_cancel: Callable[[], None] = lambda: None, generator: torch.Generator | None = None,
                 on_x0: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the full sampling loop for one clip. noise: (b, 4, F, h, w) unit-variance noise -> denoised
    scaled latents.

    Each step: CFG prediction in one batched forward, then scheduler.step. `check_cancel` runs before
    every step and may raise to stop; nothing is returned half-done. `generator` feeds stochastic steps
    (DDIM with eta > 0, ancestral samplers) so a seed reproduces them. `on_x0` receives each step's
    predicted clean latents (for previews), before `on_step`.
    """
    if steps < 1:
        raise InvalidInputError(f"need at least 1 denoising step, got {steps}")
    scheduler.set_timesteps(steps, device="cpu")
    latents = noise * scheduler.init_noise_sigma
    # Read once, before the loop: the scheduler gets Python timesteps (its `prev_t >= 0` tests and table
    # lookups then never read a device tensor back), the network the same values on its device.
    timesteps, on_device = _loop_timesteps(scheduler, noise.device)
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    for i, t in enumerate(timesteps):
        check_cancel()
        model_in = scheduler.scale_model_input(latents, t)
        guided, _, _ = net.denoise(model_in, on_device[i], cond, guidance_scale)
        out = scheduler.step(guided.to(latents.dtype), t, latents, **step_kwargs)
        latents = out.prev_sample
        if on_x0 is not None:
            x0 = getattr(out, "pred_original_sample", None)
            on_x0(latents if x0 is None else x0)
        on_step(i + 1, len(timesteps))
    return latents

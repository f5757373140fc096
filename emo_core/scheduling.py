"""Noise schedules per checkpoint family and the denoising loop of one clip (diffusers' DDIMScheduler)."""
from __future__ import annotations

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
FAMILY_SCHEDULERS = {"hallo": HALLO_SCHEDULER, "emo": EMO_SCHEDULER}


def build_scheduler(family: str, overrides: dict | None = None):
    """A fresh diffusers DDIMScheduler for the family (overrides win, e.g. a fixture's stored config)."""
    from diffusers import DDIMScheduler

    if family not in FAMILY_SCHEDULERS:
        raise InvalidInputError(f"no noise schedule for family '{family}'; known: {sorted(FAMILY_SCHEDULERS)}")
    return DDIMScheduler.from_config({**FAMILY_SCHEDULERS[family], **(overrides or {})})


def denoise_clip(net, noise: torch.Tensor, cond, scheduler, steps: int, guidance_scale: float, eta: float = 0.0,
                 on_step: Callable[[int, int], None] = lambda done, total: None,
                 check_cancel: Callable[[], None] = lambda: None) -> torch.Tensor:
    """Run the full DDIM loop for one clip. noise: (b, 4, F, h, w) scaled latents -> denoised latents.

    Each step: CFG prediction in one batched forward, then scheduler.step. `check_cancel` runs before
    every step and may raise to stop; nothing is returned half-done.
    """
    if steps < 1:
        raise InvalidInputError(f"need at least 1 denoising step, got {steps}")
    scheduler.set_timesteps(steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        check_cancel()
        model_in = scheduler.scale_model_input(latents, t)
        guided, _, _ = net.denoise(model_in, t, cond, guidance_scale)
        latents = scheduler.step(guided.to(latents.dtype), t, latents, eta=eta).prev_sample
        on_step(i + 1, len(timesteps))
    return latents

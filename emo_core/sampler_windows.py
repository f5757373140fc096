"""The sampler's second long-video rule (EchoMimic): the whole video denoised in context windows.

Where EMO and Hallo make a video clip after clip (sampler.generate with motion frames), EchoMimic denoises
all frames at every step, in overlapping windows of `clip_length` frames that shift each step, averaging
where they overlap (context_windows.py plans them, context_sampling.py runs the steps). This module plugs
the network into that loop: per window it cuts the audio tokens of the window's frames (a wrapped window
takes the tail, then frame 0 on), broadcasts the one face-locator frame over them and runs one guided
prediction. The video's latents (small) stay on the host; one window at a time is on the device.
"""
from __future__ import annotations

import logging

import torch

from .context_sampling import denoise_context, initial_noise
from .context_windows import Window, plan_context
from .network import ClipConditions
from .plan import clip_seed
from .scheduling import build_scheduler

log = logging.getLogger(__name__)


def generate_in_windows(run, ref, scale: float, on_step, check_cancel, before_clip) -> torch.Tensor:
    """-> (num_frames, 4, h, w) float32 UNSCALED latents on the CPU. `run` is sampler._Run; `ref` the
    reference features laid out for the guidance in use; `scale` the SD latent factor."""
    from .sampler import Progress

    net, v, s, cfg = run.net, run.video, run.settings, run.net.config
    frames = v.num_frames
    h, w = v.reference.shape[-2:]
    plan = plan_context(frames, s.steps, run.clip_length, cfg.context_overlap, cfg.context_shift)
    shape = (1, 4, frames, h, w)
    noise = run.noise_fn(0, shape) if run.noise_fn else initial_noise(s.seed, shape, cfg.noise_clamp)
    face = None
    if v.face_mask is not None:  # EchoMimic's face locator sees one frame; its features serve every window
        with torch.no_grad():
            face = net.face_features(v.face_mask.unsqueeze(0).to(run.device), 1)
    log.info("context windows: %d frames, %d windows of %d per step (overlap %d, shift %d per step)", frames,
             len(plan.windows(0)), run.clip_length, cfg.context_overlap, cfg.context_shift)

    def predict(x: torch.Tensor, window: Window, t, *, guided: bool):
        audio = net.audio_tokens(_audio_rows(v.audio, window).unsqueeze(0).to(run.device))
        cond = ClipConditions(audio=audio, face=None if face is None else face.expand(-1, -1, len(window), -1, -1),
                              context=run.context, uncond_context=run.uncond_context, reference=ref)
        _, uncond, conditional = net.denoise(x, t, cond, run.guidance if guided else 1.0)
        return (uncond if guided else None), conditional

    x0 = {}

    def report(step: int, steps: int) -> None:
        preview = x0.get("latents")
        preview = None if preview is None else preview[:, :, frames // 2].to(run.device)
        on_step(Progress(1, 1, step, steps, step, steps, preview))

    before_clip()
    gen = torch.Generator().manual_seed(clip_seed(s.seed, 0))
    with torch.no_grad():
        latents = denoise_context(noise.float(), plan, predict, build_scheduler(cfg.family, sampler=s.sampler),
                                  run.guidance, eta=s.eta, device=run.device, generator=gen, on_step=report,
                                  check_cancel=check_cancel, on_x0=lambda t: x0.update(latents=t))
    return latents[0].permute(1, 0, 2, 3).cpu() / scale


def _audio_rows(audio, window: Window) -> torch.Tensor:
    """The windowed audio rows of the window's frames, in window order: cut per contiguous run of frames
    (a wrapped window is two), so features on disk are read for these frames only."""
    if isinstance(audio, torch.Tensor):
        return audio[torch.tensor(window).clamp(max=audio.shape[0] - 1)]
    runs, start = [], 0
    for i in range(1, len(window) + 1):
        if i == len(window) or window[i] != window[i - 1] + 1:
            runs.append(audio.windowed(window[start], window[i - 1] + 1))
            start = i
    return torch.cat(runs)

"""The chunked EMO sampler: a whole video, clip after clip, motion frames carried over (paper, section 3);
or, for families that make long videos in context windows (EchoMimic), all frames per step in shifted,
overlapping windows (sampler_windows.py).

Memory is bounded by one clip: only the current clip's latents, conditions and ReferenceNet features live
on the device; finished clips go to the CPU as small latents. Latents in and out follow ComfyUI: unscaled
(a VAEEncode LATENT); the SD 1.5 factor is applied inside.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .errors import InvalidInputError
from .finite import LATENT_FIX, require_finite
from .models.conditions import ReferenceFeatures
from .motion_drop import drop_pixels, keep_mask
from .network import ClipConditions, EmoNet
from .plan import ClipPlan, clip_seed, plan_clips
from .sampler_windows import generate_in_windows
from .scheduling import SAMPLERS, build_scheduler, denoise_clip

log = logging.getLogger(__name__)

SD15_LATENT_SCALE = 0.18215


@dataclass(frozen=True)
class SamplerSettings:
    """steps: denoising steps per clip; None = the family's default (`default_steps`). guidance_scale: None =
    the family's default; <= 1 disables classifier-free guidance (the conditional prediction alone, one forward
    per step). seed: clip k's noise depends only on (seed, k). sampler: a name in scheduling.SAMPLERS.
    motion_scale: Hallo's (pose, face, lip) audio weights. clip_length: None = the family's f."""
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    sampler: str = "ddim"
    eta: float = 0.0
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    clip_length: int | None = None

    def for_model(self, config) -> SamplerSettings:
        """These settings with the family's defaults (EmoNetConfig) filled in where they are None."""
        return dataclasses.replace(
            self, steps=config.default_steps if self.steps is None else self.steps,
            guidance_scale=config.guidance_scale if self.guidance_scale is None else self.guidance_scale).validate()

    def validate(self) -> SamplerSettings:
        if self.steps is not None and self.steps < 1:
            raise InvalidInputError(f"steps must be >= 1, got {self.steps}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise InvalidInputError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.sampler not in SAMPLERS:
            raise InvalidInputError(f"unknown sampler '{self.sampler}'; choose one of {list(SAMPLERS)}")
        if self.clip_length is not None and self.clip_length < 1:
            raise InvalidInputError(f"clip_length must be >= 1, got {self.clip_length}")
        return self


class WindowedAudio(Protocol):
    """Audio features that cut their windows on demand (audio.AudioFeatures)."""
    padded_frames: int

    def windowed(self, start: int, stop: int) -> torch.Tensor: ...


@dataclass
class VideoConditions:
    """Everything one video is conditioned on (batch 1).

    reference: (4, h, w) UNSCALED reference latent (ComfyUI VAEEncode output).
    audio: the audio features: audio.AudioFeatures (windows are cut per clip, so only the (frames, layers,
        hidden) features exist at video length), or any object with `padded_frames` and `windowed(start,
        stop)`, or a (frames, 2m+1, layers, hidden) windowed tensor; frames past the end repeat the last one.
    face_mask: (c, H, W) face-locator input at pixel size (face.FaceRegion.locator_input[0]) or None.
    masks: Hallo's (full, face, lip), each a list over levels of (1 or frames, h_l * w_l), or None.
    identity: (E,) face-identity embedding or None (Hallo falls back to the unconditional tokens).
    speed: (frames, 2m+1, d) windowed speed buckets of at least `num_frames` frames, or None.
    num_frames: the output length; the audio's frame count.
    reference_features: optional ReferenceNet features of `reference` from
        EmoNet.reference_features(..., guidance=True) with the same identity, computed once and reused
        across videos (used when sampling with guidance; otherwise recomputed).
    first_motion: optional (n, 4, h, w) UNSCALED latents that replace the family's first-clip rule, e.g.
        the last frames of an earlier segment to continue it seamlessly (Hallo2 drops pixels of them as of
        any carried motion frames).
    reference_image: optional (H, W, 3) 0..1 portrait that `reference` was encoded from: Hallo2 drops pixels
        of its copies on the first clip; without it the codec decodes `reference` to get them.
    """
    reference: torch.Tensor
    audio: torch.Tensor | WindowedAudio
    num_frames: int
    face_mask: torch.Tensor | None = None
    masks: tuple | None = None
    identity: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    reference_features: ReferenceFeatures | None = None
    first_motion: torch.Tensor | None = None
    reference_image: torch.Tensor | None = None


@dataclass
class VaeCodec:
    """The VAE as callables, for families that re-encode motion frames from pixels (Hallo).

    decode: unscaled latents (N, 4, h, w) -> images (N, H, W, 3) in 0..1.
    encode: images (N, H, W, 3) in 0..1 -> unscaled latents (N, 4, h, w).
    """
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Progress:
    """clip/clips are 1-based for display; step of steps within the clip; done of total over the video.
    preview: the step's predicted clean latent of the clip's middle frame, (1, 4, h, w) SCALED (what
    ComfyUI's latent previewers take), or None."""
    clip: int
    clips: int
    step: int
    steps: int
    done: int
    total: int
    preview: torch.Tensor | None = None


@dataclass
class _Run:
    net: EmoNet
    video: VideoConditions
    settings: SamplerSettings
    clip_length: int
    guidance: float
    codec: VaeCodec | None
    device: torch.device
    dtype: torch.dtype
    noise_fn: Callable[[int, tuple], torch.Tensor] | None = None
    drop_mask_fn: Callable[[int, tuple], torch.Tensor] | None = None
    context: torch.Tensor = field(init=False)
    uncond_context: torch.Tensor = field(init=False)


def generate(net: EmoNet, video: VideoConditions, settings: SamplerSettings = SamplerSettings(), *,
             codec: VaeCodec | None = None, on_step: Callable[[Progress], None] = lambda p: None,
             check_cancel: Callable[[], None] = lambda: None,
             noise_fn: Callable[[int, tuple], torch.Tensor] | None = None,
             before_clip: Callable[[], None] = lambda: None,
             drop_mask_fn: Callable[[int, tuple], torch.Tensor] | None = None) -> torch.Tensor:
    """Generate every frame: -> (num_frames, 4, h, w) float32 UNSCALED latents on the CPU.

    `check_cancel` runs between steps and clips and may raise; then nothing is returned. `noise_fn(clip,
    shape)` replaces the seeded noise (tests feed a fixture's noise through it). `before_clip()` runs before
    each clip is denoised, after the codec re-encoded its motion frames: the VAE may have pushed the network
    off its device (ComfyUI offloads models when VRAM is short), so the caller puts it back there.
    `drop_mask_fn(clip, (H, W))` replaces the seeded (H, W) bool keep-mask of Hallo2's pixel drop (tests).
    """
    settings = settings.validate().for_model(net.config)
    p = next(net.parameters())
    run = _Run(net, video, settings, settings.clip_length or net.config.clip_length, settings.guidance_scale,
               codec, p.device, p.dtype, noise_fn, drop_mask_fn)
    _check_inputs(run)
    _check_lengths(video)
    windows = net.config.long_video == "context_windows"
    plans = [] if windows else plan_clips(video.num_frames, run.clip_length, net.config.motion_frames)
    log.info("EMO sampling (%s family): %d frames in %s of %d, %d steps, guidance %.2f, %s, seed %d",
             net.config.family, video.num_frames, "context windows" if windows else f"{len(plans)} clip(s)",
             run.clip_length, settings.steps, run.guidance, settings.sampler, settings.seed)
    if net.config.motion_pixel_drop > 0 and codec is None and net.config.motion_frames > 0:
        log.warning("no VAE given: the %s family's motion-frame pixel drop (%.2f) is skipped",
                    net.config.family, net.config.motion_pixel_drop)
    run.context, run.uncond_context = net.identity_tokens(
        None if video.identity is None else video.identity.reshape(1, -1), batch=1)
    reference = video.reference.to(run.device, torch.float32).unsqueeze(0) * SD15_LATENT_SCALE
    if video.reference_features is not None and run.guidance > 1.0:
        ref = video.reference_features.to(run.device, run.dtype)
    else:
        with torch.no_grad():
            ref = net.reference_features(reference, run.context, run.uncond_context, run.guidance > 1.0)
    if windows:
        return generate_in_windows(run, ref, SD15_LATENT_SCALE, on_step, check_cancel, before_clip)
    out = torch.empty(video.num_frames, *video.reference.shape, dtype=torch.float32)
    for plan in plans:
        check_cancel()
        motion = _motion_latents(run, plan, reference, out)
        before_clip()
        with torch.no_grad():
            clip = _sample_clip(run, plan, ref, motion, len(plans), on_step, check_cancel)
        out[plan.frames.start:plan.frames.stop] = clip[:len(plan.frames)].cpu() / SD15_LATENT_SCALE
    return out


def _check_inputs(run: _Run) -> None:
    v, cfg = run.video, run.net.config
    if v.num_frames < 1:
        raise InvalidInputError(f"the video needs at least 1 frame, got {v.num_frames}; is the audio empty?")
    if v.reference.dim() != 3 or v.reference.shape[0] != 4:
        raise InvalidInputError(f"reference latent must be (4, h, w), got {tuple(v.reference.shape)}")
    if _audio_length(v.audio) < 1:
        raise InvalidInputError("the audio features are empty")
    _check_finite(v)
    if cfg.audio_attention.form == "hierarchical" and v.masks is None:
        raise InvalidInputError("this checkpoint family needs Hallo's full/face/lip masks (face_hallo.hallo_masks)")
    if v.reference_image is not None and (v.reference_image.dim() != 3 or v.reference_image.shape[-1] < 3):
        raise InvalidInputError(f"reference_image must be (height, width, 3) in 0..1, got "
                                f"{tuple(v.reference_image.shape)}")
    n = cfg.motion_frames
    if v.first_motion is not None and tuple(v.first_motion.shape) != (n, *v.reference.shape):
        raise InvalidInputError(f"first_motion must be ({n}, {', '.join(map(str, v.reference.shape))}) unscaled "
                                f"latents, got {tuple(v.first_motion.shape)}")
    if run.clip_length + cfg.motion_frames > cfg.motion.max_len:
        raise InvalidInputError(f"clip_length {run.clip_length} + {cfg.motion_frames} motion frames exceed the "
                                f"temporal modules' {cfg.motion.max_len} positions; use a shorter clip")


def _check_lengths(v: VideoConditions) -> None:
    """Per-frame conditions must reach the last frame; a short track would repeat its last row unnoticed."""
    lengths = (("audio features", _audio_length(v.audio)),
               ("speed features", None if v.speed is None else v.speed.shape[0]))
    for name, length in lengths:
        if length is not None and length < v.num_frames:
            raise InvalidInputError(f"the {name} cover {length} frames but the video has {v.num_frames}; "
                                    "compute them for the whole audio (or set num_frames to their length)")


def _check_finite(v: VideoConditions) -> None:
    for name in ("reference", "first_motion", "audio", "face_mask", "identity", "speed", "reference_image"):
        value, what = getattr(v, name), f"the {name.replace('_', ' ')} input of the sampler"
        fix = LATENT_FIX if name in ("reference", "first_motion") else "recompute it from its source"
        if hasattr(value, "require_finite"):  # AudioFeatures: checked on their stored features (maybe on disk)
            value.require_finite(what, fix)
        elif value is not None:
            require_finite(value, what, fix)


def _motion_latents(run: _Run, plan: ClipPlan, reference: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """Scaled (1, n, 4, h, w) motion-frame latents for this clip, or None for EMO's zero maps."""
    n = run.net.config.motion_frames
    if n == 0:
        return None
    dropping = run.net.config.motion_pixel_drop > 0 and run.codec is not None
    if plan.motion_from is None:
        if run.video.first_motion is not None:
            first = run.video.first_motion
            if dropping:  # frames of an earlier segment: Hallo2 treats them as any carried frames
                first = run.codec.encode(_drop(run, plan, run.codec.decode(first.to(run.device)).clamp(0, 1)))
            return (first.to(run.device, torch.float32) * SD15_LATENT_SCALE).unsqueeze(0)
        if run.net.config.first_motion == "zeros":
            return None
        if dropping:  # Hallo2 drops pixels of the reference copies too, then encodes them
            copy = run.codec.encode(_drop(run, plan, _reference_pixels(run)))
            reference = copy.to(run.device, torch.float32) * SD15_LATENT_SCALE
        return reference.unsqueeze(1).expand(-1, n, -1, -1, -1)
    carried = out[plan.motion_from.start:plan.motion_from.stop]  # unscaled, CPU
    if run.net.config.motion_source == "pixels":
        if run.codec is None:
            if plan.index == 1:
                log.info("no VAE given: motion frames are carried as latents instead of re-encoded pixels")
        else:
            pixels = run.codec.decode(carried.to(run.device)).clamp(0, 1)
            carried = run.codec.encode(_drop(run, plan, pixels) if dropping else pixels)
    return (carried.to(run.device, torch.float32) * SD15_LATENT_SCALE).unsqueeze(0)


def _reference_pixels(run: _Run) -> torch.Tensor:
    """(1, H, W, 3) 0..1: the portrait, or (without it) the reference latent decoded, a VAE round trip."""
    if run.video.reference_image is not None:
        return run.video.reference_image.to(run.device, torch.float32).unsqueeze(0)[..., :3]
    log.info("no reference image given: the first clip's motion frames are the decoded reference latent")
    return run.codec.decode(run.video.reference.to(run.device).unsqueeze(0)).clamp(0, 1)


def _drop(run: _Run, plan: ClipPlan, images: torch.Tensor) -> torch.Tensor:
    """Hallo2's pixel drop on this clip's motion-frame images (N, H, W, 3) 0..1 (motion_drop)."""
    size = tuple(images.shape[1:3])
    rate = run.net.config.motion_pixel_drop
    keep = (run.drop_mask_fn(plan.index, size) if run.drop_mask_fn
            else keep_mask(run.settings.seed, plan.index, size, rate))
    return drop_pixels(images, keep, run.video.face_mask)


def _sample_clip(run: _Run, plan: ClipPlan, ref, motion, clips: int, on_step, check_cancel) -> torch.Tensor:
    net, s = run.net, run.settings
    guidance = run.guidance > 1.0
    feats = net.with_motion(ref, motion, run.context, run.uncond_context, guidance,
                            zero_motion=net.config.motion_frames)
    cond = _clip_conditions(run, plan, feats)
    h, w = run.video.reference.shape[-2:]
    gen = torch.Generator().manual_seed(clip_seed(s.seed, plan.index))
    shape = (1, 4, plan.length, h, w)
    noise = run.noise_fn(plan.index, shape) if run.noise_fn else torch.randn(shape, generator=gen)
    noise = noise.to(run.device, torch.float32)
    scheduler = build_scheduler(net.config.family, sampler=s.sampler)
    total = clips * s.steps

    x0 = {}

    def report(step: int, steps: int) -> None:
        preview = x0.get("latents")
        if preview is not None:
            preview = preview[:, :, len(plan.frames) // 2]
        on_step(Progress(plan.index + 1, clips, step, steps, plan.index * steps + step, total, preview))

    log.debug("clip %d/%d: frames %s, padding %d", plan.index + 1, clips, plan.frames, plan.padding)
    latents = denoise_clip(net, noise, cond, scheduler, s.steps, run.guidance, eta=s.eta, on_step=report,
                           check_cancel=check_cancel, generator=gen, on_x0=lambda t: x0.update(latents=t))
    return latents[0].permute(1, 0, 2, 3)  # (F, 4, h, w)


def _frames(x: torch.Tensor, plan: ClipPlan) -> torch.Tensor:
    """Rows plan.frames of a per-frame tensor, padded to the clip length by repeating the last row."""
    idx = torch.arange(plan.frames.start, plan.frames.start + plan.length).clamp(max=x.shape[0] - 1)
    return x[idx]


def _audio_length(audio) -> int:
    return audio.shape[0] if isinstance(audio, torch.Tensor) else audio.padded_frames


def _audio_frames(audio, plan: ClipPlan) -> torch.Tensor:
    """The clip's windowed audio rows, cut for this clip only (padded like _frames)."""
    if isinstance(audio, torch.Tensor):
        return _frames(audio, plan)
    start = min(plan.frames.start, audio.padded_frames - 1)
    rows = audio.windowed(start, min(plan.frames.start + plan.length, audio.padded_frames))
    return rows[torch.arange(plan.length).clamp(max=rows.shape[0] - 1)]


def _clip_conditions(run: _Run, plan: ClipPlan, reference) -> ClipConditions:
    net, v, dev = run.net, run.video, run.device
    audio = net.audio_tokens(_audio_frames(v.audio, plan).unsqueeze(0).to(dev))
    face = None
    if v.face_mask is not None:
        face = net.face_features(v.face_mask.unsqueeze(0).to(dev), plan.length)
    masks = None
    if v.masks is not None:
        masks = tuple([_frames(m, plan).to(dev, run.dtype) for m in level] for level in v.masks)
    speed = None if v.speed is None else net.speed_tokens(_frames(v.speed, plan).unsqueeze(0).to(dev))
    scale = torch.tensor(run.settings.motion_scale, device=dev, dtype=run.dtype)
    return ClipConditions(audio=audio, face=face, context=run.context, uncond_context=run.uncond_context,
                          masks=masks, motion_scale=scale, speed=speed, reference=reference)

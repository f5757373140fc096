"""Periodic sample clips during training: the sampler (the same code path as inference) on a fixed sample of the
data set, written as a PNG strip of frames and to TensorBoard."""
from __future__ import annotations

import logging
import os

import torch

from ..sampler import SamplerSettings, VideoConditions, generate
from ..speed import speed_features
from ..windows import window_frames
from .batches import SD15_LATENT_SCALE, hallo_masks_for

log = logging.getLogger(__name__)

PREVIEW_INDEX = 0  # the data set's first sample: fixed, so previews compare across steps


def preview_conditions(net, sample, frames: int, encode) -> VideoConditions:
    """A VideoConditions of `frames` frames from a ClipSample: its first frame as the reference, its own audio,
    speed and united face box (what a user feeds the sampler)."""
    cfg = net.config
    latent = sample.latents[:1] if sample.latents is not None else encode(sample.frames[:1].float())
    m = (cfg.audio_projection.window if cfg.audio_projection else 5) // 2
    face = sample.face_masks[:frames].float().amax(0).expand(cfg.face_locator.conditioning_channels, -1, -1)
    masks = None
    if cfg.audio_attention.form == "hierarchical":
        masks = tuple([lvl[:1] for lvl in part] for part in
                      hallo_masks_for(face[None], 1, len(cfg.unet.block_out_channels)))
    speed = speed_features(sample.speed[:frames], cfg.speed) if cfg.speed is not None else None
    return VideoConditions(reference=latent[0].float() / SD15_LATENT_SCALE, num_frames=frames,
                           audio=window_frames(sample.audio[:frames].float(), m), face_mask=face, masks=masks,
                           speed=speed)


def frames_to_images(latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (F, 4, h, w) -> a rough (F, 3, h, w) 0..1 view (first three channels, min-max scaled)
    when no VAE decoder is at hand."""
    x = latents[:, :3]
    return ((x - x.amin()) / (x.amax() - x.amin()).clamp_min(1e-6)).clamp(0, 1)


def write_preview(cfg, accelerator, net, dataset, encode, step: int, out: str) -> str:
    """Sample a clip with the current weights; returns the PNG path."""
    from PIL import Image

    sample = dataset[PREVIEW_INDEX]
    frames = min(sample.frames.shape[0], net.config.clip_length)
    was_training = net.training
    net.eval()
    try:
        video = preview_conditions(net, sample, frames, encode)
        latents = generate(net, video, SamplerSettings(steps=cfg.sample_steps, seed=cfg.seed))
    finally:
        net.train(was_training)
    images = frames_to_images(latents)
    strip = (torch.cat(list(images), dim=2).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    path = os.path.join(out, "samples", f"step-{step:07d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(strip).save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples/frames", images, step)
    log.info("sample clip at step %d: %s", step, path)
    return path

"""Periodic sample clips during training: the sampler (the same code path as inference) on fixed samples of
held-out data (`preview_data`, else the training data), written as MP4 clips and to TensorBoard.

Each clip shows, side by side, the reference frame, the ground-truth frames and the sampled frames, at the
sample's fps, with the sample's own audio features, face box and head-speed schedule (so a stage-3 clip shows
what the speed layers do). The sampled frames are decoded with the run's VAE (`vae`) when it has one; without
one they are a false-colour view of the latents (first three channels), scaled once per clip.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidConfigError
from ..sampler import SamplerSettings, VaeCodec, VideoConditions, generate
from ..speed import speed_features
from ..windows import window_frames
from .batches import SD15_LATENT_SCALE, Decoder, Encoder, hallo_masks_for

log = logging.getLogger(__name__)

SAMPLES = "samples"
GRID_FRAMES = 4  # frames of each clip shown in TensorBoard (evenly spaced): enough to see motion, small logs


@dataclass(frozen=True)
class PreviewSource:
    """Where the sample clips come from: `dataset` (map-style, items ClipSample) and the indices to render.
    Samples are read again at each preview rather than kept: a 48-frame 512 px sample is 150 MB of float32."""
    dataset: object
    indices: tuple[int, ...]
    where: str


def preview_source(cfg, train_data) -> PreviewSource | None:
    """The run's preview data, checked at start-up so a bad `preview_data` or `preview_samples` is one sentence
    before the first step, not a crash at step `sample_every`. None when previews are off."""
    if not cfg.sample_every:
        if cfg.preview_data:
            log.warning("preview_data is set but sample_every = 0: no sample clips are written")
        return None
    if not cfg.preview_data:
        return _checked_indices(PreviewSource(train_data, cfg.preview_samples, "the training data"))
    from .shards import ShardDataset, shard_paths

    if not os.path.isdir(cfg.preview_data):
        raise InvalidConfigError(f"training config field preview_data={cfg.preview_data!r} is not a folder; "
                                 "set it to a folder of shards prepared by emo-prepare (held out from --data)")
    paths = shard_paths(cfg.preview_data)
    if not paths:
        raise InvalidConfigError(f"training config field preview_data={cfg.preview_data!r} holds no .tar shards; "
                                 "run emo-prepare with --out pointing there first")
    return _checked_indices(PreviewSource(ShardDataset(paths), cfg.preview_samples, repr(cfg.preview_data)))


def _checked_indices(source: PreviewSource) -> PreviewSource:
    count = len(source.dataset)
    bad = [i for i in source.indices if i >= count]
    if bad:
        raise InvalidConfigError(f"training config field preview_samples={list(source.indices)} asks for samples "
                                 f"{bad} but {source.where} has {count}; choose indices below {count}")
    return source


def check_previews(source: PreviewSource | None, net_cfg, has_encoder: bool) -> None:
    """What the network needs of each preview sample (audio feature size, a reference latent), so a mismatched
    held-out set fails at start-up with its value."""
    if source is None:
        return
    ap = net_cfg.audio_projection
    for index in source.indices:
        sample = source.dataset[index]
        if ap is not None and tuple(sample.audio.shape[1:]) != (ap.blocks, ap.channels):
            raise InvalidConfigError(
                f"preview sample {index} ('{sample.key}') of {source.where} has audio features of "
                f"{tuple(sample.audio.shape[1:])} (layers, hidden) but the network takes ({ap.blocks}, {ap.channels}); "
                "prepare the preview data with the training data's audio encoder")
        if sample.latents is None and not has_encoder:
            raise InvalidConfigError(f"preview sample {index} ('{sample.key}') of {source.where} has no latents and "
                                     "the run has no `vae`; prepare it with --vae or set `vae` in the config")


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


def sampler_codec(encode: Encoder | None, decode: Decoder | None) -> VaeCodec | None:
    """The run's VAE in the sampler's contract, so families that re-encode motion frames from pixels (Hallo's
    motion_source, Hallo2's pixel drop) preview as they render; None without a real VAE."""
    if encode is None or decode is None:
        return None
    return VaeCodec(encode=lambda images: encode(images[..., :3].permute(0, 3, 1, 2) * 2 - 1) / SD15_LATENT_SCALE,
                    decode=decode)


def sample_latents(cfg, net, sample, encode: Encoder | None, ema=None, codec: VaeCodec | None = None) -> torch.Tensor:
    """The preview clip of `sample` with the current weights (the EMA weights when `ema` is given, restored
    after): (frames, 4, h, w) UNSCALED latents, seeded by the run's seed so clips compare across steps."""
    frames = min(cfg.preview_frames or sample.frames.shape[0], sample.frames.shape[0])
    settings = SamplerSettings(steps=cfg.sample_steps or None, seed=cfg.seed)
    video = preview_conditions(net, sample, frames, encode)
    video.reference_image = ((sample.frames[0].float() + 1) / 2).clamp(0, 1).permute(1, 2, 0)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), (ema.swapped() if ema is not None else nullcontext()):
            return generate(net, video, settings, codec=codec)
    finally:
        net.train(was_training)


def latent_view(latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (F, 4, h, w) -> a rough (F, h, w, 3) 0..1 view (first three channels, min-max scaled
    over the whole clip so brightness does not flicker) when no VAE decoder is at hand."""
    x = latents[:, :3]
    return ((x - x.amin()) / (x.amax() - x.amin()).clamp_min(1e-6)).clamp(0, 1).permute(0, 2, 3, 1)


def side_by_side(sample, sampled: torch.Tensor) -> torch.Tensor:
    """(F, S, 3S, 3) 0..1: the reference frame, the ground-truth frames and `sampled` (F, H, W, 3) 0..1, the
    latter resized (nearest) to the sample's S x S when it is a latent view."""
    count, size = sampled.shape[0], sample.frames.shape[-1]
    if sampled.shape[1:3] != (size, size):
        sampled = F.interpolate(sampled.permute(0, 3, 1, 2), size=(size, size), mode="nearest").permute(0, 2, 3, 1)
    truth = ((sample.frames[:count].float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return torch.cat([truth[:1].expand(count, -1, -1, -1), truth, sampled.float()], dim=2)


def write_clip(path: str, frames: torch.Tensor, fps: float) -> str:
    """(F, H, W, 3) 0..1 -> an H.264 MP4 at `path`, written as `<path>.partial` and renamed when whole."""
    from ..video_writer import StreamingVideoWriter

    with StreamingVideoWriter(path, frames.shape[2], frames.shape[1], fps) as writer:
        writer.write(frames)
    return path


def clip_path(out: str, step: int, index: int, several: bool) -> str:
    name = f"step-{step:07d}-{index}.mp4" if several else f"step-{step:07d}.mp4"
    return os.path.join(out, SAMPLES, name)


def write_previews(cfg, accelerator, net, source: PreviewSource, encode: Encoder | None, decode: Decoder | None,
                   ema, step: int, out: str) -> list[str]:
    """One clip per preview sample at `step` (main process only); returns the MP4 paths."""
    paths, started = [], time.perf_counter()
    os.makedirs(os.path.join(out, SAMPLES), exist_ok=True)
    for index in source.indices:
        sample = source.dataset[index]
        latents = sample_latents(cfg, net, sample, encode, ema, sampler_codec(encode, decode))
        sampled = decode_frames(latents, decode)
        frames = side_by_side(sample, sampled)
        paths.append(write_clip(clip_path(out, step, index, len(source.indices) > 1), frames, sample.fps))
        _log_grid(accelerator, f"{SAMPLES}/{index}", frames, step)
    log.info("sample clips at step %d%s in %.1f s: %s", step, " (EMA weights)" if ema is not None else "",
             time.perf_counter() - started, ", ".join(paths))
    return paths


def decode_frames(latents: torch.Tensor, decode: Decoder | None, chunk: int = 8) -> torch.Tensor:
    """(F, 4, h, w) unscaled -> (F, H, W, 3) 0..1 through `decode`, `chunk` frames at a time (a 512 px VAE
    decode of a whole segment at once would need several GB), or the latent view without one."""
    if decode is None:
        return latent_view(latents)
    return torch.cat([decode(latents[s:s + chunk]).float().cpu() for s in range(0, latents.shape[0], chunk)])


def _log_grid(accelerator, tag: str, frames: torch.Tensor, step: int) -> None:
    """GRID_FRAMES evenly spaced side-by-side frames stacked into one image (TensorBoard's add_video would need
    moviepy)."""
    picks = torch.linspace(0, frames.shape[0] - 1, min(GRID_FRAMES, frames.shape[0])).round().long()
    grid = torch.cat(list(frames[picks]), dim=0)  # (k * S, 3S, 3)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, step, dataformats="HWC")


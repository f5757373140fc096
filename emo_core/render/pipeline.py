"""One render: the nodes' chain without ComfyUI.

EMO Face Locator -> `prepare_portrait` (face region, Hallo's masks), EMO Reference Encode -> the VAE latent,
identity and ReferenceNet features (kept per portrait, as ComfyUI's cache keeps them), EMO Audio Features ->
`audio_features`, EMO Sampler -> `sampler.generate`, EMO Save Video (Streaming) -> `write_latent_video`: the
latents are decoded `chunk_frames` at a time and written to `<out>.partial`, renamed when complete; an error
or Ctrl-C removes it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import IncompatibleCheckpointError, InvalidInputError
from ..finite import LATENT_FIX, require_finite
from ..memory import MemoryEstimate, check_host_memory, sampling_bytes
from ..sampler import SD15_LATENT_SCALE, SamplerSettings, VaeCodec, VideoConditions, generate
from .media import read_audio, read_face_mask, read_portrait
from .models import RenderModels
from .settings import RenderSettings

log = logging.getLogger(__name__)
SPLIT = "split the audio into shorter parts and render them one after another"


@dataclass
class Portrait:
    """A portrait ready for sampling (what EMO Reference Encode and EMO Face Locator give the sampler):
    image (1, H, W, 3) 0..1, the face region and Hallo's masks, the unscaled latent (4, h, w), the identity
    embedding or None, and the ReferenceNet features for guided sampling. `key` says what it was made from."""
    image: torch.Tensor
    region: Any
    masks: Any
    latent: torch.Tensor
    identity: torch.Tensor | None
    features: Any
    key: tuple


def vae_codec(models: RenderModels) -> VaeCodec:
    """The diffusers VAE with ComfyUI's VAE contract: IMAGE (N, H, W, 3) 0..1 <-> unscaled latents (N, 4, h, w)
    (the posterior's mode, as VAEEncode gives)."""
    vae, device = models.vae, models.device

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        x = images[..., :3].permute(0, 3, 1, 2).to(device, torch.float32) * 2 - 1
        return vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        x = vae.decode(latents.to(device, torch.float32)).sample
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    return VaeCodec(encode=encode, decode=decode)


def prepare_portrait(models: RenderModels, path: str | Path, settings: RenderSettings,
                     face_mask: str | Path | None = None) -> Portrait:
    """Read, locate and encode the portrait once (reused by every render of it with the same settings)."""
    from ..face import face_region
    from ..face_hallo import hallo_masks

    cfg, net = models.net.config, models.net
    image = read_portrait(path, settings.size)
    mask = read_face_mask(face_mask, settings.size) if face_mask else None
    region = face_region(image, settings.expand_ratio, user_mask=mask,
                         channels=cfg.face_locator.conditioning_channels, model_dirs=models.mediapipe_dirs)
    masks = None
    if cfg.audio_attention.form == "hierarchical":
        masks = hallo_masks(image, levels=len(cfg.unet.block_out_channels), model_dirs=models.mediapipe_dirs,
                            user_mask=mask)
    latent = require_finite(vae_codec(models).encode(image)[:1].float().cpu(), "the VAE's latent of the portrait",
                            LATENT_FIX)
    identity = _identity(models, image)
    context, uncond = net.identity_tokens(None if identity is None else identity[None].to(models.device), 1)
    with torch.no_grad():
        features = net.reference_features(latent.to(models.device) * SD15_LATENT_SCALE, context, uncond, True)
    log.info("portrait %s: %dx%d, face box %s, identity %s", Path(path).name, settings.size, settings.size,
             region.box, "from the face model" if identity is not None else "none")
    return Portrait(image, region, masks, latent[0], identity, features, portrait_key(path, settings, face_mask))


def portrait_key(path, settings: RenderSettings, face_mask) -> tuple:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, settings.size, settings.expand_ratio, str(face_mask)


def _identity(models: RenderModels, image: torch.Tensor) -> torch.Tensor | None:
    if models.embedder is None:
        return None
    identity = models.embedder.embed(image, landmark_dirs=models.mediapipe_dirs)[0]
    want = models.net.config.identity.embedding_dim
    if identity.shape[-1] != want:
        raise IncompatibleCheckpointError(f"the face model gives {identity.shape[-1]}-d embeddings but this "
                                          f"checkpoint expects {want}-d (insightface recognition models: 512)")
    return identity


def audio_features(models: RenderModels, audio: dict, fps: float, check_cancel: Callable[[], None]):
    """EMO Audio Features: wav2vec2 features padded to whole clips, or whisper tokens for EchoMimic."""
    cfg = models.net.config
    if models.encoder_kind == "whisper":
        from ..whisper_audio import extract_whisper_features
        return extract_whisper_features(models.encoder, audio, fps, check_cancel=check_cancel).on_host()
    from ..audio import AudioSettings, extract_audio_features
    settings = AudioSettings(fps=fps, window=cfg.audio_projection.window, clip_length=cfg.clip_length)
    return extract_audio_features(models.encoder, audio, settings).on_host()


def render(models: RenderModels, portrait: Portrait, audio_path: str | Path, out: str | Path,
           settings: RenderSettings, display, check_cancel: Callable[[], None] = lambda: None) -> Path:
    """Render `portrait` speaking `audio_path` into the MP4 `out` (H.264 + AAC, the audio cut to the video)."""
    from ..speed import constant_speed, speed_features
    from ..video_writer import write_latent_video

    cfg = models.net.config
    fps = float(settings.fps or cfg.default_fps)
    display.phase("reading the audio")
    audio = read_audio(audio_path)
    display.phase("audio features")
    feats = audio_features(models, audio, fps, check_cancel)
    hw = tuple(portrait.latent.shape[-2:])
    what = f"a {feats.duration:.0f} s video ({feats.num_frames} frames at {8 * hw[1]}x{8 * hw[0]})"
    check_host_memory(MemoryEstimate(sampling_bytes(feats.num_frames, hw, "streaming", settings.chunk_frames), what),
                      SPLIT)
    video = VideoConditions(
        reference=portrait.latent, audio=feats, num_frames=feats.num_frames,
        face_mask=portrait.region.locator_input[0], identity=portrait.identity,
        masks=None if portrait.masks is None else tuple(portrait.masks), reference_features=portrait.features,
        reference_image=portrait.image[0])
    if cfg.speed is not None:
        video.speed = speed_features(constant_speed(settings.speed, feats.num_frames), cfg.speed)
    sampler = SamplerSettings(steps=settings.steps or None, guidance_scale=None if settings.cfg < 0 else settings.cfg,
                              seed=settings.seed, sampler=settings.sampler, motion_scale=settings.motion_scale)
    codec = vae_codec(models)
    display.begin_sampling()
    latents = generate(models.net, video, sampler, codec=codec, on_step=display.on_step, check_cancel=check_cancel)
    require_finite(latents, "the sampled video", "the network overflowed at this precision: use --dtype fp32 or bf16")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"comment": json.dumps({"emo_render": {"family": cfg.family, "model": Path(models.network_path).name,
                                                  "seed": settings.seed, "steps": sampler.for_model(cfg).steps,
                                                  "cfg": sampler.for_model(cfg).guidance_scale, "fps": fps}})}
    return write_latent_video(latents, codec.decode, out, fps, audio=audio, chunk_frames=settings.chunk_frames,
                              crf=settings.crf, metadata=meta, check_cancel=check_cancel, on_chunk=display.on_frames)


def check_output(out: Path, overwrite: bool) -> None:
    """An existing video is never replaced unless asked."""
    if out.exists() and not overwrite:
        raise InvalidInputError(f"{out} exists already; pass --overwrite to replace it or choose another name")
    if out.suffix.lower() != ".mp4":
        raise InvalidInputError(f"the output {out.name} must end in .mp4 (H.264 + AAC)")

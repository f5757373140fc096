"""Fail-early host-memory checks of the audio-features and sampler nodes (estimates in emo_core.memory)."""
from __future__ import annotations

import math

from ..emo_core.audio import AudioSettings
from ..emo_core.frame_file import require_disk_space
from ..emo_core.memory import F32, MemoryEstimate, audio_features_bytes, check_host_memory, features_spill, sampling_bytes

STREAMING_SAVERS = ("EMO_SaveVideo",)
SPLIT = "split the audio into shorter parts and render them one after another"


def after_sampling(prompt, node_id) -> str:
    """What the workflow does with the sampler's LATENT (emo_core.memory.AFTER_SAMPLING): 'vae_decode' when a
    VAE Decode node takes it (every frame decoded at once), 'streaming' when only EMO Save Video does,
    else 'latent'. `prompt` is ComfyUI's hidden PROMPT (the API-format graph), `node_id` the sampler's id."""
    if not isinstance(prompt, dict) or node_id is None:
        return "latent"
    consumers = [node.get("class_type", "") for node in prompt.values() if isinstance(node, dict)
                 and any(isinstance(v, list) and len(v) == 2 and str(v[0]) == str(node_id)
                         for v in (node.get("inputs") or {}).values())]
    if any(c.startswith("VAEDecode") for c in consumers):
        return "vae_decode"
    if consumers and all(c in STREAMING_SAVERS for c in consumers):
        return "streaming"
    return "latent"


def check_sampling(features, latent_hw: tuple[int, int], prompt=None, node_id=None, available=None) -> None:
    """Before sampling: the output latents and, per the workflow, the decoded frames must fit in RAM."""
    after = after_sampling(prompt, node_id)
    h, w = latent_hw
    what = f"a {features.duration:.0f} s video ({features.num_frames} frames at {8 * w}x{8 * h})"
    if after == "vae_decode":
        what += " decoded with VAE Decode"
        remedy = f"use EMO Save Video (Streaming) instead of VAE Decode -> Create Video -> Save Video, or {SPLIT}"
    else:
        remedy = SPLIT
    check_host_memory(MemoryEstimate(sampling_bytes(features.num_frames, (h, w), after), what), remedy, available)


def _encoder_and_audio(audio, encoder):
    """(encoder config, samples per channel, sample rate), or (None, 0, 0) when either is not usable."""
    cfg = getattr(encoder, "config", None)
    wave = audio.get("waveform") if isinstance(audio, dict) else None
    if cfg is None or wave is None or not hasattr(wave, "shape") or "sample_rate" not in audio:
        return None, 0, 0
    samples, rate = int(wave.shape[-1]), int(audio["sample_rate"])
    return (cfg, samples, rate) if samples >= 1 and rate >= 1 else (None, 0, 0)


def check_audio_features(audio: dict, fps: float, clip_length: int, encoder, available=None) -> None:
    """Before extracting features: the signal copies and the (frames, layers, hidden) features must fit (the
    features in RAM, or on the temporary disk when the audio is long enough to be encoded in chunks)."""
    cfg, samples, rate = _encoder_and_audio(audio, encoder)
    if cfg is None:
        return  # bad input is the extractor's to explain
    parts = audio_features_bytes(samples, rate, fps, cfg.num_hidden_layers, cfg.hidden_size,
                                 conv_channels=cfg.conv_dim[-1], heads=cfg.num_attention_heads,
                                 intermediate=cfg.intermediate_size, clip_length=clip_length)
    frames = math.ceil(samples / rate * fps)
    what = f"the features of {samples / rate:.0f} s of audio ({frames} frames at {fps:g} fps)"
    check_host_memory(MemoryEstimate(parts, what), SPLIT, available)
    padded = math.ceil(frames / clip_length) * clip_length
    if features_spill(padded, fps, AudioSettings.chunk_seconds):
        require_disk_space(padded * cfg.num_hidden_layers * cfg.hidden_size * F32, what)


def check_whisper_features(audio: dict, encoder, available=None) -> None:
    """Before extracting whisper features (EchoMimic): signal, log-mel and features must fit in RAM (the features
    on the temporary disk instead when the audio is long)."""
    from ..emo_core.whisper_audio import whisper_features_bytes, whisper_features_disk_bytes

    cfg, samples, rate = _encoder_and_audio(audio, encoder)
    if cfg is None:
        return  # bad input is the extractor's to explain
    layers, width = cfg.encoder_layers + 1, cfg.d_model
    what = f"the whisper features of {samples / rate:.0f} s of audio"
    parts = whisper_features_bytes(samples, rate, layers, width, cfg.num_mel_bins, cfg.encoder_attention_heads)
    check_host_memory(MemoryEstimate(parts, what), SPLIT, available)
    disk = whisper_features_disk_bytes(samples, rate, layers, width)
    if disk:
        require_disk_space(disk, what)

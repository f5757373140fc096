"""Audio features for EMO / Hallo: ComfyUI AUDIO -> 16 kHz mono -> wav2vec2 all-layer features per video frame.

Hallo-compatible maths (its AudioProcessor.preprocess without vocal separation):
1. mix down to mono, resample to 16 kHz; normalise over the whole clip: (x - mean) / sqrt(var + 1e-7);
2. frame count = ceil(samples / 16000 * fps); the normalised signal is zero-padded by whole frames
   (16000 // fps samples each) up to a multiple of `clip_length`, so the sampler can run whole clips;
3. the wav2vec2 CNN runs on the padded signal (about 50 Hz); its output is linearly interpolated
   (align_corners=True) to the padded frame count BEFORE feature projection and the transformer;
4. the outputs of every transformer layer are stacked per frame: (frames, layers, hidden);
5. windows of m frames each side, clamped at the ends of the padded sequence: (frames, 2m+1, layers, hidden).
The last video frame covers the partial remainder of the audio; frames after `num_frames` exist only
as padding and are trimmed by the sampler.

Long audio runs in chunks (`chunk_seconds`, with `context_seconds` of audio each side) so memory stays
bounded; audio no longer than one chunk takes the exact single-pass path above.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from math import gcd

import torch
import torch.nn.functional as F

from .errors import InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CNN_CHUNK_SECONDS = 10.0  # wav2vec2 CNN chunks for audio longer than one transformer chunk


@dataclass(frozen=True)
class AudioSettings:
    """fps: video frame rate. window: 2m+1 frames. clip_length: pad the frame count to a multiple of it."""
    fps: float = 25.0
    window: int = 5
    clip_length: int = 1
    chunk_seconds: float = 60.0
    context_seconds: float = 5.0

    def validate(self) -> AudioSettings:
        if not (1 <= self.fps <= 240):
            raise InvalidInputError(f"fps must be between 1 and 240, got {self.fps}")
        if self.window < 1 or self.window % 2 == 0:
            raise InvalidInputError(f"window must be odd (2m+1 frames), got {self.window}")
        if self.clip_length < 1:
            raise InvalidInputError(f"clip_length must be >= 1, got {self.clip_length}")
        if self.chunk_seconds <= 2 * self.context_seconds or self.context_seconds < 0:
            raise InvalidInputError(f"chunk_seconds ({self.chunk_seconds}) must exceed twice context_seconds "
                                    f"({self.context_seconds})")
        return self


@dataclass
class AudioFeatures:
    """Per-frame wav2vec2 features of one audio track.

    hidden: (padded_frames, layers, hidden) float32, padded to a whole number of clips.
    num_frames: the video's frame count, ceil(duration x fps). window: 2m+1.
    Windows are cut per clip on demand (5x smaller in memory than storing them).
    """
    hidden: torch.Tensor
    num_frames: int
    fps: float
    duration: float
    window: int = 5

    @property
    def padded_frames(self) -> int:
        return self.hidden.shape[0]

    def windowed(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(stop - start, 2m+1, layers, hidden), clamped at the ends of the whole padded sequence."""
        stop = self.padded_frames if stop is None else stop
        if not 0 <= start < stop <= self.padded_frames:
            raise InvalidInputError(f"frame range [{start}, {stop}) outside 0..{self.padded_frames}")
        m, last = self.window // 2, self.padded_frames - 1
        return self.hidden[(torch.arange(start, stop)[:, None] + torch.arange(-m, m + 1)).clamp(0, last)]


def frame_count(samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames for `samples` of audio: ceil(duration x fps), as Hallo computes it."""
    return math.ceil(samples / sample_rate * fps)


def to_mono_16k(audio: dict) -> torch.Tensor:
    """ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate": int} -> (samples,) float32 at 16 kHz."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InvalidInputError("audio must be ComfyUI AUDIO: {'waveform': [batch, channels, samples], 'sample_rate'}")
    wave, rate = torch.as_tensor(audio["waveform"]), int(audio["sample_rate"])
    if wave.dim() == 2:
        wave = wave.unsqueeze(0)
    if wave.dim() != 3:
        raise InvalidInputError(f"audio waveform must be [batch, channels, samples], got shape {tuple(wave.shape)}")
    if wave.shape[0] > 1:
        log.info("audio batch of %d: using the first item", wave.shape[0])
    if wave.shape[-1] == 0 or wave.shape[1] == 0:
        raise InvalidInputError("the audio is empty (0 samples); connect a file with sound in it")
    if rate < 1000:
        raise InvalidInputError(f"audio sample rate {rate} Hz is not plausible; expected 8000 to 48000 Hz")
    mono = _mix_down(wave[0])
    if not torch.isfinite(mono).all():
        raise InvalidInputError("the audio contains NaN or infinite samples; re-encode the file")
    return resample(mono, rate, SAMPLE_RATE).to(torch.float32)


def _mix_down(channels: torch.Tensor) -> torch.Tensor:
    """(C, T) -> (T,) float64 mean of the channels, one channel at a time: the same sums as
    `channels.double().mean(0)` without a float64 copy of every channel (8 bytes x C per sample)."""
    if channels.shape[0] == 1:
        return channels[0].to(torch.float64)
    mono = channels[0].to(torch.float64)
    for c in range(1, channels.shape[0]):
        mono += channels[c]
    return mono.div_(channels.shape[0])


def resample(wave: torch.Tensor, rate: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample a 1-D signal: torchaudio when importable, else scipy's polyphase resample_poly."""
    if rate == target:
        return wave
    try:
        import torchaudio.functional as taf
        return taf.resample(wave.unsqueeze(0), rate, target).squeeze(0)
    except (ImportError, OSError, RuntimeError):
        pass  # torchaudio missing, or its compiled part does not load against this torch
    try:
        from scipy.signal import resample_poly
    except ImportError as err:
        raise MissingDependencyError("resampling audio needs torchaudio or scipy: pip install scipy") from err
    g = gcd(rate, target)
    return torch.from_numpy(resample_poly(wave.numpy(), target // g, rate // g).copy()).to(wave.dtype)


def normalise(wave: torch.Tensor) -> torch.Tensor:
    """Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation over the whole clip (silence stays 0)."""
    w = wave.to(torch.float64, copy=True)
    mean, std = w.mean(), torch.sqrt(w.var(unbiased=False) + 1e-7)
    return w.sub_(mean).div_(std).to(torch.float32)  # in place: one float64 copy, not three


def extract_audio_features(model, audio, settings: AudioSettings = AudioSettings()) -> AudioFeatures:
    """ComfyUI AUDIO (or a 16 kHz mono (samples,) tensor) -> AudioFeatures, with Hallo's maths."""
    settings.validate()
    wave = to_mono_16k(audio) if isinstance(audio, dict) else torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
    if wave.numel() == 0:
        raise InvalidInputError("the audio is empty (0 samples); connect a file with sound in it")
    if not torch.isfinite(wave).all():
        raise InvalidInputError("the audio contains NaN or infinite samples; re-encode the file")
    frames = frame_count(wave.numel(), settings.fps)
    padded = math.ceil(frames / settings.clip_length) * settings.clip_length
    signal = F.pad(normalise(wave), (0, (padded - frames) * int(SAMPLE_RATE // settings.fps)))
    hidden = _encode(model, signal, padded, settings)
    log.info("audio features: %.2f s -> %d frames at %g fps (%d padded)", wave.numel() / SAMPLE_RATE, frames,
             settings.fps, padded)
    return AudioFeatures(hidden, frames, settings.fps, wave.numel() / SAMPLE_RATE, settings.window)


def _encode(model, signal: torch.Tensor, frames: int, settings: AudioSettings) -> torch.Tensor:
    """CNN exactly (in chunks), interpolation over the whole sequence, then the transformer: one exact
    pass when the audio fits one chunk, else chunks of frames with `context_seconds` each side."""
    from .wav2vec import cnn_features, encode_frames

    chunk = max(1, int(settings.chunk_seconds * settings.fps))
    if frames <= chunk:
        cnn = cnn_features(model, signal, chunk_samples=int(settings.chunk_seconds * SAMPLE_RATE))
        return encode_frames(model, cnn, frames)
    # Long audio: the CNN (exact in chunks) runs on shorter chunks, since its first layer's float64
    # GroupNorm over a chunk is the largest transient of the extraction (about 200 MB per 10 s).
    cnn = cnn_features(model, signal, chunk_samples=int(CNN_CHUNK_SECONDS * SAMPLE_RATE))
    # Global frame -> CNN-position map (align_corners=True), so chunking only limits attention's reach.
    positions = torch.linspace(0, cnn.shape[0] - 1, frames)
    context = int(settings.context_seconds * settings.fps)
    step = chunk - 2 * context
    out = None  # filled in place: concatenating parts would hold the features twice
    for start in range(0, frames, step):
        stop = min(start + step, frames)
        lo, hi = max(0, start - context), min(frames, stop + context)
        part = _encode_span(model, cnn, positions[lo:hi], (start - lo, stop - lo))
        if out is None:
            out = torch.empty(frames, *part.shape[1:], dtype=part.dtype)
        out[start:stop] = part
    return out


def _encode_span(model, cnn: torch.Tensor, positions: torch.Tensor, keep: tuple[int, int]) -> torch.Tensor:
    """Encode the frames at fractional CNN `positions` (linear interpolation, as the global pass does)."""
    from .wav2vec import encode_frames

    lo = int(positions[0].floor())
    hi = min(cnn.shape[0] - 1, int(positions[-1].ceil()))
    pos = positions - lo
    left = pos.floor().long().clamp(max=hi - lo)
    right = (left + 1).clamp(max=hi - lo)
    frac = (pos - left)[:, None]
    span = cnn[lo:hi + 1]
    sampled = span[left] * (1 - frac) + span[right] * frac
    # `sampled` already has one row per frame: identity interpolation inside encode_frames.
    return encode_frames(model, sampled, sampled.shape[0], keep)

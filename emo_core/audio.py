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
bounded, and its features go to a temporary file as each chunk is made (frame_file.FrameFile): a 10-minute
track's 600 MB of features cost no RAM. Audio no longer than one chunk takes the exact single-pass path above
and keeps its features in memory.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from math import gcd

import torch
import torch.nn.functional as F

from .errors import InvalidInputError, MissingDependencyError
from .frame_file import FrameFile, StoredRows
from .memory import features_spill

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# The wav2vec2 CNN runs exactly in chunks of this much audio: its first layer's float64 GroupNorm is the largest
# transient of the extraction (about 20 MB per second of audio), and a larger one also fragments the heap the
# transformer chunks then allocate from (a 10 s chunk raised a 10-minute track's peak by 240 MB).
CNN_CHUNK_SECONDS = 2.5
RESAMPLE_BLOCK_SECONDS = 10.0  # input audio mixed down and resampled this much at a time


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
class AudioFeatures(StoredRows):
    """Per-frame wav2vec2 features of one audio track.

    hidden: (padded_frames, layers, hidden) float32, padded to a whole number of clips; a FrameFile on disk
        for audio longer than one transformer chunk (AudioSettings.chunk_seconds), else a tensor.
    num_frames: the video's frame count, ceil(duration x fps). window: 2m+1.
    Windows are cut per clip on demand (5x smaller in memory than storing them).
    """
    hidden: torch.Tensor | FrameFile
    num_frames: int
    fps: float
    duration: float
    window: int = 5

    @property
    def padded_frames(self) -> int:
        return self.hidden.shape[0]

    def rows(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The stored features of frames start..stop as a tensor (read from disk when spilled)."""
        stop = self.padded_frames if stop is None else stop
        return self._stored(start, stop)

    def windowed(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(stop - start, 2m+1, layers, hidden), clamped at the ends of the whole padded sequence."""
        stop = self.padded_frames if stop is None else stop
        if not 0 <= start < stop <= self.padded_frames:
            raise InvalidInputError(f"frame range [{start}, {stop}) outside 0..{self.padded_frames}")
        m, last = self.window // 2, self.padded_frames - 1
        lo, hi = max(0, start - m), min(last, stop - 1 + m) + 1  # only the rows these windows reach
        index = (torch.arange(start, stop)[:, None] + torch.arange(-m, m + 1)).clamp(0, last)
        return self.rows(lo, hi)[index - lo]


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
    return _mono_16k_in_blocks(wave[0], rate)


def _mono_16k_in_blocks(channels: torch.Tensor, rate: int) -> torch.Tensor:
    """(C, T) at `rate` -> (samples,) float32 mono at 16 kHz, RESAMPLE_BLOCK_SECONDS of input at a time.

    Each block is resampled with enough real samples either side for the filter to reach (_resample_reach),
    so the kept outputs are the same sums as one pass over the whole track, while the float64 copies (8 bytes
    per sample) and the resampler's buffers exist for one block, not for a 10-minute song (480 MB)."""
    total = channels.shape[-1]
    g = gcd(rate, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, rate // g  # output rows `up` per `down` input samples: blocks align at `down`
    n_out = -(-total * up // down)
    block = down * max(1, int(RESAMPLE_BLOCK_SECONDS * rate) // down)
    context = down * -(-_resample_reach(up, down) // down)
    out = torch.empty(n_out, dtype=torch.float32)
    for a in range(0, total, block):
        b = min(total, a + block)
        lo, hi = max(0, a - context), min(total, b + context)
        mono = _mix_down(channels[:, lo:hi])
        if not torch.isfinite(mono).all():
            raise InvalidInputError("the audio contains NaN or infinite samples; re-encode the file")
        first, last = a * up // down, (n_out if b == total else b * up // down)
        offset = lo * up // down
        out[first:last] = resample(mono, rate, SAMPLE_RATE)[first - offset:last - offset].to(torch.float32)
    return out


def _resample_reach(up: int, down: int) -> int:
    """Input samples either side of an output that `resample` reads, for both back-ends, plus a margin:
    scipy's resample_poly filter has 10 x max(up, down) taps each side at the upsampled rate; torchaudio's
    sinc kernel (lowpass_filter_width 6, rolloff 0.99) spans `width + down` input samples after a position."""
    scipy_reach = 10 * max(up, down) // up + 1
    torchaudio_reach = math.ceil(6 * down / (0.99 * min(up, down))) + down
    return max(scipy_reach, torchaudio_reach) + 2


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
    samples, frames = wave.numel(), frame_count(wave.numel(), settings.fps)
    padded = math.ceil(frames / settings.clip_length) * settings.clip_length
    signal = F.pad(normalise(wave), (0, (padded - frames) * int(SAMPLE_RATE // settings.fps)))
    del wave  # the padded signal replaces it: one 16 kHz copy of a long track during the encoding, not two
    hidden = _encode(model, signal, padded, settings)
    log.info("audio features: %.2f s -> %d frames at %g fps (%d padded)", samples / SAMPLE_RATE, frames,
             settings.fps, padded)
    return AudioFeatures(hidden, frames, settings.fps, samples / SAMPLE_RATE, settings.window)


def _encode(model, signal: torch.Tensor, frames: int, settings: AudioSettings) -> torch.Tensor | FrameFile:
    """CNN exactly (in chunks), interpolation over the whole sequence, then the transformer: one exact
    pass when the audio fits one chunk, else chunks of frames with `context_seconds` each side, stored in a
    FrameFile (float32) as they are made."""
    from .wav2vec import cnn_features, cnn_length, cnn_stats, encode_frames

    chunk = max(1, int(settings.chunk_seconds * settings.fps))
    cnn_chunk = int(CNN_CHUNK_SECONDS * SAMPLE_RATE)
    if not features_spill(frames, settings.fps, settings.chunk_seconds):
        return encode_frames(model, cnn_features(model, signal, cnn_chunk), frames)
    # Long audio: the CNN runs only for the rows each transformer chunk reads, since its whole-track output
    # would grow with the length (6 MB a minute).
    stats, cnn_rows = cnn_stats(model, signal, cnn_chunk), cnn_length(model, signal.numel())
    # Global frame -> CNN-position map (align_corners=True), so chunking only limits attention's reach.
    positions = torch.linspace(0, cnn_rows - 1, frames)
    context = int(settings.context_seconds * settings.fps)
    step = chunk - 2 * context
    out = None  # written as each chunk is made: on disk, since the features grow with the length
    for start in range(0, frames, step):
        stop = min(start + step, frames)
        lo, hi = max(0, start - context), min(frames, stop + context)
        first, last = int(positions[lo].floor()), min(cnn_rows - 1, int(positions[hi - 1].ceil())) + 1
        cnn = cnn_features(model, signal, cnn_chunk, rows=(first, last), stats=stats)
        part = _encode_span(model, cnn, positions[lo:hi] - first, (start - lo, stop - lo))
        if out is None:
            out = FrameFile(frames, tuple(part.shape[1:]), torch.float32)
        out.write(start, part)
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

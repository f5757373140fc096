"""EchoMimic v1's audio front end: 16 kHz mono -> whisper log-mel -> encoder features -> 10 whisper frames per
video frame (src/models/whisper/audio2feature.py and its modified whisper `transcribe`).

1. log-mel (whisper's `log_mel_spectrogram`): STFT n_fft 400, hop 160, periodic Hann, centred with reflect
   padding, the last frame dropped, power, 80 slaney mel filters, log10(max(., 1e-10)), then
   max(., max of the WHOLE clip - 8), (x + 4) / 4. The waveform is NOT padded to 30 s first (whisper's
   `transcribe` pads the normalised mel instead; padding the waveform changes every feature by up to 2.7).
2. 30-s segments: mel[:, seek:seek + 3000] for seek = 0, 3000, ..., each zero-padded (0.0) to 3000 frames and
   encoded on its own (attention spans the padding, so real frames depend on it).
3. features per segment: [after conv + positional embedding, every block's output] WITHOUT ln_post (EchoMimic
   never uses ln_post's output; transformers' last hidden state is after it), first int(frames / 2) rows kept,
   concatenated: (T, blocks + 1, C) at 50 Hz.
4. video frame i reads the 10 whisper frames centre-4 .. centre+5 (centre = int(i * 50 / fps)), clamped to
   [0, T - 1], frame-major: token k of a frame is features[index[k // layers], k % layers].
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .audio import SAMPLE_RATE, to_mono_16k
from .errors import InvalidInputError
from .frame_file import FrameFile, StoredRows

log = logging.getLogger(__name__)

N_FFT, HOP = 400, 160
SEGMENT_FRAMES = 3000  # mel frames per encoder window (30 s); whisper's positional embedding fixes it
WHISPER_RATE = 50  # encoder rows per second: SAMPLE_RATE / HOP / 2
LEFT, RIGHT = 4, 5  # whisper frames each side of the centre (EchoMimic's audio_feat_length [2, 2])
WINDOW = LEFT + RIGHT + 1
MEL_BLOCK_FRAMES = 3000  # the STFT runs this many frames at a time: its complex output is 16x the mel's size
SPILL_SECONDS = 60.0  # longer audio keeps its features in a temporary file (frame_file), as the wav2vec2 path does


@dataclass
class WhisperFeatures(StoredRows):
    """Whisper features of one audio track and the EchoMimic token windows cut from them on demand.

    hidden: (T, layers, C) float32 at 50 Hz (layers = encoder blocks + 1): a tensor, or a FrameFile on disk for
        audio longer than SPILL_SECONDS.
    num_frames: the video's frame count, min(ceil(duration x fps), token_frames): one frame per 1/fps s of audio
        (the last covering the partial remainder, as the wav2vec2 path counts), never more than EchoMimic makes
        tokens for. EchoMimic's own rule (token_frames, about T x fps / 50 + 2) runs a frame or two past the end of
        the audio on frames whose windows are clamped copies of the last whisper frame; a ComfyUI video matches
        its audio's length, and EchoMimic itself takes min(requested length, token_frames).
    token_frames: EchoMimic's token count N = 1 + min{i : int(i * 50 / fps) > T}; windows exist for frames 0..N-1.
    window: whisper frames per video frame (10).
    """
    hidden: torch.Tensor | FrameFile
    num_frames: int
    fps: float
    duration: float
    token_frames: int
    window: int = WINDOW

    @property
    def padded_frames(self) -> int:
        """Video frames that have token windows (EchoMimic's N >= num_frames)."""
        return self.token_frames

    @property
    def feature_rows(self) -> int:
        return self.hidden.shape[0]

    def rows(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Whisper feature rows start..stop (50 Hz, not video frames) as a tensor (read from disk when spilled)."""
        stop = self.feature_rows if stop is None else stop
        return self._stored(start, stop)

    def frame_index(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(stop - start, 10) int64 whisper rows read by video frames start..stop (EchoMimic's get_sliced_feature)."""
        stop = self.padded_frames if stop is None else stop
        if not 0 <= start < stop <= self.padded_frames:
            raise InvalidInputError(f"frame range [{start}, {stop}) outside 0..{self.padded_frames}")
        return token_frame_index(range(start, stop), self.fps, self.feature_rows)

    def windowed(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(stop - start, 10, layers, C): EchoMimic's per-frame tokens, frame-major, so that
        `windowed(...).flatten(1, 2)` is its (frames, 10 x layers, C) audio_cond_fea."""
        index = self.frame_index(start, stop)
        lo, hi = int(index.min()), int(index.max()) + 1  # only the rows these windows reach
        return self.rows(lo, hi)[index - lo]


def token_frame_index(frames, fps: float, rows: int) -> torch.Tensor:
    """(len(frames), 10) int64: video frame i reads whisper rows int(i * 50 / fps) - 4 .. + 5, clamped to
    [0, rows - 1] (EchoMimic computes the centre as int(vid_idx * 50 / fps), in Python floats, as here)."""
    centres = torch.tensor([int(i * WHISPER_RATE / fps) for i in frames], dtype=torch.int64)
    return (centres[:, None] + torch.arange(-LEFT, RIGHT + 1)).clamp(0, rows - 1)


def token_frame_count(rows: int, fps: float) -> int:
    """EchoMimic's feature2chunks frame count: it appends frame i, then stops after the first i with
    int(i * (50. / fps)) > rows, so N = 1 + that i. (The stop test multiplies by 50. / fps, the centre divides
    i * 50 by fps; the two can round differently, so each is computed as EchoMimic does.)"""
    step = WHISPER_RATE / fps
    i = max(0, int(rows / step) - 2)  # start below the answer; the loop below finds it exactly
    while int(i * step) <= rows:
        i += 1
    while i > 0 and int((i - 1) * step) > rows:
        i -= 1
    return i + 1


def mel_filters(n_mels: int) -> torch.Tensor:
    """(n_mels, 201) float32 slaney mel filter bank at 16 kHz, as transformers' WhisperFeatureExtractor builds it
    (librosa.filters.mel(sr=16000, n_fft=400, n_mels), whisper's assets/mel_filters.npz)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                           mel_scale="slaney")
    return torch.from_numpy(bank.T.copy()).to(torch.float32)


@torch.no_grad()
def log_mel(wave: torch.Tensor, n_mels: int = 80, block_frames: int = MEL_BLOCK_FRAMES) -> torch.Tensor:
    """(samples,) float32 16 kHz -> (n_mels, samples // 160) whisper log-mel, normalised with the whole clip's max.

    Computed `block_frames` frames at a time over the reflect-padded signal (each STFT frame reads only its own
    400 samples, so blocks give the frames one pass gives) without a padded copy of the whole track."""
    samples = wave.numel()
    if samples <= N_FFT // 2:
        raise InvalidInputError(f"the audio is too short for whisper ({samples} samples at 16 kHz); connect at "
                                f"least {(N_FFT // 2 + 1) / SAMPLE_RATE * 1000:.0f} ms of sound")
    frames = samples // HOP
    window, filters = torch.hann_window(N_FFT), mel_filters(n_mels)
    out = torch.empty(n_mels, frames)
    for a in range(0, frames, block_frames):
        b = min(a + block_frames, frames)
        chunk = _reflect_slice(wave, a * HOP - N_FFT // 2, (b - 1) * HOP + N_FFT // 2)
        spec = torch.stft(chunk, N_FFT, HOP, window=window, center=False, return_complex=True)
        out[:, a:b] = torch.clamp(filters @ spec.abs().square_(), min=1e-10).log10_()
    out = torch.maximum(out, out.max() - 8.0)
    return out.add_(4.0).div_(4.0)


def _reflect_slice(wave: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """wave[lo:hi] of the signal reflect-padded at both ends (torch.stft(center=True)'s padding; lo may be
    negative and hi past the end by at most N_FFT // 2)."""
    n = wave.numel()
    parts = []
    if lo < 0:
        parts.append(wave[1:1 - lo].flip(0))
    parts.append(wave[max(lo, 0):min(hi, n)])
    if hi > n:
        parts.append(wave[n - 1 - (hi - n):n - 1].flip(0))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def encode_segment(encoder, mel: torch.Tensor) -> torch.Tensor:
    """(n_mels, frames <= 3000) normalised log-mel -> (1500, layers + 1, C) float32: the output after conv +
    positional embedding and after every block, NOT after ln_post. The segment is zero-padded (0.0) to 3000
    frames first, as whisper's transcribe pads it.

    The encoder's steps run here one by one, with no hooks (forward hooks live on the shared model, so two calls
    at once would collect each other's layers; see wav2vec._layer_outputs)."""
    p = next(encoder.parameters())
    x = F.pad(mel, (0, SEGMENT_FRAMES - mel.shape[-1]))[None].to(p.device, p.dtype)
    x = F.gelu(encoder.conv1(x))
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    out = torch.empty(x.shape[1], len(encoder.layers) + 1, x.shape[-1])
    out[:, 0] = x[0]
    for i, layer in enumerate(encoder.layers):  # eval mode: no dropout, no LayerDrop
        y = layer(x, None, **_layer_kwargs(layer))
        x = y[0] if isinstance(y, tuple) else y  # a tuple in transformers 4
        out[:, i + 1] = x[0]
    return out


def _layer_kwargs(layer) -> dict:
    """transformers 4 requires layer_head_mask positionally-or-by-name; 5 has no such argument."""
    import inspect

    return {"layer_head_mask": None} if "layer_head_mask" in inspect.signature(layer.forward).parameters else {}


def extract_whisper_features(encoder, audio, fps: float, spill_seconds: float = SPILL_SECONDS,
                             check_cancel=lambda: None) -> WhisperFeatures:
    """ComfyUI AUDIO (or a 16 kHz mono (samples,) tensor) -> WhisperFeatures, with EchoMimic's maths."""
    if not (1 <= fps <= 240):
        raise InvalidInputError(f"fps must be between 1 and 240, got {fps}")
    wave = to_mono_16k(audio) if isinstance(audio, dict) else torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
    if wave.numel() == 0:
        raise InvalidInputError("the audio is empty (0 samples); connect a file with sound in it")
    if not torch.isfinite(wave).all():
        raise InvalidInputError("the audio contains NaN or infinite samples; re-encode the file")
    samples = wave.numel()
    mel = log_mel(wave.to(torch.float32), encoder.config.num_mel_bins)
    del wave
    hidden = _encode_segments(encoder, mel, samples / SAMPLE_RATE > spill_seconds, check_cancel)
    rows = hidden.shape[0]
    token_frames = token_frame_count(rows, fps)
    frames = min(math.ceil(samples / SAMPLE_RATE * fps), token_frames)
    log.info("whisper features: %.2f s -> %d rows, %d frames at %g fps (%d with tokens)", samples / SAMPLE_RATE,
             rows, frames, fps, token_frames)
    return WhisperFeatures(hidden, frames, fps, samples / SAMPLE_RATE, token_frames)


def _encode_segments(encoder, mel: torch.Tensor, spill: bool, check_cancel) -> torch.Tensor | FrameFile:
    """Every 30-s segment encoded on its own; int(frames / 2) rows of each kept, written as made."""
    total = mel.shape[-1]
    rows = sum(min(SEGMENT_FRAMES, total - seek) // 2 for seek in range(0, total, SEGMENT_FRAMES))
    if rows < 1:
        raise InvalidInputError(f"the audio is too short for whisper ({total} mel frames give no feature row); "
                                "connect at least 20 ms of sound")
    shape = (len(encoder.layers) + 1, encoder.config.d_model)
    out = FrameFile(rows, shape) if spill else torch.empty(rows, *shape)
    done = 0
    for seek in range(0, total, SEGMENT_FRAMES):
        check_cancel()
        segment = mel[:, seek:seek + SEGMENT_FRAMES]
        keep = segment.shape[-1] // 2
        if keep == 0:
            continue
        part = encode_segment(encoder, segment)[:keep]
        if spill:
            out.write(done, part)
        else:
            out[done:done + keep] = part
        done += keep
    return out


def whisper_features_bytes(samples: int, sample_rate: int, layers: int, width: int, n_mels: int = 80,
                           heads: int = 6, spill_seconds: float = SPILL_SECONDS) -> dict:
    """Peak extra host bytes of extract_whisper_features for `samples` samples (per channel) at `sample_rate`:
    the float32 16 kHz signal (resampled in blocks, through float64 blocks), the log-mel, one segment's encoder
    activations, and the (rows, layers, width) features unless they go to a temporary file (audio longer than
    `spill_seconds`; whisper_features_disk_bytes)."""
    s16 = math.ceil(samples * SAMPLE_RATE / sample_rate)
    rows = s16 // HOP // 2
    mel = n_mels * (s16 // HOP) * 4
    segment = SEGMENT_FRAMES // 2 * ((layers + 4) * width + heads * SEGMENT_FRAMES // 2) * 4
    parts = {"audio processing": 3 * 4 * s16 + mel + segment}
    if s16 / SAMPLE_RATE <= spill_seconds:
        parts["audio features"] = rows * layers * width * 4
    return parts


def whisper_features_disk_bytes(samples: int, sample_rate: int, layers: int, width: int,
                                spill_seconds: float = SPILL_SECONDS) -> int:
    """Temporary-file bytes of the features (0 when they stay in memory)."""
    s16 = math.ceil(samples * SAMPLE_RATE / sample_rate)
    return 0 if s16 / SAMPLE_RATE <= spill_seconds else s16 // HOP // 2 * layers * width * 4

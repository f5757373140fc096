"""Synthetic talking-head videos with known ground truth, to test data preparation and training end to end.

A real portrait (so MediaPipe finds a real face) turns in the image plane (roll) at a known, varying angular
speed, and a dark mouth opens in proportion to the loudness of a generated audio track (harmonic "voice" in
syllable-like bursts). Each video is an MP4 (H.264 + AAC, written with the pack's StreamingVideoWriter) with a
sidecar `<name>.json` holding the truth per frame: roll angle (rad), speed (rad/s, measured as the pose
estimate measures it: angle turned since the previous frame x fps), loudness (0..1) and mouth centre.

Kinds cover the preparation's edge cases: "talking" (the normal case), "noface" (the image has no face),
"silent" (an all-zero audio track), "no_audio" (no audio stream) and "two_faces" (two heads side by side).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..json_file import write_json_atomic

log = logging.getLogger(__name__)

KINDS = ("talking", "noface", "silent", "no_audio", "two_faces")
SAMPLE_RATE = 16000
MOUTH_KEYPOINT = 3  # MediaPipe BlazeFace keypoints: right eye, left eye, nose tip, mouth centre, ears


@dataclass(frozen=True)
class SyntheticSettings:
    """duration: seconds. fps: frame rate (odd rates such as 29.97 are fine). size: square side in pixels
    (>= 96 keeps MediaPipe finding the two heads of "two_faces"). max_roll: largest roll angle in radians.
    seed: fixes the motion and the audio."""
    duration: float = 2.0
    fps: float = 25.0
    size: int = 96
    kind: str = "talking"
    max_roll: float = 0.6
    seed: int = 0

    def validate(self) -> SyntheticSettings:
        if self.kind not in KINDS:
            raise InvalidInputError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not (0.2 <= self.duration <= 600):
            raise InvalidInputError(f"duration must be 0.2..600 s, got {self.duration}")
        if not (1 <= self.fps <= 120):
            raise InvalidInputError(f"fps must be 1..120, got {self.fps}")
        if self.size < 32 or self.size % 2:
            raise InvalidInputError(f"size must be an even number >= 32, got {self.size}")
        if not (0 <= self.max_roll <= math.pi / 2):
            raise InvalidInputError(f"max_roll must be 0..pi/2 rad, got {self.max_roll}")
        return self

    @property
    def frames(self) -> int:
        return max(2, round(self.duration * self.fps))


def roll_track(settings: SyntheticSettings, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles (frames,) rad, speed (frames,) rad/s) float64: two sines of random period and phase, so the
    speed varies over the clip; speed[i] = |angle[i] - angle[i-1]| x fps and speed[0] = speed[1], which is
    what emo_core.speed_pose measures from a pose before smoothing."""
    t = torch.arange(settings.frames, dtype=torch.float64) / settings.fps
    r = torch.rand(4, generator=gen, dtype=torch.float64)
    slow, fast = 0.3 + 0.4 * r[0], 0.9 + 0.8 * r[1]       # Hz: a nod-like sway plus a quicker turn
    angle = settings.max_roll * (0.65 * torch.sin(2 * math.pi * slow * t + 6.28 * r[2])
                                 + 0.35 * torch.sin(2 * math.pi * fast * t + 6.28 * r[3]))
    step = (angle[1:] - angle[:-1]).abs() * settings.fps
    return angle, torch.cat([step[:1], step])


def voice_track(settings: SyntheticSettings, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(wave (samples,) float32 at 16 kHz in -1..1, loudness (frames,) float64 0..1): harmonics of a random
    pitch plus breath noise, gated into syllables (3-5 per second) and phrases (pauses of silence)."""
    samples = round(settings.frames / settings.fps * SAMPLE_RATE)
    t = torch.arange(samples, dtype=torch.float64) / SAMPLE_RATE
    r = torch.rand(3, generator=gen, dtype=torch.float64)
    pitch, syllables = 110 + 120 * r[0], 3 + 2 * r[1]
    carrier = sum(torch.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3))
    carrier = carrier + 0.3 * torch.randn(samples, generator=gen, dtype=torch.float64)
    envelope = torch.sin(math.pi * syllables * t + 6.28 * r[2]).abs() ** 2
    phrase = torch.rand(math.ceil(samples / (SAMPLE_RATE * 0.6)) + 1, generator=gen) > 0.3
    phrase[0] = True  # every talking clip starts with speech
    envelope = envelope * phrase[(t / 0.6).long()].to(torch.float64)
    wave = (0.4 * carrier * envelope).clamp(-1, 1)
    per_frame = torch.tensor([wave[math.floor(i / settings.fps * SAMPLE_RATE):
                                   math.floor((i + 1) / settings.fps * SAMPLE_RATE)].square().mean().sqrt()
                              for i in range(settings.frames)], dtype=torch.float64).nan_to_num(0.0)
    loudness = per_frame / per_frame.max() if per_frame.max() > 0 else per_frame
    return wave.to(torch.float32), loudness


def locate_mouth(image: torch.Tensor, model_dirs: Sequence[str | os.PathLike]) -> tuple[float, float, float]:
    """(x, y, face width) in pixels of the mouth of the largest face in an IMAGE (H, W, 3) 0..1, from
    MediaPipe's keypoints; InvalidInputError when no face is found (the portrait must show one)."""
    from ..face import detect_face_boxes, to_uint8_frames

    faces = [f for f in detect_face_boxes(to_uint8_frames(image)[0], model_dirs) if len(f.keypoints) > 3]
    if not faces:
        raise InvalidInputError("no face found in the portrait given to the synthetic generator; pass a portrait "
                                "that shows one face (e.g. the fixture portrait_astronaut_512.png)")
    face = max(faces, key=lambda f: f.area)
    x, y = face.keypoints[MOUTH_KEYPOINT]
    return float(x), float(y), float(face.x1 - face.x0)


def draw_mouth(image: torch.Tensor, mouth: tuple[float, float, float], opening: float) -> torch.Tensor:
    """IMAGE (H, W, 3) 0..1 with a dark ellipse at the mouth, `opening` 0..1 of its full height (a soft
    edge, so the decoded darkness grows smoothly with the loudness)."""
    x, y, width = mouth
    rx, ry = 0.24 * width, max(1e-3, opening * 0.13 * width)
    rows = torch.arange(image.shape[0], dtype=torch.float32)[:, None]
    cols = torch.arange(image.shape[1], dtype=torch.float32)[None, :]
    inside = (1 - ((cols - x) / rx) ** 2 - ((rows - y) / ry) ** 2).clamp(0, 1).sqrt()
    return image * (1 - 0.9 * inside * min(1.0, opening * 4))[..., None]


def rotate(image: torch.Tensor, angle: float) -> torch.Tensor:
    """IMAGE (H, W, 3) turned by `angle` rad about its centre (clockwise on screen, y down), edges repeated."""
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[[c, s, 0.0], [-s, c, 0.0]]], dtype=torch.float32)
    grid = F.affine_grid(theta, (1, 3, *image.shape[:2]), align_corners=False)
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0].permute(1, 2, 0)


def rotated_point(point: tuple[float, float], angle: float, size: int) -> tuple[float, float]:
    """Where pixel `point` of the unrotated square image lies after rotate(image, angle)."""
    c, s, half = math.cos(angle), math.sin(angle), size / 2
    dx, dy = point[0] + 0.5 - half, point[1] + 0.5 - half
    return half + c * dx - s * dy - 0.5, half + s * dx + c * dy - 0.5


def base_image(path: str | os.PathLike, settings: SyntheticSettings) -> torch.Tensor:
    """The still picture at `size`: the image itself, or two copies side by side for "two_faces"."""
    from ..render.media import read_portrait

    if settings.kind != "two_faces":
        return read_portrait(path, settings.size)[0]
    half, size = settings.size // 2, settings.size
    canvas = torch.full((size, size, 3), 0.5)
    small = read_portrait(path, half)[0]
    canvas[size // 4:size // 4 + half, :half] = small
    canvas[size // 4:size // 4 + half, half:2 * half] = small
    return canvas


def generate_video(path: str | os.PathLike, image: str | os.PathLike, settings: SyntheticSettings,
                   model_dirs: Sequence[str | os.PathLike] = ()) -> dict:
    """Write one synthetic video to `path` (.mp4) and its truth to `path` with suffix .json; returns the truth.

    image: the portrait (or, for kind "noface", a picture without a face). model_dirs: MediaPipe model folders,
    used once to find the mouth on the still picture (not needed for "noface").
    """
    from ..video_writer import StreamingVideoWriter

    settings.validate()
    gen = torch.Generator().manual_seed(settings.seed)
    angles, speed = roll_track(settings, gen)
    wave, loudness = voice_track(settings, gen)
    if settings.kind in ("silent", "no_audio"):
        wave, loudness = torch.zeros_like(wave), torch.zeros_like(loudness)
    still = base_image(image, settings)
    mouths = [] if settings.kind == "noface" else _mouths(still, settings, model_dirs)
    audio = None if settings.kind == "no_audio" else {"waveform": wave[None, None], "sample_rate": SAMPLE_RATE}
    centres = []
    with StreamingVideoWriter(path, settings.size, settings.size, settings.fps, audio=audio) as writer:
        for i in range(settings.frames):
            frame = still
            for mouth in mouths:
                frame = draw_mouth(frame, mouth, float(loudness[i]))
            writer.write(rotate(frame, float(angles[i]))[None])
            centres.append([list(rotated_point(m[:2], float(angles[i]), settings.size)) for m in mouths])
    truth = {"kind": settings.kind, "seed": settings.seed, "fps": settings.fps, "frames": settings.frames,
             "size": settings.size, "sample_rate": SAMPLE_RATE, "has_audio": audio is not None,
             "roll": angles.tolist(), "speed": speed.tolist(), "loudness": loudness.tolist(),
             "mouth_centres": centres, "mouth_width": [m[2] * 0.48 for m in mouths]}
    write_json_atomic(Path(path).with_suffix(".json"), truth)
    log.info("synthetic %s video %s: %d frames at %g fps, mean speed %.2f rad/s", settings.kind, path,
             settings.frames, settings.fps, float(speed.mean()))
    return truth


def _mouths(still: torch.Tensor, settings: SyntheticSettings, model_dirs) -> list[tuple[float, float, float]]:
    if settings.kind != "two_faces":
        return [locate_mouth(still, model_dirs)]
    half = settings.size // 2
    left = locate_mouth(still[:, :half].contiguous(), model_dirs)
    return [left, (left[0] + half, left[1], left[2])]


def loop_video(source: str | os.PathLike, path: str | os.PathLike, repeats: int, scale: int = 1) -> Path:
    """`source` played `repeats` times over, frames `scale` x larger, its audio looped along: a long video
    whose face and sound are real, written in seconds (memory tests and benchmarks of data preparation).
    Holds the source's frames, so keep the source short."""
    import av

    from ..render.media import read_audio
    from ..video_writer import StreamingVideoWriter

    if repeats < 1 or scale < 1:
        raise InvalidInputError(f"repeats and scale must be >= 1, got {repeats=}, {scale=}")
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)])
    height, width = frames.shape[1] * scale, frames.shape[2] * scale
    frames = frames.permute(0, 3, 1, 2).float() / 255
    if scale > 1:
        frames = F.interpolate(frames, size=(height, width), mode="bilinear")
    frames = frames.permute(0, 2, 3, 1)
    audio = read_audio(source)
    looped = {"waveform": audio["waveform"].repeat(1, 1, repeats), "sample_rate": audio["sample_rate"]}
    with StreamingVideoWriter(path, width, height, fps, audio=looped) as writer:
        for _ in range(repeats):
            writer.write(frames)
    return Path(path)


def generate_dataset(out_dir: str | os.PathLike, image: str | os.PathLike, count: int,
                     settings: SyntheticSettings, model_dirs: Sequence[str | os.PathLike] = (),
                     max_rolls: Sequence[float] = ()) -> list[Path]:
    """`count` videos `<kind>_000.mp4`, ... of `settings.kind` in `out_dir`, seeds settings.seed + i.

    max_rolls: video i turns up to max_rolls[i % len(max_rolls)] rad (default: settings.max_roll), e.g. (0, 1.5)
    alternates still and fast heads, so that head speed tells clips apart (the training proof needs that)."""
    if count < 1:
        raise InvalidInputError(f"count must be >= 1, got {count}")
    rolls = tuple(max_rolls) or (settings.max_roll,)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"{settings.kind}_{i:03d}.mp4"
        generate_video(path, image, _replace(settings, seed=settings.seed + i, max_roll=rolls[i % len(rolls)]),
                       model_dirs)
        paths.append(path)
    return paths


def _parser():
    import argparse
    d = SyntheticSettings()
    p = argparse.ArgumentParser(prog="python -m emo_core.train.synthetic",
                                description="Synthetic talking-head videos with known head speed (test data).")
    p.add_argument("--out", required=True, help="output folder for <kind>_NNN.mp4 and their .json truth files")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--portrait", required=True, help="image showing one face (e.g. portrait_astronaut_512.png)")
    p.add_argument("--seconds", type=float, default=d.duration, help="duration of each video")
    p.add_argument("--fps", type=float, default=d.fps, help="frame rate")
    p.add_argument("--size", type=int, default=d.size, help="square frame side in pixels (even, >= 32)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the first video; video i uses seed + i")
    p.add_argument("--kind", default=d.kind, choices=KINDS, help="talking, or one of the edge cases")
    p.add_argument("--max-roll", default=str(d.max_roll),
                   help="largest roll angle in rad; a comma list (0,1.5) cycles over the videos")
    p.add_argument("--mediapipe-models", default=None,
                   help="folder with MediaPipe's face detector (default: EMO_MEDIAPIPE_MODELS)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The generator as a command; exit status 0, or 2 with one sentence on bad input."""
    import sys

    from ..errors import EmoError
    from ..face_models import model_search_dirs

    args = _parser().parse_args(argv)
    try:
        rolls = [float(r) for r in args.max_roll.split(",")]
    except ValueError:
        sys.stderr.write(f"synthetic: --max-roll must be numbers separated by commas, got {args.max_roll!r}\n")
        return 2
    try:
        settings = SyntheticSettings(duration=args.seconds, fps=args.fps, size=args.size, kind=args.kind,
                                     seed=args.seed).validate()
        for roll in rolls:
            _replace(settings, max_roll=roll).validate()
        dirs = [] if args.kind == "noface" else [str(d) for d in model_search_dirs(args.mediapipe_models)]
        paths = generate_dataset(args.out, args.portrait, args.videos, settings, dirs, rolls)
    except EmoError as err:
        sys.stderr.write(f"synthetic: {err}\n")
        return 2
    sys.stdout.write(f"{len(paths)} synthetic {args.kind} videos in {args.out}\n")
    return 0


def _replace(settings: SyntheticSettings, **changes) -> SyntheticSettings:
    from dataclasses import replace
    return replace(settings, **changes)


if __name__ == "__main__":
    import sys
    sys.exit(main())

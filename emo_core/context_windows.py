"""EchoMimic v1's context windows over the whole latent video: pure integer planning.

EchoMimic (src/pipelines/context.py `uniform`, called once with step 0, context_stride 1, closed loop) cuts
the L latent frames into windows of `context_frames` consecutive frames that start every
`context_frames - overlap` frames and wrap around the end (frame L follows frame L - 1 as frame 0); a video
of at most `context_frames` frames is one window, range(L). At denoising step i (the step *index*, not the
timestep) every frame index c becomes (c + shift_per_step * i) % L, so the seams move from step to step
(2 in the standard and acc pipelines, 3 in the `_pose` pipelines); the single-window case is shifted too,
which feeds the frames rotated. The dilated windows `uniform` adds for context_stride > 1 are not
offered: EchoMimic always runs stride 1.

The denoise loop (context_sampling.py) consumes a ContextPlan; nothing here touches tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInputError

ECHOMIMIC_SHIFT_PER_STEP = 2       # pipeline_echo_mimic.py / _acc.py: (c + i * 2) % video_length
ECHOMIMIC_POSE_SHIFT_PER_STEP = 3  # pipeline_echo_mimic_pose.py / _pose_acc.py: (c + i * 3) % video_length

Window = tuple[int, ...]


def _check_ints(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}; pass a whole number")


def check_context(num_frames: int, context_frames: int, overlap: int) -> None:
    """Refuse settings the uniform schedule cannot cover every frame with (one sentence each)."""
    _check_ints(num_frames=num_frames, context_frames=context_frames, overlap=overlap)
    if num_frames < 1:
        raise InvalidInputError(f"the video needs at least 1 latent frame, got {num_frames}")
    if context_frames < 1:
        raise InvalidInputError(f"context_frames must be >= 1, got {context_frames}; EchoMimic uses 12")
    if overlap < 0:
        raise InvalidInputError(f"context_overlap must be >= 0, got {overlap}; EchoMimic uses 3")
    if overlap >= context_frames:
        raise InvalidInputError(f"context_overlap ({overlap}) must be smaller than context_frames "
                                f"({context_frames}), else the windows never advance; lower the overlap")


def uniform_windows(num_frames: int, context_frames: int, overlap: int) -> tuple[Window, ...]:
    """Step-0 windows: starts 0, s, 2s, ... < num_frames with s = context_frames - overlap, each window the
    next context_frames frames modulo num_frames; one window range(num_frames) if it fits in one context."""
    check_context(num_frames, context_frames, overlap)
    if num_frames <= context_frames:
        return (tuple(range(num_frames)),)
    stride = context_frames - overlap
    return tuple(tuple((start + k) % num_frames for k in range(context_frames))
                 for start in range(0, num_frames, stride))


def shift_windows(windows: tuple[Window, ...], shift: int, num_frames: int) -> tuple[Window, ...]:
    """Every frame index c -> (c + shift) % num_frames, window order and frame order kept."""
    return tuple(tuple((c + shift) % num_frames for c in window) for window in windows)


@dataclass(frozen=True)
class ContextPlan:
    """The windows of every denoising step.

    steps[i][j] is window j of step i: the latent frame indices, in the order the network sees them
    (a wrapped window lists the tail frames before frames 0, 1, ...). Every frame is in at least one
    window of every step; a frame's prediction is the mean over the windows that hold it.
    """
    num_frames: int
    context_frames: int
    overlap: int
    shift_per_step: int
    steps: tuple[tuple[Window, ...], ...]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def windows(self, step: int) -> tuple[Window, ...]:
        if not 0 <= step < len(self.steps):
            raise InvalidInputError(f"step {step} is outside this plan of {len(self.steps)} steps")
        return self.steps[step]

    def counts(self, step: int) -> list[int]:
        """How many windows of `step` hold each frame (the divisor of the average)."""
        counts = [0] * self.num_frames
        for window in self.windows(step):
            for c in window:
                counts[c] += 1
        return counts


def plan_context(num_frames: int, num_steps: int, context_frames: int, overlap: int,
                 shift_per_step: int = ECHOMIMIC_SHIFT_PER_STEP) -> ContextPlan:
    """EchoMimic's windows for num_steps steps: step i uses the step-0 windows shifted by shift_per_step * i."""
    _check_ints(num_steps=num_steps, shift_per_step=shift_per_step)
    if num_steps < 1:
        raise InvalidInputError(f"need at least 1 denoising step, got {num_steps}")
    if shift_per_step < 0:
        raise InvalidInputError(f"shift_per_step must be >= 0, got {shift_per_step}; EchoMimic uses 2 (pose: 3)")
    base = uniform_windows(num_frames, context_frames, overlap)
    steps = tuple(shift_windows(base, shift_per_step * i, num_frames) for i in range(num_steps))
    return ContextPlan(num_frames, context_frames, overlap, shift_per_step, steps)

"""EchoMimic's context windows: properties over many settings, an independent oracle, refusals.

The fixture's own windows are checked in test_echomimic_sampling.py.
"""
from __future__ import annotations

import math

import pytest

from emo_core.context_windows import (ECHOMIMIC_POSE_SHIFT_PER_STEP, ECHOMIMIC_SHIFT_PER_STEP, ContextPlan,
                                      plan_context, shift_windows, uniform_windows)
from emo_core.errors import InvalidInputError

SETTINGS = [(n, ctx, ov) for n in range(1, 41) for ctx in range(1, 15) for ov in range(ctx)]


def oracle_uniform(num_frames, context_size, overlap, step_index, shift):
    """AnimateDiff's `uniform` as EchoMimic calls it (step 0, context_stride 1, closed loop), written as the
    generator loop it is, then EchoMimic's per-step shift; an independent statement of the same rule."""
    if num_frames <= context_size:
        windows = [list(range(num_frames))]
    else:
        strides = min(1, int(math.ceil(math.log2(num_frames / context_size))) + 1)
        windows = []
        for context_step in [1 << s for s in range(strides)]:
            for j in range(0, num_frames, context_size * context_step - overlap):
                windows.append([e % num_frames for e in range(j, j + context_size * context_step, context_step)])
    return [[(c + shift * step_index) % num_frames for c in w] for w in windows]


@pytest.mark.parametrize("shift", [0, 1, ECHOMIMIC_SHIFT_PER_STEP, ECHOMIMIC_POSE_SHIFT_PER_STEP, 7])
def test_plan_equals_the_oracle_for_every_setting_and_step(shift):
    for n, ctx, ov in SETTINGS:
        plan = plan_context(n, 5, ctx, ov, shift)
        for i in range(5):
            assert [list(w) for w in plan.windows(i)] == oracle_uniform(n, ctx, ov, i, shift), (n, ctx, ov, i)


@pytest.mark.parametrize("shift", [0, 2, 3])
def test_every_frame_is_covered_at_every_step_and_windows_are_runs_of_consecutive_frames(shift):
    for n, ctx, ov in SETTINGS:
        plan = plan_context(n, 4, ctx, ov, shift)
        length = min(ctx, n)
        for i in range(4):
            windows = plan.windows(i)
            counts = plan.counts(i)
            assert min(counts) >= 1 and sum(counts) == len(windows) * length
            for w in windows:
                assert len(w) == length and len(set(w)) == length
                assert all(0 <= c < n for c in w)
                assert all(w[k + 1] == (w[k] + 1) % n for k in range(length - 1))
            assert plan.counts(i) == [plan.counts(0)[(c - shift * i) % n] for c in range(n)]


def test_window_starts_overlaps_and_wrap_around():
    for n, ctx, ov in SETTINGS:
        if n <= ctx:
            continue
        stride = ctx - ov
        windows = uniform_windows(n, ctx, ov)
        assert len(windows) == math.ceil(n / stride)
        assert [w[0] for w in windows] == list(range(0, n, stride))
        for a, b in zip(windows, windows[1:]):
            assert a[stride:] == b[:ov]                     # neighbours share exactly `overlap` frames
        for w in windows:
            wraps = w[0] + ctx > n
            assert wraps == (w[-1] < w[0])
            if wraps:                                       # tail frames first, then 0, 1, ...
                assert w[: n - w[0]] == tuple(range(w[0], n)) and w[n - w[0]:] == tuple(range(ctx - n + w[0]))
        # closed loop: the last window starts before the end and the last one always reaches frame n - 1
        assert windows[-1][0] < n and any(n - 1 in w for w in windows)


def test_a_video_that_fits_in_one_context_is_one_window_rotated_by_the_shift():
    for n in range(1, 13):
        plan = plan_context(n, 6, 12, 3, 2)
        for i in range(6):
            assert plan.windows(i) == (tuple((c + 2 * i) % n for c in range(n)),)
            assert plan.counts(i) == [1] * n


def test_steps_are_the_step_zero_windows_shifted_by_shift_times_step_index():
    plan = plan_context(20, 6, 12, 3, 2)
    assert plan.num_steps == 6 and (plan.num_frames, plan.context_frames, plan.overlap) == (20, 12, 3)
    for i in range(6):
        assert plan.windows(i) == shift_windows(plan.windows(0), 2 * i, 20)
    assert plan_context(20, 3, 12, 3, 0).windows(2) == plan.windows(0)
    assert plan_context(20, 3, 12, 3, 3).windows(2) == shift_windows(plan.windows(0), 6, 20)


def test_plan_is_immutable_and_step_out_of_range_is_refused():
    plan = plan_context(20, 2, 12, 3)
    assert isinstance(plan, ContextPlan) and plan.shift_per_step == ECHOMIMIC_SHIFT_PER_STEP
    with pytest.raises(AttributeError):
        plan.overlap = 1
    for step in (-1, 2):
        with pytest.raises(InvalidInputError, match=f"step {step} is outside"):
            plan.windows(step)


@pytest.mark.parametrize("args, words", [
    ((20, 4, 12, 12), "context_overlap \\(12\\) must be smaller than context_frames \\(12\\)"),
    ((20, 4, 12, 15), "context_overlap \\(15\\) must be smaller than context_frames \\(12\\)"),
    ((20, 4, 12, -1), "context_overlap must be >= 0, got -1"),
    ((20, 4, 0, 0), "context_frames must be >= 1, got 0"),
    ((0, 4, 12, 3), "at least 1 latent frame, got 0"),
    ((20, 0, 12, 3), "at least 1 denoising step, got 0"),
    ((20, 4, 12, 3, -2), "shift_per_step must be >= 0, got -2"),
    ((20, 4, 12.0, 3), "context_frames must be an integer, got 12.0"),
    ((20, 4, 12, True), "overlap must be an integer"),
])
def test_bad_settings_are_refused_in_one_sentence(args, words):
    with pytest.raises(InvalidInputError, match=words) as err:
        plan_context(*args)
    message = str(err.value)
    assert message.count(". ") == 0 and "\n" not in message

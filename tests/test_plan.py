"""Clip planning: every frame exactly once, motion frames = the previous clip's last n, per-clip seeds."""
from __future__ import annotations

import pytest

from emo_core.errors import InvalidInputError
from emo_core.plan import clip_seed, plan_clips


@pytest.mark.parametrize("clip", range(1, 9))
def test_every_frame_is_produced_exactly_once_and_motion_frames_come_from_the_previous_clip(clip):
    for num in range(1, 41):
        for n in range(0, clip + 1):
            plans = plan_clips(num, clip, n)
            produced = [f for p in plans for f in p.frames]
            assert produced == list(range(num))
            assert len(plans) == -(-num // clip)
            for k, p in enumerate(plans):
                assert p.index == k and p.length == clip
                assert 0 <= p.padding < clip
                if k == 0 or n == 0:
                    assert p.motion_from is None
                else:
                    prev = plans[k - 1].frames
                    assert list(p.motion_from) == list(prev)[-n:]
            assert all(p.padding == 0 for p in plans[:-1])
            assert plans[-1].padding == len(plans) * clip - num


@pytest.mark.parametrize("args", [(0, 4, 1), (5, 0, 0), (5, 4, 5), (5, 4, -1)])
def test_bad_plans_are_refused(args):
    with pytest.raises(InvalidInputError):
        plan_clips(*args)


def test_clip_seed_depends_only_on_seed_and_clip():
    assert clip_seed(7, 3) == clip_seed(7, 3)
    seeds = {clip_seed(s, k) for s in range(20) for k in range(20)}
    assert len(seeds) == 400
    assert all(0 <= x < 2**63 for x in seeds)
    assert clip_seed(2**64 + 5, 1) == clip_seed(5, 1)  # ComfyUI seeds go up to 2**64 - 1
    with pytest.raises(InvalidInputError):
        clip_seed(1, -1)

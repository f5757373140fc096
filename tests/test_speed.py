"""EMO speed conditioning: bucket maths, schedules, units, and head speed measured from poses and landmarks."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from conftest import tiny_emo_config
from emo_core.config import DEFAULT_SPEED_CENTRES, DEFAULT_SPEED_RADII, SpeedConfig
from emo_core.errors import InvalidInputError
from emo_core.speed import (INTERPOLATIONS, MEDIAPIPE_RIGID_LANDMARKS, constant_speed, deg_per_frame_to_rad_per_s,
                            head_rotations_from_landmarks, keyframe_speed, normalized_landmarks_to_pixels,
                            parse_keyframes, rad_per_s_to_deg_per_frame, rotation_angles, rotations_from_transforms,
                            smooth_series, speed_buckets, speed_features, speed_from_landmarks,
                            speed_from_rotations)

FPS = 25


def axis_angle(axis, angle) -> torch.Tensor:
    """Rodrigues: unit axis (3,), angle rad -> (3, 3) float64."""
    k = torch.as_tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def trajectory(step_angles, axes=None, start=None) -> torch.Tensor:
    """Rotations (len(step_angles)+1, 3, 3): R_{i+1} = R_i @ rot(axis_i, step_i)."""
    rots = [start if start is not None else axis_angle([0.3, -0.2, 0.9], 0.4)]
    for i, a in enumerate(step_angles):
        axis = axes[i] if axes is not None else [0.2, 1.0, 0.1]
        rots.append(rots[-1] @ axis_angle(axis, float(a)))
    return torch.stack(rots)


def face_cloud(n=120, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([80.0, 100.0, 60.0],
                                                                                dtype=torch.float64)


# -- bucket maths ------------------------------------------------------------------------------------
def test_buckets_default_table_at_half_rad_per_s_by_hand():
    # (w - c) / r * 3 for w = 0.5 over the default table, written out by hand
    args = [(0.5 - 0.0) / 0.125 * 3, (0.5 - 0.25) / 0.125 * 3, 0.0, (0.5 - 0.75) / 0.125 * 3,
            (0.5 - 1.0) / 0.25 * 3, (0.5 - 1.5) / 0.25 * 3, (0.5 - 2.0) / 0.5 * 3, (0.5 - 3.0) / 0.5 * 3,
            (0.5 - 4.0) / 1.0 * 3]
    assert args == [12.0, 6.0, 0.0, -6.0, -6.0, -12.0, -9.0, -15.0, -10.5]
    s = speed_buckets(torch.tensor([0.5]), DEFAULT_SPEED_CENTRES, DEFAULT_SPEED_RADII)
    assert s.shape == (1, 9) and s.dtype == torch.float32
    torch.testing.assert_close(s[0], torch.tensor([math.tanh(a) for a in args], dtype=torch.float32))
    assert s[0, 2].item() == 0.0  # w equal to a centre gives exactly 0


def test_buckets_a_third_of_a_radius_is_tanh_one():
    s = speed_buckets(torch.tensor([1.1, 0.9, 1.0, 1.0 + 0.3 * 2 / 3]), centres=(1.0,), radii=(0.3,))
    torch.testing.assert_close(s[:, 0], torch.tensor([0.7615941559557649, -0.7615941559557649, 0.0,
                                                      0.9640275800758169], dtype=torch.float32))


def test_buckets_at_the_edges_of_the_table():
    s = speed_buckets(torch.tensor([0.0, 100.0]), DEFAULT_SPEED_CENTRES, DEFAULT_SPEED_RADII)
    assert s[0, 0].item() == 0.0                 # still head sits on the first centre
    assert (s[0, 1:] < -0.999).all()             # ...and below every other bucket
    assert (s[1] == 1.0).all()                   # far above the table saturates every bucket at +1


def test_bucket_errors_name_the_bad_value():
    with pytest.raises(InvalidInputError, match="frame 1 is -0.5"):
        speed_buckets(torch.tensor([0.1, -0.5]), (0.0,), (1.0,))
    with pytest.raises(InvalidInputError, match="frame 0 is nan"):
        speed_buckets(torch.tensor([float("nan")]), (0.0,), (1.0,))
    with pytest.raises(InvalidInputError, match="1-D"):
        speed_buckets(torch.zeros(2, 2), (0.0,), (1.0,))
    with pytest.raises(InvalidInputError, match="one radius per bucket"):
        speed_buckets(torch.zeros(2), (0.0, 1.0), (1.0,))
    with pytest.raises(InvalidInputError, match="radii must be > 0"):
        speed_buckets(torch.zeros(2), (0.0,), (0.0,))


def test_speed_features_windows_and_clamps():
    w = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 3.0], dtype=torch.float64)
    f = speed_features(w, SpeedConfig())
    assert f.shape == (7, 5, 9) and f.dtype == torch.float32
    b = speed_buckets(w, DEFAULT_SPEED_CENTRES, DEFAULT_SPEED_RADII)
    assert torch.equal(f[0], b[[0, 0, 0, 1, 2]])
    assert torch.equal(f[3], b[[1, 2, 3, 4, 5]])
    assert torch.equal(f[6], b[[4, 5, 6, 6, 6]])
    assert speed_features(w, SpeedConfig(window=3)).shape == (7, 3, 9)
    assert speed_features(w[:1]).shape == (1, 5, 9)


def test_speed_features_feed_the_network_speed_tokens():
    from emo_core.network import EmoNet
    torch.manual_seed(0)
    config = tiny_emo_config()
    net = EmoNet(config).eval()
    frames = 6
    feats = speed_features(keyframe_speed([(0, 0.2), (5, 1.5)], frames), config.speed)
    with torch.no_grad():
        tokens = net.speed_tokens(feats.unsqueeze(0))
    assert tokens.shape == (1, frames, config.speed.tokens, config.speed.output_dim)
    assert torch.isfinite(tokens).all()


# -- units and schedules ------------------------------------------------------------------------------
def test_unit_conversions():
    assert deg_per_frame_to_rad_per_s(1.0, 25) == pytest.approx(25 * math.pi / 180)  # 0.43633 rad/s
    assert rad_per_s_to_deg_per_frame(math.pi, 30) == pytest.approx(6.0)
    assert rad_per_s_to_deg_per_frame(deg_per_frame_to_rad_per_s(2.5, 24), 24) == pytest.approx(2.5)
    t = deg_per_frame_to_rad_per_s(torch.tensor([0.0, 1.0]), 25)
    torch.testing.assert_close(t, torch.tensor([0.0, 25 * math.pi / 180]))
    for bad in (0, -25, float("nan"), True, "25"):
        with pytest.raises(InvalidInputError, match="fps"):
            deg_per_frame_to_rad_per_s(1.0, bad)


def test_constant_speed():
    s = constant_speed(0.75, 4)
    assert s.dtype == torch.float64 and s.tolist() == [0.75] * 4
    assert constant_speed(0, 1).tolist() == [0.0]
    with pytest.raises(InvalidInputError, match="-0.1 rad/s"):
        constant_speed(-0.1, 4)
    for frames in (0, -3, 2.5, True):
        with pytest.raises(InvalidInputError, match="frames"):
            constant_speed(1.0, frames)
    with pytest.raises(InvalidInputError, match="finite"):
        constant_speed(float("inf"), 3)


def test_keyframe_speed_linear_and_step():
    keys = [(2, 1.0), (6, 0.0), (8, 2.0)]
    lin = keyframe_speed(keys, 11)
    assert lin.tolist() == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 1.0, 2.0, 2.0, 2.0]
    step = keyframe_speed(keys, 11, interpolation="step")
    assert step.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert keyframe_speed({8: 2.0, 2: 1.0, 6: 0.0}, 11).tolist() == lin.tolist()  # dicts are sorted
    assert keyframe_speed([(0, 0.4)], 3).tolist() == [0.4] * 3
    assert keyframe_speed([(0, 0.0), (1, 1.0)], 2).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("keys, match", [
    ([], "empty"),
    ({}, "empty"),
    ([(3, 1.0), (1, 0.5)], "increasing frame order"),
    ([(1, 1.0), (1, 0.5)], "repeats frame 1"),
    ([(0, 1.0), (10, 0.5)], "frame 10, outside the clip's frames 0..9"),
    ([(-1, 1.0)], "frame -1, outside"),
    ([(0, -0.5)], r"keyframe 0 \(frame 0\) is -0.5 rad/s"),
    ([(0, float("nan"))], "finite"),
    ([(1.5, 0.5)], "frame 1.5"),
    ([(0, 1.0, 2.0)], "pair"),
    ("0:1", "list of"),
])
def test_keyframe_errors_name_the_bad_value(keys, match):
    with pytest.raises(InvalidInputError, match=match):
        keyframe_speed(keys, 10)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_keyframes_past_the_end_are_cut_not_refused(interpolation, caplog):
    """past_end="cut": the schedule of a video long enough to reach every keyframe, cut to the frames asked
    for, with a log line naming the keyframes left out."""
    keys = [(2, 1.0), (6, 0.0), (15, 2.0), (20, 0.5)]
    whole = keyframe_speed(keys, keys[-1][0] + 1, interpolation)
    for frames in (1, 4, 7, keys[-1][0]):
        with caplog.at_level(logging.INFO, logger="emo_core.speed"):
            caplog.clear()
            cut = keyframe_speed(keys, frames, interpolation, past_end="cut")
        assert torch.equal(cut, whole[:frames])
        late = [f for f, _ in keys if f >= frames]
        assert f"keyframes at frames {', '.join(map(str, late))} lie past the video's last frame {frames - 1}" \
            in caplog.text
    with pytest.raises(InvalidInputError, match=f"frame {keys[-1][0]}, outside"):
        keyframe_speed(keys, keys[-1][0], interpolation)  # the default still refuses them
    with pytest.raises(InvalidInputError, match="frame -1, outside"):
        keyframe_speed([(-1, 1.0)], 4, interpolation, past_end="cut")
    with pytest.raises(InvalidInputError, match="past_end='hold'"):
        keyframe_speed(keys, 4, interpolation, past_end="hold")


def test_keyframe_bad_interpolation():
    with pytest.raises(InvalidInputError, match="cubic"):
        keyframe_speed([(0, 1.0)], 4, interpolation="cubic")


def test_parse_keyframes():
    assert parse_keyframes("0:0.2, 48:1.0;96 : 0.5\n") == [(0, 0.2), (48, 1.0), (96, 0.5)]
    for bad in ("", " , ", "0-0.2", "a:1", "1.5:2"):
        with pytest.raises(InvalidInputError):
            parse_keyframes(bad)


# -- smoothing -----------------------------------------------------------------------------------------
def test_smooth_series_by_hand():
    y = torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    s = smooth_series(y, 3)
    # interior: centred mean; frame 0: line through (0,0),(1,0),(2,5) at x=0 -> 5/3 - 2.5 = -5/6;
    # frame 6: line through (4,0),(5,0),(6,0) -> 0
    torch.testing.assert_close(s, torch.tensor([-5 / 6, 5 / 3, 5 / 3, 5 / 3, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(smooth_series(y, 1), y.double())


def test_smooth_series_keeps_constants_and_lines_everywhere():
    line = torch.linspace(0.2, 3.0, 17, dtype=torch.float64)
    for window in (1, 3, 5, 9, 17, 31):
        torch.testing.assert_close(smooth_series(line, window), line)
        torch.testing.assert_close(smooth_series(torch.full((6,), 0.7), window), torch.full((6,), 0.7,
                                                                                            dtype=torch.float64))
    assert smooth_series(torch.tensor([2.0]), 5).tolist() == [2.0]
    assert smooth_series(torch.tensor([1.0, 3.0]), 5).tolist() == [1.0, 3.0]


def test_smooth_series_errors():
    for window in (0, 2, -1, 1.0, True):
        with pytest.raises(InvalidInputError, match="odd integer"):
            smooth_series(torch.zeros(4), window)
    with pytest.raises(InvalidInputError, match="1-D"):
        smooth_series(torch.zeros(2, 2), 3)


# -- rotations -> speed --------------------------------------------------------------------------------
def test_rotation_angles_any_axis_tiny_and_large():
    g = torch.Generator().manual_seed(1)
    steps = [1e-8, 1e-4, 0.3, 1.0, 2.5, math.pi - 1e-6]
    axes = torch.randn(len(steps), 3, generator=g, dtype=torch.float64)
    ang = rotation_angles(trajectory(steps, axes))
    assert ang.dtype == torch.float64 and ang.shape == (len(steps),)
    torch.testing.assert_close(ang, torch.tensor(steps, dtype=torch.float64), rtol=1e-7, atol=1e-12)


def test_constant_speed_is_recovered_from_rotations():
    speed = 0.8  # rad/s about a fixed axis, 0.032 rad per frame at 25 fps
    rots = trajectory([speed / FPS] * 49)
    for smoothing in (1, 5, 9):
        w = speed_from_rotations(rots, FPS, smoothing=smoothing)
        assert w.shape == (50,) and w.dtype == torch.float64
        assert (w - speed).abs().max() < 1e-3


def test_speed_ramp_is_recovered_with_frame_zero_copied():
    step_speeds = torch.linspace(0.2, 2.0, 40, dtype=torch.float64)   # rad/s of the step (i-1 -> i)
    rots = trajectory((step_speeds / FPS).tolist())
    w = speed_from_rotations(rots, FPS, smoothing=7)
    expected = torch.cat([step_speeds[:1], step_speeds])
    assert w.shape == (41,)
    assert (w - expected).abs().max() < 1e-3


def test_rotation_speed_errors():
    rots = trajectory([0.1, 0.1])
    with pytest.raises(InvalidInputError, match="at least 2 frames"):
        speed_from_rotations(rots[:1], FPS)
    with pytest.raises(InvalidInputError, match=r"\(frames, 3, 3\)"):
        speed_from_rotations(torch.zeros(3, 4, 4), FPS)
    with pytest.raises(InvalidInputError, match="frame 1 is not a rotation"):
        speed_from_rotations(torch.stack([rots[0], 2 * rots[1], rots[2]]), FPS)
    mirrored = rots.clone()
    mirrored[2, :, 0] *= -1
    with pytest.raises(InvalidInputError, match="frame 2 is not a rotation"):
        speed_from_rotations(mirrored, FPS)
    nan = rots.clone()
    nan[1, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="frame 1 is not finite"):
        speed_from_rotations(nan, FPS)
    with pytest.raises(InvalidInputError, match="fps"):
        speed_from_rotations(rots, 0)


def test_rotations_from_transforms_drop_scale_and_translation():
    rots = trajectory([0.05, 0.1, 0.2])
    poses = torch.zeros(4, 4, 4, dtype=torch.float64)
    poses[:, :3, :3] = 1.7 * rots
    poses[:, :3, 3] = torch.tensor([1.0, -2.0, 30.0], dtype=torch.float64)
    poses[:, 3, 3] = 1.0
    torch.testing.assert_close(rotations_from_transforms(poses), rots)
    torch.testing.assert_close(rotations_from_transforms(rots.float()), rots, atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match="singular"):
        rotations_from_transforms(torch.zeros(2, 4, 4))
    with pytest.raises(InvalidInputError, match="4, 4"):
        rotations_from_transforms(torch.zeros(2, 2, 2))


# -- landmarks -> pose -> speed ------------------------------------------------------------------------
def moving_landmarks(rots, cloud, seed=3):
    g = torch.Generator().manual_seed(seed)
    trans = torch.randn(rots.shape[0], 3, generator=g, dtype=torch.float64) * 20
    return cloud[None] @ rots.transpose(1, 2) + trans[:, None], trans


def test_kabsch_recovers_pose_exactly():
    cloud = face_cloud()
    rots = trajectory([0.1, 0.4, 1.2, 0.05])
    lm, trans = moving_landmarks(rots, cloud)
    r, t = head_rotations_from_landmarks(lm, reference=cloud)
    torch.testing.assert_close(r, rots)
    torch.testing.assert_close(t, trans)
    # default reference: the first frame, whose pose becomes the identity
    r0, _ = head_rotations_from_landmarks(lm)
    torch.testing.assert_close(r0[0], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(r0, rots @ rots[0].T[None])
    assert torch.allclose(torch.linalg.det(r0), torch.ones(5, dtype=torch.float64))


def test_kabsch_uses_the_chosen_points_only():
    cloud = face_cloud(478)
    rots = trajectory([0.2, 0.2])
    lm, _ = moving_landmarks(rots, cloud)
    rigid = list(MEDIAPIPE_RIGID_LANDMARKS)
    jaw = torch.tensor(sorted(set(range(478)) - set(rigid)))
    g = torch.Generator().manual_seed(5)
    lm[:, jaw] += torch.randn(3, len(jaw), 3, generator=g, dtype=torch.float64) * 30   # lips and jaw move on their own
    r, _ = head_rotations_from_landmarks(lm, reference=cloud, landmark_indices=rigid)
    torch.testing.assert_close(r, rots)


def test_mediapipe_rigid_table_is_valid():
    assert len(set(MEDIAPIPE_RIGID_LANDMARKS)) == len(MEDIAPIPE_RIGID_LANDMARKS) >= 20
    assert all(0 <= i < 468 for i in MEDIAPIPE_RIGID_LANDMARKS)
    assert 152 not in MEDIAPIPE_RIGID_LANDMARKS and 13 not in MEDIAPIPE_RIGID_LANDMARKS  # chin, upper lip


def test_kabsch_is_scale_invariant_and_proper_for_planar_points(caplog):
    cloud = face_cloud()
    rots = trajectory([0.3])
    lm, _ = moving_landmarks(rots, cloud)
    r, _ = head_rotations_from_landmarks(lm * torch.tensor([1.0, 0.5], dtype=torch.float64)[:, None, None],
                                         reference=cloud)
    torch.testing.assert_close(r, rots)
    flat = cloud.clone()
    flat[:, 2] = 0.0
    roll = torch.stack([torch.eye(3, dtype=torch.float64), axis_angle([0, 0, 1], 0.2)])
    with caplog.at_level("WARNING", logger="emo_core.speed_pose"):
        r, _ = head_rotations_from_landmarks(flat[None] @ roll.transpose(1, 2))
    assert "no depth" in caplog.text
    torch.testing.assert_close(r, roll)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64))


def test_landmark_errors():
    cloud = face_cloud(10)
    lm = cloud[None].repeat(3, 1, 1)
    with pytest.raises(InvalidInputError, match=r"\(frames, points, 3\)"):
        head_rotations_from_landmarks(lm[..., :2])
    with pytest.raises(InvalidInputError, match="reference shape"):
        head_rotations_from_landmarks(lm, reference=cloud[:5])
    with pytest.raises(InvalidInputError, match="at least 3"):
        head_rotations_from_landmarks(lm, landmark_indices=[0, 1])
    with pytest.raises(InvalidInputError, match="at least 3"):
        head_rotations_from_landmarks(lm, landmark_indices=[0, 1, 10])
    bad = lm.clone()
    bad[2, 4, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="frame 2 are not finite"):
        head_rotations_from_landmarks(bad)
    line = torch.zeros(2, 5, 3, dtype=torch.float64)
    line[:, :, 0] = torch.arange(5.0)
    with pytest.raises(InvalidInputError, match="collinear"):
        head_rotations_from_landmarks(line)


def test_speed_from_landmarks_constant_and_ramp():
    cloud = face_cloud(468)
    lm, _ = moving_landmarks(trajectory([1.2 / FPS] * 60), cloud)
    w = speed_from_landmarks(lm, FPS)
    assert w.shape == (61,) and (w - 1.2).abs().max() < 1e-3
    ramp = torch.linspace(0.1, 1.0, 50, dtype=torch.float64)
    lm, _ = moving_landmarks(trajectory((ramp / FPS).tolist()), cloud)
    w = speed_from_landmarks(lm, FPS, smoothing=9)
    assert (w - torch.cat([ramp[:1], ramp])).abs().max() < 1e-3


def test_speed_from_noisy_landmarks():
    # 468 points of a ~200 px face with 1 px of landmark jitter, turning at 0.6 rad/s
    g = torch.Generator().manual_seed(7)
    cloud = face_cloud(468)
    lm, _ = moving_landmarks(trajectory([0.6 / FPS] * 99), cloud)
    lm = lm + torch.randn(lm.shape, generator=g, dtype=torch.float64)
    w = speed_from_landmarks(lm, FPS, smoothing=9)
    assert (w - 0.6).abs().max() < 0.05
    assert (w.mean() - 0.6).abs() < 0.02


def test_normalized_landmarks_to_pixels():
    lm = torch.tensor([[[0.5, 0.25, -0.1]]], dtype=torch.float64)
    out = normalized_landmarks_to_pixels(lm, 640, 480)
    assert out.tolist() == [[[320.0, 120.0, -64.0]]]
    with pytest.raises(InvalidInputError, match="image size"):
        normalized_landmarks_to_pixels(lm, 0, 480)
    with pytest.raises(InvalidInputError, match="x, y, z"):
        normalized_landmarks_to_pixels(lm[..., :2], 640, 480)

import pytest
import torch

from emo_core.errors import InvalidInputError
from emo_core.windows import window_frames, window_indices


def test_window_indices_clamp_at_both_ends():
    assert window_indices(4, 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    assert window_indices(1, 1).tolist() == [[0, 0, 0]]


def test_window_frames_keeps_trailing_dims():
    x = torch.arange(6.0).reshape(3, 2)
    w = window_frames(x, 1)
    assert w.shape == (3, 3, 2)
    assert w[0].tolist() == [[0, 1], [0, 1], [2, 3]]


def test_bad_window_arguments():
    with pytest.raises(InvalidInputError):
        window_indices(0, 2)

"""FrameFile: per-frame rows on disk (features of long audio), read back a range at a time."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from emo_core import frame_file
from emo_core.errors import InsufficientMemoryError
from emo_core.frame_file import FrameFile


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rows_come_back_exactly_in_any_order(dtype):
    rows = torch.randn(23, 3, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    f = FrameFile(23, (3, 5), dtype)
    for start in (16, 0, 8):  # out of order, as chunks could be
        f.write(start, rows[start:start + 8])
    assert f.shape == rows.shape and f.numel() == rows.numel() and f.element_size() == rows.element_size()
    assert torch.equal(f.read(), rows) and torch.equal(f.read(5, 9), rows[5:9])
    assert f.read(4, 4).shape == (0, 3, 5)


def test_writes_are_converted_to_the_files_dtype():
    f = FrameFile(2, (4,))
    f.write(0, torch.arange(8, dtype=torch.float64).reshape(2, 4))
    assert f.read().dtype == torch.float32 and torch.equal(f.read(), torch.arange(8.0).reshape(2, 4))


def test_out_of_range_rows_are_refused():
    f = FrameFile(4, (2,))
    with pytest.raises(ValueError, match="do not fit"):
        f.write(3, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="do not fit"):
        f.write(0, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="outside"):
        f.read(2, 5)


def test_blocks_cover_every_row_once(monkeypatch):
    monkeypatch.setattr(frame_file, "READ_BLOCK_BYTES", 3 * 2 * 4)  # three rows per block
    rows = torch.randn(10, 2)
    f = FrameFile(10, (2,))
    f.write(0, rows)
    starts = [start for start, _ in f.blocks()]
    assert starts == [0, 3, 6, 9]
    assert torch.equal(torch.cat([block for _, block in f.blocks()]), rows)


def test_a_full_disk_is_refused_before_writing(monkeypatch, tmp_path):
    class Usage:
        free = 1000
    monkeypatch.setattr(frame_file.shutil, "disk_usage", lambda folder: Usage)
    with pytest.raises(InsufficientMemoryError, match=r"need 0\.00 GiB of temporary disk space in .* only .*TMPDIR"):
        FrameFile(100, (10,))


def test_the_file_lives_in_the_temporary_folder_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(frame_file.tempfile, "tempdir", str(tmp_path))
    f = FrameFile(8, (4,))
    f.write(0, torch.ones(8, 4))
    assert torch.equal(f.read(), torch.ones(8, 4))
    link = Path(f"/proc/self/fd/{f._file.fileno()}")
    if link.exists():  # Linux: the open file's path says where it is, and that it has no name left
        target = os.readlink(link)
        assert target.startswith(str(tmp_path)) and target.endswith("(deleted)"), target
    f.close()
    assert list(tmp_path.iterdir()) == []

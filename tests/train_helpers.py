"""Tiny training data for the trainer tests: ClipSample-shaped items in memory (swap for real shards from
emo_core.train.synthetic / prepare when those tests want the full data path)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from emo_core.train.shards import ClipSample


def tiny_samples(count: int, frames: int, size: int, layers: int, hidden: int, seed: int = 0,
                 latents: bool = True) -> list[ClipSample]:
    """`count` segments of `frames` frames at `size` px: a moving blob, its face box, random audio features and a
    speed that rises over the clip; latents precomputed by 8x pooling (the `vae = "none"` encoder) when asked."""
    from emo_core.train.batches import pool_encoder

    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        frames_px = torch.rand(frames, 3, size, size, generator=gen) * 2 - 1
        masks = torch.zeros(frames, 1, size, size)
        masks[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
        audio = torch.randn(frames, layers, hidden, generator=gen)
        speed = torch.linspace(0.1, 2.0, frames, dtype=torch.float64) * (1 + k)
        out.append(ClipSample(key=f"v{k}/0", frames=frames_px, face_masks=masks, audio=audio, speed=speed,
                              latents=pool_encoder(frames_px) if latents else None, fps=25.0, meta={"k": k}))
    return out


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def write_network_config(config, path: Path) -> Path:
    path.write_text(config.to_json())
    return path


def data_shape(config) -> tuple[int, int]:
    """(layers, hidden) of the audio features a network config eats."""
    ap = config.audio_projection
    return ap.blocks, ap.channels


def read_losses(out: Path) -> dict[int, float]:
    lines = (out / "loss.jsonl").read_text().splitlines()
    return {json.loads(x)["step"]: json.loads(x)["loss"] for x in lines}


def load_in_loader_node(trained: Path, models_root: Path, monkeypatch, config):
    """A trained file through EMO Model Loader as an artist would get it (copied into models/emo) ->
    (EMO_MODEL handle, the node's info), checked to report speed layers and `config`'s clip settings."""
    import shutil

    from conftest import load_pack

    (models_root / "emo").mkdir(exist_ok=True)
    shutil.copy(trained, models_root / "emo" / "trained.safetensors")
    monkeypatch.setenv("EMO_MODELS_DIR", str(models_root))
    loader = load_pack().NODE_CLASS_MAPPINGS["EMO_ModelLoader"]
    out = loader().load(model_name="trained.safetensors", precision="fp32")
    model, info = out["result"][0], out["ui"]["emo_model"][0]
    assert info["speed"] is True and model.config.speed is not None
    assert (info["clip_length"], info["motion_frames"]) == (config.clip_length, config.motion_frames)
    return model, info


@pytest.fixture(scope="module", autouse=True)
def plain_cpu_kernels():
    """oneDNN off for the importing test module: at these toy sizes its kernels cost ~5x torch's own on the CPU and
    ~20 s of set-up per new shape (measured: first stage-1 backward 19 s vs 2 s), which would dominate the suite.
    Autouse in every module that imports it."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH = """
import shutil
import sys
import torch
torch.backends.mkldnn.enabled = False  # as the in-process runs (plain_cpu_kernels)
sys.path.insert(0, {tests!r})
from test_train import _config, _dataset
from emo_core.train.trainer import release_processes, train
from pathlib import Path
for out, overrides, resume, seed in {runs!r}:
    if seed is not None and torch.distributed.get_rank() == 0:
        shutil.copytree(seed[0], seed[1])
    if seed is not None:
        torch.distributed.barrier()
    train(_config(Path({tmp!r}), **overrides), _dataset(), out, resume=resume)
release_processes()
"""


@dataclass
class Run:
    """One train() call of a launch: `seed` = (folder, copy) is copied by rank 0 before it starts (a checkpoint
    of an earlier run, to resume from)."""
    out: Path
    overrides: dict
    resume: bool = False
    seed: tuple[Path, Path] | None = None

    def as_tuple(self):
        seed = None if self.seed is None else tuple(map(str, self.seed))
        return str(self.out), self.overrides, self.resume, seed


def launch(tmp: Path, runs: list[Run], processes: int = 2) -> None:
    """`processes` gloo processes under torchrun, one thread each, training test_train's tiny config once per run,
    one after the other in the same processes (as a stage-2-then-3 script would)."""
    from conftest import ROOT

    script = tmp / "launch.py"
    script.write_text(LAUNCH.format(tests=str(ROOT / "tests"), tmp=str(tmp), runs=[r.as_tuple() for r in runs]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
           str(free_port()), str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

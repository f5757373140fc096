"""The batch client against a real ComfyUI server started from the checkout in COMFYUI_DIR.

COMFYUI_PYTHON picks the interpreter that has ComfyUI's requirements (default: this one), COMFYUI_ARGS
extra server options (default `--cpu`). The EMO test needs this pack in COMFYUI_DIR/custom_nodes, the
models its API workflow names, and the workflow (EMO_BATCH_WORKFLOW, default the pack's API example).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import pytest
from batch_helpers import FIXTURE_WORKFLOW
from conftest import SHARED

from emo_core.batch.__main__ import DEFAULT_WORKFLOW, main
from emo_core.batch.client import ComfyServer
from emo_core.batch.workflow import check_reference_branch, load_workflow

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="needs a ComfyUI checkout in COMFYUI_DIR")
CORE_WORKFLOW = FIXTURE_WORKFLOW.with_name("core_video.api.json")


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """(url, log path) of a ComfyUI server with its own input and output folders."""
    root = tmp_path_factory.mktemp("comfyui")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--input-directory", str(root / "in"), "--output-directory", str(root / "out"),
           *shlex.split(os.environ.get("COMFYUI_ARGS", "--cpu"))]
    log = root / "comfyui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/queue", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wav(path: Path, freq: float, seconds: float = 1.0, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
                               for i in range(int(rate * seconds))))
    return path


def test_core_nodes_jobs_cache_the_portrait_branch_and_record_errors(comfyui, tmp_path):
    from PIL import Image
    url, log = comfyui
    Image.new("RGB", (96, 96), (200, 150, 120)).save(tmp_path / "face.png")
    (tmp_path / "broken.wav").write_bytes(b"this is not audio")
    jobs = [{"portrait": "face.png", "audio": _wav(tmp_path / "one.wav", 440).name, "name": "one"},
            {"portrait": "face.png", "audio": _wav(tmp_path / "two.wav", 660).name, "name": "two"},
            {"portrait": "face.png", "audio": "broken.wav", "name": "broken"}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    code = main(["--server", url, "--jobs", str(tmp_path / "jobs.json"), "--out", str(tmp_path / "out"),
                 "--workflow", str(CORE_WORKFLOW)])
    assert code == 1, log.read_text()[-3000:]
    states = json.loads((tmp_path / "out" / "emo_batch_manifest.json").read_text())["jobs"]
    assert [states[n]["state"] for n in ("one", "two", "broken")] == ["done", "done", "failed"]
    assert states["broken"]["error"].endswith("(LoadAudio node 13)")
    for name in ("one", "two"):
        assert (tmp_path / "out" / f"{name}.mp4").read_bytes()[4:8] == b"ftyp"
    history = ComfyServer(url).history(states["two"]["prompt_id"])
    cached = next(d["nodes"] for kind, d in history["status"]["messages"] if kind == "execution_cached")
    assert {"10", "11", "12"} <= set(cached), "the portrait branch is reused when only the audio changes"


def test_emo_api_workflow_renders_one_clip(comfyui, tmp_path):
    url, log = comfyui
    workflow = Path(os.environ.get("EMO_BATCH_WORKFLOW", DEFAULT_WORKFLOW))
    assert workflow.is_file(), f"the EMO API workflow {workflow} is missing (set EMO_BATCH_WORKFLOW)"
    report = check_reference_branch(load_workflow(workflow))
    assert report.ok, report.describe()
    info = json.loads(urllib.request.urlopen(url + "/object_info/EMO_ModelLoader", timeout=30).read())
    models = info.get("EMO_ModelLoader", {}).get("input", {}).get("required", {}).get("model_name", [[]])[0]
    if "net.pth" not in models:
        pytest.skip(f"needs ComfyUI-EMO installed in {COMFYUI_DIR}/custom_nodes and the real models the workflow "
                    "names (net.pth, ...); tests/test_comfyui_e2e.py runs the batch client with tiny models")
    fixtures = Path(os.environ.get("EMO_FIXTURES", SHARED / "fixtures"))
    jobs = [{"portrait": str(fixtures / "portrait_astronaut_512.png"),
             "audio": str(fixtures / "speech_en_16k_mono.wav"), "steps": 2, "seed": 1, "name": "astronaut"}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    code = main(["--server", url, "--jobs", str(tmp_path / "jobs.json"), "--out", str(tmp_path / "out"),
                 "--workflow", str(workflow)])
    assert code == 0, log.read_text()[-3000:]
    assert (tmp_path / "out" / "astronaut.mp4").read_bytes()[4:8] == b"ftyp"

"""emo_core imports with ComfyUI absent and without side effects."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

BLOCKER = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"comfy", "comfy_api", "folder_paths", "server", "comfy_extras", "execution"}:
            raise ImportError(f"blocked in this test: {name}")
sys.meta_path.insert(0, Block())
import emo_core, emo_core.network, emo_core.checkpoint, emo_core.scheduling, emo_core.hallo_config
import emo_core.audio, emo_core.wav2vec, emo_core.speed, emo_core.face, emo_core.face_hallo, emo_core.face_models
import emo_core.sampler, emo_core.plan, emo_core.identity, emo_core.memory, emo_core.video_writer
import emo_core.context_windows, emo_core.context_sampling
import emo_core.model_files.cli, emo_core.model_files.fetch, emo_core.model_files.status
import emo_core.render.cli, emo_core.render.pipeline, emo_core.render.jobs, emo_core.render.models
assert 'mediapipe' not in sys.modules and 'cv2' not in sys.modules and 'onnxruntime' not in sys.modules
assert 'av' not in sys.modules
assert not any(m.split(".")[0] in {"comfy", "folder_paths"} for m in sys.modules)
print("ok")
'''


def test_emo_core_imports_with_comfy_blocked(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []


def test_importing_the_package_root_is_light():
    code = "import sys, emo_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_model_file_commands_import_no_download_client():
    """Importing emo-models' modules sets nothing up to download: huggingface_hub is imported by `fetch` only."""
    code = ("import sys, emo_core.model_files.cli, emo_core.model_files.fetch, emo_core.model_files.status, "
            "emo_core.model_files.hub; print(sorted(m for m in ('huggingface_hub', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_root_init_imports_as_a_bare_module():
    """pytest imports the checkout's __init__.py as a bare top-level module when the folder's name is no
    Python name (a clone called ComfyUI-EMO); that must not fail, or every test errors at setup."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web"

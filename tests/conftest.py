"""Shared test fixtures: tiny random EMO networks and the Hallo parity fixture set.

The parity directory comes from EMO_PARITY_DIR (default ../shared/parity/hallo-tiny beside the checkout);
without it the parity tests skip and say why, unless EMO_REQUIRE_PARITY=1 (CI), where they fail.
"""
from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pytest
import torch

from emo_core.config import (AudioAttentionConfig, FaceLocatorConfig, MotionConfig, SpeedConfig, UNetConfig,
                             WindowProjectionConfig, emo_preset)

ROOT = Path(__file__).resolve().parents[1]
# The project's fixture folder (real media, parity sets, key lists) sits beside the checkout; see README.
SHARED = Path(os.environ["EMO_SHARED_DIR"]).resolve() if os.environ.get("EMO_SHARED_DIR") else ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"


def pytest_configure(config):
    """Under pytest-xdist (the README's `-n 2`) each worker takes its share of the cores: by default torch would
    start one thread per core in every worker and the workers' threads would fight over the same cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# The longest modules (measured), started first: with `-n 2 --dist loadfile` a long module picked up last would
# leave the other worker idle to the end.
LONG_MODULES = ("test_train_synthetic.py", "test_compile.py", "test_train.py", "test_train_fsdp.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_MODULES)  # stable: the order inside a module stays


_LAST_TEST = {"id": None}


@pytest.fixture(autouse=True)
def _python_ctrl_c(request):
    """Every test starts with Python's own SIGINT handler. The Ctrl-C tests need it: `_thread.interrupt_main`
    does nothing without it, and a command started while SIGINT is ignored inherits the ignore and cannot be
    interrupted. In CI an xdist worker process started with SIGINT ignored (the warning said so before its first
    test): the handler is put back, with a warning naming the test that ran before, if any."""
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.default_int_handler:
        warnings.warn(f"SIGINT handler was {handler!r} after {_LAST_TEST['id']}; Python's default put back")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    _LAST_TEST["id"] = request.node.nodeid


def fixtures_missing(why: str):
    """Skip saying why; fail instead when EMO_REQUIRE_PARITY=1 (CI must have every fixture)."""
    if os.environ.get("EMO_REQUIRE_PARITY") == "1":
        pytest.fail(why)
    pytest.skip(why)


def shared_file(*parts: str) -> Path:
    """A file of the shared fixture folder, or skip naming it (see fixtures_missing)."""
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        fixtures_missing(f"fixture file {path} not found; put the project's shared fixture folder beside the "
                         "checkout as ../shared or set EMO_SHARED_DIR (see README: Development)")
    return path


def tiny_emo_config(**overrides):
    """EMO configuration at toy size: f=12, n=4, speed layers, single audio attention, 1-channel mask."""
    base = dict(
        unet=UNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_heads=2,
                        cross_attention_dim=32),
        motion=MotionConfig(heads=4, max_len=32),
        audio_attention=AudioAttentionConfig(form="single", audio_dim=16),
        audio_projection=WindowProjectionConfig(window=5, blocks=3, channels=16, intermediate_dim=16,
                                                output_dim=16, tokens=4),
        face_locator=FaceLocatorConfig(conditioning_channels=1, block_out_channels=(4, 8, 8, 16)),
        speed=SpeedConfig(intermediate_dim=16, output_dim=16, tokens=2),
    )
    base.update(overrides)
    return emo_preset(**base)


def wav2vec_shape() -> tuple[int, int]:
    """(layers, hidden width) of the fixture set's tiny wav2vec2: what its audio features carry per frame."""
    config = json.loads((parity_dir() / "wav2vec2" / "config.json").read_text())
    return int(config["num_hidden_layers"]), int(config["hidden_size"])


def tiny_emo_config_for_fixture_audio(**overrides):
    """tiny_emo_config whose audio projection eats the fixture set's wav2vec2 features, whatever their shape."""
    layers, hidden = wav2vec_shape()
    projection = WindowProjectionConfig(window=5, blocks=layers, channels=hidden, intermediate_dim=16,
                                        output_dim=16, tokens=4)
    return tiny_emo_config(**{"audio_projection": projection, **overrides})


@pytest.fixture
def tiny_config():
    return tiny_emo_config()


def parity_dir() -> Path:
    raw = os.environ.get("EMO_PARITY_DIR")
    return Path(raw).resolve() if raw else SHARED / "parity" / "hallo-tiny"


def echomimic_parity_dir() -> Path:
    """The EchoMimic v1 fixture set: EMO_ECHOMIMIC_PARITY_DIR, default ../shared/parity/echomimic-tiny."""
    raw = os.environ.get("EMO_ECHOMIMIC_PARITY_DIR")
    return Path(raw).resolve() if raw else SHARED / "parity" / "echomimic-tiny"


def echomimic_file(*parts: str) -> Path:
    """A file or folder of the EchoMimic fixture set, or skip naming it (see fixtures_missing)."""
    path = echomimic_parity_dir().joinpath(*parts)
    if not path.exists():
        fixtures_missing(f"EchoMimic parity fixture {path} not found (set EMO_ECHOMIMIC_PARITY_DIR to the "
                         "echomimic-tiny fixture directory)")
    return path


def echomimic_dir(*files: str) -> Path:
    """The EchoMimic parity set, after checking it holds `files` (skips naming the first missing one)."""
    for name in files:
        echomimic_file(name)
    return echomimic_parity_dir()


@pytest.fixture(scope="session")
def parity():
    """(net_path, cases dict, metadata dict) of the parity fixture set, or skip saying why."""
    d = parity_dir()
    net, cases = d / "net.safetensors", d / "cases.safetensors"
    if not (net.is_file() and cases.is_file()):
        fixtures_missing(f"Hallo parity fixtures not found in {d} (set EMO_PARITY_DIR to a fixture directory)")
    from safetensors import safe_open
    with safe_open(str(cases), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    return net, tensors, meta


def write_parity_checkpoint(dest: Path, meta: dict) -> Path:
    """The fixture's net.safetensors as a Hallo variant that says its own clip settings: the cases'
    `n_motion_frames` and `clip_length` go into the file's `hallo_config` (the fixture set may use other
    counts than the official 2 and 16), so the loader, not the test, has to honour them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(parity_dir() / "net.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    hallo = json.loads(metadata["hallo_config"])
    hallo["n_motion_frames"] = int(meta["n_motion_frames"])
    hallo["n_sample_frames"] = int(meta["clip_length"])
    metadata["hallo_config"] = json.dumps(hallo)
    save_file(tensors, str(dest), metadata=metadata)
    return dest


@pytest.fixture(scope="session")
def parity_checkpoint(parity, tmp_path_factory):
    return write_parity_checkpoint(tmp_path_factory.mktemp("parity") / "hallo_tiny.safetensors", parity[2])


@pytest.fixture(scope="session")
def parity_net(parity, parity_checkpoint):
    from emo_core.checkpoint import load_network
    torch.backends.cuda.matmul.allow_tf32 = False
    net = load_network(str(parity_checkpoint), dtype=torch.float32)
    assert (net.config.motion_frames, net.config.clip_length) == (int(parity[2]["n_motion_frames"]),
                                                                  int(parity[2]["clip_length"]))
    return net


def meta_json(meta: dict, key: str):
    return json.loads(meta[key])


def load_pack():
    """The repository imported as ComfyUI imports a custom-node pack: a package from its folder, so the
    relative imports inside nodes/ work (returns the package module, named `comfyui_emo`)."""
    import importlib.util
    import sys

    if "comfyui_emo" in sys.modules:
        return sys.modules["comfyui_emo"]
    spec = importlib.util.spec_from_file_location("comfyui_emo", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_emo"] = module
    spec.loader.exec_module(module)
    return module


def mediapipe_missing(why: str):
    """Skip saying why MediaPipe tests cannot run; fail instead when EMO_REQUIRE_MEDIAPIPE=1 (CI)."""
    if os.environ.get("EMO_REQUIRE_MEDIAPIPE") == "1":
        pytest.fail(why)
    pytest.skip(why)


def mediapipe_models_or_skip():
    """The search folders (emo_core.face_models.model_search_dirs) holding the MediaPipe detector and
    landmarker, or skip saying what is missing (fail when EMO_REQUIRE_MEDIAPIPE=1)."""
    from emo_core.errors import MissingWeightsError
    from emo_core.face_models import find_detector, find_landmarker, model_search_dirs

    try:
        import mediapipe.tasks.python.vision  # noqa: F401
    except ImportError:
        mediapipe_missing("mediapipe with the Tasks API is not installed (pip install 'mediapipe>=0.10.35')")
    raw = os.environ.get("EMO_MEDIAPIPE_MODELS")
    if not raw:
        mediapipe_missing("EMO_MEDIAPIPE_MODELS is not set; run .ci/mediapipe_models.sh DIR and export "
                          "EMO_MEDIAPIPE_MODELS=DIR")
    dirs = model_search_dirs()
    try:
        find_detector(dirs)
        find_landmarker(dirs)
    except MissingWeightsError as err:
        mediapipe_missing(str(err))
    return dirs


@pytest.fixture(scope="session")
def model_dirs():
    """MediaPipe model folders for face tests, or skip/fail saying what is missing."""
    return mediapipe_models_or_skip()

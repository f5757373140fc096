"""Model names from a prompt are untrusted: every loader refuses names that leave its model folder ('..',
absolute paths, and outside ComfyUI links that lead elsewhere), with an answer that does not depend on
whether the named file exists."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch

from comfy_fakes import fake_folder_paths, tiny_onnx_embedder
from conftest import load_pack, parity_dir, tiny_emo_config

pack = load_pack()
N = pack.NODE_CLASS_MAPPINGS
errors = pack.emo_core.errors
services = pack.nodes.comfy_services


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """models/{emo,audio_encoders,insightface} with one good model each, and loadable models OUTSIDE the
    models folder, each also reachable through a link placed inside the folder."""
    from emo_core.checkpoint import save_native
    from emo_core.network import EmoNet

    base = tmp_path_factory.mktemp("names")
    models, outside = base / "models", base / "outside"
    for d in ("emo", "audio_encoders", "insightface", "mediapipe"):
        (models / d).mkdir(parents=True)
    outside.mkdir()
    torch.manual_seed(0)
    save_native(EmoNet(tiny_emo_config(clip_length=4, motion_frames=2)).eval(), str(outside / "secret.safetensors"))
    shutil.copy(outside / "secret.safetensors", models / "emo" / "good.safetensors")
    shutil.copytree(parity_dir() / "wav2vec2", outside / "w2v")
    shutil.copytree(parity_dir() / "wav2vec2", models / "audio_encoders" / "w2v-good")
    tiny_onnx_embedder(outside / "secret.onnx")
    tiny_onnx_embedder(models / "insightface" / "good.onnx")
    (models / "emo" / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "audio_encoders" / "link-dir").symlink_to(outside / "w2v", target_is_directory=True)
    (models / "audio_encoders" / "link.safetensors").symlink_to(outside / "w2v" / "model.safetensors")
    (models / "insightface" / "link.onnx").symlink_to(outside / "secret.onnx")
    return models, outside


# (node id, input name, folder, good name, (outside relative path, file name))
LOADERS = [
    ("EMO_ModelLoader", "model_name", "emo", "good.safetensors", "secret.safetensors"),
    ("EMO_AudioEncoderLoader", "encoder_name", "audio_encoders", "w2v-good", "w2v"),
    ("EMO_AudioEncoderLoader", "encoder_name", "audio_encoders", "w2v-good", "w2v/model.safetensors"),
    ("EMO_FaceEmbedderLoader", "model_name", "insightface", "good.onnx", "secret.onnx"),
]
LINKS = {"emo": ["link.safetensors"], "audio_encoders": ["link-dir", "link.safetensors"], "insightface": ["link.onnx"]}


def _load(node_id, key, name):
    node = N[node_id]()
    extra = {"precision": "fp32"} if node_id == "EMO_ModelLoader" else {}
    return getattr(node, node.FUNCTION)(**{key: name}, **extra)


def _escapes(outside, target):
    return ["../../outside/" + target, "../../outside/" + target.replace("/", "\\"),
            str(outside / target), "C:\\models\\" + target.replace("/", "\\"), "emo/../../../outside/" + target]


@pytest.fixture
def plain(tree, monkeypatch):
    monkeypatch.setenv("EMO_MODELS_DIR", str(tree[0]))
    monkeypatch.delitem(sys.modules, "folder_paths", raising=False)
    return tree


@pytest.fixture
def comfy(tree, monkeypatch):
    fp = fake_folder_paths(tree[0])
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return tree, fp


@pytest.mark.parametrize("node_id, key, folder, good, target", LOADERS)
def test_names_leaving_the_folder_are_refused_outside_comfyui(plain, node_id, key, folder, good, target):
    models, outside = plain
    assert (outside / target).exists()
    for name in _escapes(outside, target):
        with pytest.raises(errors.InvalidInputError, match="not a path inside") as err:
            _load(node_id, key, name)
        # The same answer whether or not the named file exists: no file-existence oracle.
        missing = name.replace("secret", "nothing").replace("w2v", "nothing")
        with pytest.raises(errors.InvalidInputError) as err2:
            _load(node_id, key, missing)
        assert str(err2.value).replace(repr(missing), "NAME") == str(err.value).replace(repr(name), "NAME")
    assert _load(node_id, key, good)  # the folder's own model loads


@pytest.mark.parametrize("folder, link", [(f, link) for f, links in LINKS.items() for link in links])
def test_links_leading_outside_are_refused_outside_comfyui(plain, folder, link):
    node_id, key = next((n, k) for n, k, f, _, _ in LOADERS if f == folder)
    with pytest.raises(errors.InvalidInputError, match="link that leads outside"):
        _load(node_id, key, link)
    listed = N[node_id].INPUT_TYPES()["required"][key][0]
    assert link not in listed and any(not n.startswith("(") for n in listed)


@pytest.mark.parametrize("node_id, key, folder, good, target", LOADERS)
def test_names_leaving_the_folder_are_refused_in_comfyui(comfy, node_id, key, folder, good, target):
    (models, outside), fp = comfy
    for name in _escapes(outside, target):
        with pytest.raises(errors.InvalidInputError, match="not a path inside"):
            _load(node_id, key, name)
    assert fp.calls == []  # refused on the name alone
    assert _load(node_id, key, good)
    if not good.startswith("w2v"):  # files go through folder_paths.get_full_path (folders have no such API)
        assert fp.calls == [(folder, good)]


def test_other_extensions_and_missing_files(plain):
    models, _ = plain
    (models / "emo" / "notes.txt").write_text("x")
    with pytest.raises(errors.InvalidInputError, match=r"must end in .*\.safetensors"):
        _load("EMO_ModelLoader", "model_name", "notes.txt")
    for absent in ("absent.safetensors", "(no files in models/emo)"):  # the empty dropdown's placeholder too
        with pytest.raises(errors.MissingWeightsError, match="not found in the 'emo' model folder"):
            _load("EMO_ModelLoader", "model_name", absent)
    for bad in ("", "  ", "a\0b.safetensors"):
        with pytest.raises(errors.InvalidInputError, match="not a path inside"):
            _load("EMO_ModelLoader", "model_name", bad)


def test_a_subfolder_name_is_fine(plain):
    models, _ = plain
    (models / "emo" / "sub").mkdir(exist_ok=True)
    shutil.copy(models / "emo" / "good.safetensors", models / "emo" / "sub" / "nested.safetensors")
    assert "sub/nested.safetensors" in N["EMO_ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert _load("EMO_ModelLoader", "model_name", "sub/nested.safetensors")
    found = services.model_path("emo", "sub\\nested.safetensors", services.MODEL_EXTENSIONS)  # Windows separator
    assert found.endswith("nested.safetensors")

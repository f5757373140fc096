"""Face-identity embedding for Hallo: alignment, preprocessing, model checks, on tiny ONNX models built here.

The recognition models are random linear maps written with the `onnx` helper API (no download). Keypoint
detection uses the real MediaPipe landmarker from $EMO_MEDIAPIPE_MODELS, skipped (or failed when
EMO_REQUIRE_MEDIAPIPE=1) as in test_face.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED, mediapipe_missing, tiny_emo_config
from emo_core.config import HALLO_CODE_CHOICES, AudioAttentionConfig, FaceLocatorConfig, IdentityConfig, MotionConfig
from emo_core.errors import IncompatibleCheckpointError, MissingDependencyError, MissingWeightsError
from emo_core.face import NoFaceError
from emo_core.identity import (ARCFACE_TEMPLATE, CONVENTIONAL_SUBDIRS, FaceEmbedder, align_face, detect_keypoints,
                               find_face_embedder, similarity_transform)

FIXTURES = SHARED / "fixtures"
PORTRAIT, NOFACE = FIXTURES / "portrait_astronaut_512.png", FIXTURES / "noface_coffee_512.png"


# --- helpers ---------------------------------------------------------------------------------------------

def linear_model(path, size=112, out_dim=512, seed=0):
    """ONNX (N, 3, size, size) -> MatMul W1 on the last axis -> Flatten -> MatMul W2 -> (N, out_dim).

    Every input value reaches the output and channel / row / column order matters, with 3 MB of weights
    instead of the 77 MB a full 37632 x 512 matrix would need. Returns (W1, W2) float32.
    """
    onnx = pytest.importorskip("onnx", reason="the onnx package (test extra) builds the tiny models")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((size, 4)).astype(np.float32)
    w2 = (rng.standard_normal((3 * size * 4, out_dim)) / 40).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["data", "w1"], ["rows"]), helper.make_node("Flatten", ["rows"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w2"], ["fc1"])],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", out_dim])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime the identity extra allows
    onnx.save(model, str(path))
    return w1, w2


def reference_embedding(crop: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """insightface's blobFromImages(crop, 1/127.5, mean 127.5, RGB) then the linear model, in numpy."""
    blob = ((crop.astype(np.float64) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    return (blob @ w1).reshape(1, -1) @ w2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime (identity / test extra) runs the embedder")
    path = tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx"
    return path, *linear_model(path)


def place_template(scale=2.6, angle_deg=17.0, shift=(120.0, 60.0)) -> np.ndarray:
    """The arcface template moved into image pixels by a known similarity: (5, 2) keypoints."""
    a = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ARCFACE_TEMPLATE @ rotation.T + np.array(shift)


def load_rgb(path) -> np.ndarray:
    if not path.is_file():
        mediapipe_missing(f"fixture image {path} not found")
    from PIL import Image
    return np.array(Image.open(path).convert("RGB"))


# --- (a) what the ONNX session receives ------------------------------------------------------------------

def test_embedding_is_the_model_on_the_normalised_aligned_crop(tiny_model):
    path, w1, w2 = tiny_model
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    keypoints = place_template()
    embedder = FaceEmbedder(path)
    assert embedder.input_name == "data"
    emb = embedder.embed(image, keypoints=keypoints)
    assert emb.shape == (1, 512) and emb.dtype == torch.float32
    crop = align_face(image, keypoints)
    np.testing.assert_allclose(emb.numpy(), reference_embedding(crop, w1, w2), rtol=1e-4, atol=1e-4)
    assert not np.allclose(emb.numpy(), reference_embedding(crop[..., ::-1], w1, w2), atol=1e-2)  # order matters
    batch = torch.from_numpy(np.stack([image, image[::-1]])).float() / 255           # ComfyUI IMAGE, first used
    assert torch.equal(embedder.embed(batch, keypoints=keypoints), emb)


# --- (b) alignment -----------------------------------------------------------------------------------------

def test_similarity_is_exact_on_a_similar_copy_and_never_reflects():
    keypoints = place_template()
    matrix = similarity_transform(keypoints, ARCFACE_TEMPLATE)
    mapped = keypoints @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(matrix[:, :2]), 1 / 2.6 ** 2, rtol=1e-9)
    mirrored = keypoints * np.array([-1.0, 1.0])                 # left/right swapped: best fit is a rotation
    assert np.linalg.det(similarity_transform(mirrored, ARCFACE_TEMPLATE)[:, :2]) > 0


def test_similarity_is_the_least_squares_fit_for_noisy_points():
    """Umeyama equals the linear least squares in (a, b, tx, ty) of x' = a x - b y + tx, y' = b x + a y + ty."""
    rng = np.random.default_rng(0)
    keypoints = place_template() + rng.normal(0, 3.0, (5, 2))
    rows = [[x, -y, 1, 0] for x, y in keypoints] + [[y, x, 0, 1] for x, y in keypoints]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.concatenate([ARCFACE_TEMPLATE[:, 0], ARCFACE_TEMPLATE[:, 1]]),
                                   rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(keypoints, ARCFACE_TEMPLATE), [[a, -b, tx], [b, a, ty]],
                               atol=1e-9)


def test_aligned_dots_land_on_the_template():
    keypoints = place_template(scale=2.6, angle_deg=-23.0, shift=(150.0, 90.0))
    ys, xs = np.mgrid[0:420, 0:460].astype(np.float64)
    dots = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 4.0 ** 2)) for x, y in keypoints)
    image = np.repeat((dots * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    crop = align_face(image, keypoints).astype(np.float64)[..., 0]
    assert crop.shape == (112, 112)
    found = []
    for x, y in ARCFACE_TEMPLATE:
        x0, y0 = int(round(x)) - 5, int(round(y)) - 5
        window = crop[y0:y0 + 11, x0:x0 + 11]
        wy, wx = np.mgrid[y0:y0 + 11, x0:x0 + 11]
        found.append([(window * wx).sum() / window.sum(), (window * wy).sum() / window.sum()])
    error = np.linalg.norm(np.array(found) - ARCFACE_TEMPLATE, axis=1)
    assert error.max() < 0.5, error                              # measured: < 0.01 px


def test_alignment_matches_insightface_cv2_warp():
    cv2 = pytest.importorskip("cv2", reason="OpenCV (installed with mediapipe) is the reference warp")
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8), (5, 5), 0)
    for keypoints in (place_template(), place_template(shift=(-60.0, 200.0))):  # second: partly outside
        matrix = similarity_transform(keypoints, ARCFACE_TEMPLATE)
        reference = cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0)
        diff = np.abs(align_face(image, keypoints).astype(int) - reference.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


# --- (c), (d) keypoints on real images ----------------------------------------------------------------------

def test_portrait_keypoints_are_where_the_face_is(model_dirs, tiny_model):
    image = load_rgb(PORTRAIT)
    kps = detect_keypoints(image, model_dirs)
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = kps
    assert np.all((kps[:, 0] > 150) & (kps[:, 0] < 360) & (kps[:, 1] > 130) & (kps[:, 1] < 370)), kps
    assert lex < nx < rex and lmx < nx < rmx                     # insightface's order: image left first
    assert max(ley, rey) < ny < min(lmy, rmy)                    # eyes above nose above mouth
    assert 60 < rex - lex < 120, kps                             # eye distance of this 512 px portrait
    embedder = FaceEmbedder(tiny_model[0])
    assert torch.equal(embedder.embed(image, landmark_dirs=model_dirs), embedder.embed(image, keypoints=kps))


def test_several_faces_the_largest_gives_the_keypoints(model_dirs):
    image = load_rgb(PORTRAIT)
    face = torch.from_numpy(image[100:420, 110:410]).permute(2, 0, 1)[None].float()
    small = torch.nn.functional.interpolate(face, scale_factor=0.6, mode="bilinear", antialias=True)
    canvas = np.full((512, 768, 3), 128, dtype=np.uint8)
    canvas[150:470, 448:748] = image[100:420, 110:410]
    canvas[20:212, 20:200] = small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    kps = detect_keypoints(canvas, model_dirs)
    assert np.all((kps[:, 0] > 448) & (kps[:, 1] > 150)), kps


def test_no_face_is_a_typed_readable_error(model_dirs, tiny_model):
    image = load_rgb(NOFACE)
    with pytest.raises(NoFaceError, match=r"no face found in the reference image \(512x512\)"):
        FaceEmbedder(tiny_model[0]).embed(image, landmark_dirs=model_dirs)


# --- (e), (f) model file lookup and checks ------------------------------------------------------------------

def test_model_lookup_in_comfyui_folders_and_explicit_path(tmp_path):
    root = tmp_path / "models"
    with pytest.raises(MissingWeightsError) as err:
        find_face_embedder([tmp_path / "mine"], models_root=root)
    message = str(err.value)
    assert "w600k_r50.onnx" in message and "buffalo_l" in message
    for folder in [tmp_path / "mine", *(root / sub for sub in CONVENTIONAL_SUBDIRS)]:
        assert str(folder) in message
    target = root / "emo" / "insightface" / "w600k_r50.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert find_face_embedder([tmp_path / "mine"], models_root=root) == target
    other = tmp_path / "glintr100.onnx"
    other.write_bytes(b"")
    assert find_face_embedder([other], models_root=root) == other
    with pytest.raises(MissingWeightsError, match="does not exist"):
        find_face_embedder([tmp_path / "typo.onnx"])
    with pytest.raises(MissingWeightsError, match="does not exist"):
        FaceEmbedder(tmp_path / "typo.onnx")


@pytest.mark.parametrize("size, out_dim, seen", [(64, 512, "64, 64"), (112, 128, "128")])
def test_wrong_shape_model_is_incompatible(tmp_path, size, out_dim, seen):
    pytest.importorskip("onnxruntime", reason="onnxruntime (identity / test extra) runs the embedder")
    path = tmp_path / "other.onnx"
    linear_model(path, size=size, out_dim=out_dim)
    with pytest.raises(IncompatibleCheckpointError, match="112x112 face -> 512-d") as err:
        FaceEmbedder(path)
    assert seen in str(err.value) and "other.onnx" in str(err.value)


def test_not_an_onnx_file_is_incompatible(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (identity / test extra) runs the embedder")
    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(IncompatibleCheckpointError, match="not a model onnxruntime can load"):
        FaceEmbedder(path)


def test_missing_onnxruntime_names_the_package(tmp_path, monkeypatch):
    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match=r"comfyui-emo\[identity\].*onnxruntime"):
        FaceEmbedder(path)


def test_importing_identity_loads_no_optional_dependency():
    code = ("import sys, emo_core.identity; "
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'mediapipe', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- (g) into the network ----------------------------------------------------------------------------------

def test_embedding_feeds_hallo_identity_tokens(tiny_model):
    from emo_core.network import EmoNet
    config = tiny_emo_config(                                    # Hallo's layout at conftest's toy size
        family="hallo", identity=IdentityConfig(embedding_dim=512, tokens=4), speed=None,
        audio_attention=AudioAttentionConfig(form="hierarchical", audio_dim=16),
        face_locator=FaceLocatorConfig(conditioning_channels=3, block_out_channels=(4, 8, 8, 16)),
        motion=MotionConfig(heads=4, max_len=32, in_plain_blocks=False), reference_rows="cfg_tiled",
        **HALLO_CODE_CHOICES, reference_cross_attention=True)
    torch.manual_seed(0)
    net = EmoNet(config).eval()
    emb = FaceEmbedder(tiny_model[0]).embed(np.full((128, 128, 3), 90, np.uint8), keypoints=place_template(0.8))
    with torch.no_grad():
        cond, uncond = net.identity_tokens(emb)
    assert cond.shape == uncond.shape == (1, 4, config.unet.cross_attention_dim)
    assert torch.isfinite(cond).all() and not torch.allclose(cond, uncond)

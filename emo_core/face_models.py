"""MediaPipe model files for face detection and landmarks: where they are looked up, how they are built.

Two files are needed, found by name in a list of search folders (first hit wins):

- the face detector, a BlazeFace short-range ``.tflite`` (``DETECTOR_NAMES``);
- the face landmarker, a MediaPipe Tasks ``.task`` bundle (``LANDMARKER_NAMES``), only for Hallo's
  face / lip / full attention masks.

Since mediapipe 0.10.30 no model ships inside the pip package, so the files live in a models folder. The
nodes layer searches, in order: an explicit folder, ``$EMO_MEDIAPIPE_MODELS`` (``os.pathsep``-separated),
``<ComfyUI models>/mediapipe``. Google's published files work as they are (``blaze_face_short_range.tflite``,
``face_landmarker.task``); so do the ones inside the mediapipe 0.10.21 wheel, which
``.ci/mediapipe_models.sh`` extracts, with the landmarker bundle built by ``build_landmarker_bundle``.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import MissingDependencyError, MissingWeightsError

log = logging.getLogger(__name__)

ENV_VAR = "EMO_MEDIAPIPE_MODELS"
DETECTOR_NAMES = ("blaze_face_short_range.tflite", "face_detection_short_range.tflite")
LANDMARKER_NAMES = ("face_landmarker.task", "face_landmarker_v2_with_blendshapes.task")

# The Tasks landmark decoder reads 478 landmarks (mesh + iris) from the first output tensor; the legacy
# 468-landmark mesh model emits 468*3 floats, which it would read as 478 (x, y) pairs. Padding that output
# with 10 zero landmarks keeps the 468 mesh points exact (the 10 iris points are then meaningless).
_MESH_LANDMARKS = 468
_TASKS_LANDMARKS = 478


def model_search_dirs(explicit: str | os.PathLike | None = None,
                      extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Folders to search, in order: `explicit`, each entry of $EMO_MEDIAPIPE_MODELS, then `extra`."""
    dirs: list[Path] = [Path(explicit)] if explicit else []
    env = os.environ.get(ENV_VAR, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    return dirs


def find_model_file(names: Sequence[str], search_dirs: Sequence[str | os.PathLike], what: str) -> Path:
    """First existing `<dir>/<name>` over dirs (outer) and names (inner), else MissingWeightsError."""
    for folder in search_dirs:
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                log.debug("%s: using %s", what, path)
                return path
    searched = ", ".join(str(Path(d)) for d in search_dirs) or "(no folder given)"
    raise MissingWeightsError(
        f"{what} model not found: looked for {' or '.join(names)} in {searched}; put the file in one of "
        f"these folders or point ${ENV_VAR} at its folder (`emo-models fetch --family hallo` places it in "
        f"<models>/mediapipe, with the rest of a family; .ci/mediapipe_models.sh DEST extracts it from the "
        f"mediapipe 0.10.21 wheel; Google publishes it as {names[0]})")


def find_detector(search_dirs: Sequence[str | os.PathLike]) -> Path:
    """Path of the BlazeFace short-range detector (.tflite) in `search_dirs`."""
    return find_model_file(DETECTOR_NAMES, search_dirs, "MediaPipe face detector")


def find_landmarker(search_dirs: Sequence[str | os.PathLike]) -> Path:
    """Path of the MediaPipe Tasks face-landmarker bundle (.task) in `search_dirs`."""
    return find_model_file(LANDMARKER_NAMES, search_dirs, "MediaPipe face landmarker")


def _schema():
    try:
        import flatbuffers
        from mediapipe.tasks.metadata import schema_py_generated
    except ImportError as err:
        raise MissingDependencyError(
            "building the face-landmarker bundle needs the TFLite schema shipped with mediapipe; "
            "install it: pip install 'mediapipe>=0.10.30'") from err
    return flatbuffers, schema_py_generated


def pad_mesh_output(model_bytes: bytes) -> bytes:
    """Legacy 468-landmark mesh .tflite -> same model whose landmark output is padded to 478*3 floats.

    A model whose first output already holds 478*3 floats is returned unchanged.
    """
    import numpy as np

    flatbuffers, S = _schema()
    model = S.ModelT.InitFromObj(S.Model.GetRootAsModel(model_bytes, 0))
    graph = model.subgraphs[0]
    out = graph.tensors[graph.outputs[0]]
    size = int(np.prod(out.shape))
    if size == _TASKS_LANDMARKS * 3:
        return model_bytes
    if size != _MESH_LANDMARKS * 3:
        raise MissingWeightsError(f"face landmark model has {size} values in its first output, expected "
                                  f"{_MESH_LANDMARKS * 3} (legacy face_landmark.tflite) or {_TASKS_LANDMARKS * 3}")
    pad_op = next(i for i, c in enumerate(model.operatorCodes)
                  if max(c.builtinCode, c.deprecatedBuiltinCode) == S.BuiltinOperator.PAD)
    padding = S.BufferT()
    extra = (_TASKS_LANDMARKS - _MESH_LANDMARKS) * 3
    padding.data = np.array([[0, 0]] * (len(out.shape) - 1) + [[0, extra]], np.int32).view(np.uint8).ravel()
    model.buffers.append(padding)
    pads = S.TensorT()
    pads.name, pads.type, pads.buffer = b"emo_pad_478", S.TensorType.INT32, len(model.buffers) - 1
    pads.shape = np.array([len(out.shape), 2], np.int32)
    padded = S.TensorT()
    padded.name, padded.type, padded.buffer = b"landmarks_478", S.TensorType.FLOAT32, 0
    padded.shape = np.array(list(out.shape[:-1]) + [_TASKS_LANDMARKS * 3], np.int32)
    graph.tensors += [pads, padded]
    op = S.OperatorT()
    op.opcodeIndex = pad_op
    op.inputs = np.array([graph.outputs[0], len(graph.tensors) - 2], np.int32)
    op.outputs = np.array([len(graph.tensors) - 1], np.int32)
    op.builtinOptionsType, op.builtinOptions = S.BuiltinOptions.PadOptions, S.PadOptionsT()
    graph.operators.append(op)
    graph.outputs = np.array([len(graph.tensors) - 1, *graph.outputs[1:]], np.int32)
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def build_landmarker_bundle(detector_tflite: str | os.PathLike, mesh_tflite: str | os.PathLike,
                            dest: str | os.PathLike) -> Path:
    """Write a Tasks FaceLandmarker bundle (zip: face_detector.tflite + face_landmarks_detector.tflite).

    detector_tflite: BlazeFace short range; mesh_tflite: mediapipe's face_landmark.tflite (468 points,
    padded here to the 478 the Tasks decoder reads). No blendshapes model: the landmarker runs without it.
    """
    mesh = pad_mesh_output(Path(mesh_tflite).read_bytes())
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as bundle:
        bundle.write(detector_tflite, "face_detector.tflite")
        bundle.writestr("face_landmarks_detector.tflite", mesh)
    tmp.replace(dest)
    log.info("wrote face-landmarker bundle %s", dest)
    return dest

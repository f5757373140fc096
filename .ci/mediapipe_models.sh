#!/usr/bin/env bash
# Usage: .ci/mediapipe_models.sh DEST
# Puts real MediaPipe face models into DEST, offline from PyPI only: pip-downloads the mediapipe 0.10.21
# wheel (the last one that bundles models; --no-deps, never installed), extracts the BlazeFace short-range
# detector and the 468-point face mesh, and builds face_landmarker.task from them with emo_core.face_models.
# Idempotent: does nothing when both files are already there. Needs mediapipe >= 0.10.30 installed.
set -euo pipefail
DEST="${1:?usage: $0 DEST}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$DEST"
if [[ -f "$DEST/face_detection_short_range.tflite" && -f "$DEST/face_landmarker.task" ]]; then
    exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Any platform's wheel holds the same .tflite files; pin one so the download works from any host.
python3 -m pip download -q mediapipe==0.10.21 --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$TMP"
python3 - "$TMP" "$DEST" <<'PY'
import glob, sys, zipfile
from pathlib import Path
from emo_core.face_models import build_landmarker_bundle
tmp, dest = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(glob.glob(str(tmp / "mediapipe-0.10.21-*.whl"))[0])
for member in ("face_detection/face_detection_short_range.tflite", "face_landmark/face_landmark.tflite"):
    (tmp / Path(member).name).write_bytes(wheel.read(f"mediapipe/modules/{member}"))
(dest / "face_detection_short_range.tflite").write_bytes((tmp / "face_detection_short_range.tflite").read_bytes())
build_landmarker_bundle(tmp / "face_detection_short_range.tflite", tmp / "face_landmark.tflite",
                        dest / "face_landmarker.task")
PY
ls -l "$DEST"

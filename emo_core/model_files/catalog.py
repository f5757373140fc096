"""What each checkpoint family needs: one row per file, where it comes from and where it goes.

Paths are relative to a models root laid out like ComfyUI's `models/` folder (`<root>/<folder>/<path>`), so one
layout serves ComfyUI (`emo-models fetch --comfyui`), the nodes without ComfyUI (`$EMO_MODELS_DIR`) and
`emo-render --models`.

What can be checked against what (see the README, "Getting the models"):
- Hugging Face files: their bytes are not pinned here (this pack cannot know them); at fetch time each file is
  checked against the digest the hub reports for it (the SHA-256 of an LFS file, the git blob hash of a small
  one), and the local record (record.py) keeps the SHA-256 and size of what was placed.
- MediaPipe: the models come from a pinned wheel on PyPI; the wheel's and the two model files' SHA-256 and sizes
  below were read from that wheel.
Pickle-only sources (`convert=True`) are converted once to .safetensors with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

FETCH_COMMAND = "emo-models fetch --family {family}"


@dataclass(frozen=True)
class HubSource:
    """A file of a Hugging Face model repository (downloaded with huggingface_hub)."""
    repo_id: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        return f"huggingface.co/{self.repo_id}: {self.filename}"


@dataclass(frozen=True)
class Wheel:
    """A wheel on PyPI, fetched with `pip download` (so pip's index, proxy and certificate settings apply)."""
    requirement: str
    filename: str
    sha256: str
    size: int
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class WheelMember:
    """A file inside a pinned wheel; its SHA-256 and size are pinned too."""
    wheel: Wheel
    member: str
    sha256: str
    size: int

    def describe(self) -> str:
        return f"PyPI {self.wheel.filename}: {self.member}"


@dataclass(frozen=True)
class LandmarkerBundle:
    """MediaPipe's Tasks face-landmarker bundle, built locally from a detector and the 468-point mesh
    (emo_core.face_models.build_landmarker_bundle), as .ci/mediapipe_models.sh does."""
    detector: WheelMember
    mesh: WheelMember

    def describe(self) -> str:
        return f"built from {self.detector.describe()} and {self.mesh.member}"


@dataclass(frozen=True)
class ModelFile:
    """One file a family needs. folder: the model folder (ComfyUI's name); path: '/'-separated inside it.
    convert: the source is a pickle, converted once to the .safetensors `path`. extra: the option that asks for
    this optional file ("identity", "acc"), None when always fetched. size / sha256: pinned values of the placed
    file, where they are knowable offline."""
    folder: str
    path: str
    source: HubSource | WheelMember | LandmarkerBundle
    what: str
    convert: bool = False
    extra: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def relpath(self) -> str:
        """The path under the models root, '/'-separated (the record's key)."""
        return f"{self.folder}/{self.path}"


@dataclass(frozen=True)
class Family:
    """A family's files and the paths (under the models root) that emo-render loads: the network (a file; for
    EchoMimic one file of its folder), the audio encoder folder, the VAE folder, the MediaPipe folder and the
    optional identity model."""
    name: str
    files: tuple[ModelFile, ...]
    network: str
    audio_encoder: str
    vae: str
    mediapipe: str = "mediapipe"
    identity: str | None = None

    def selected(self, extras: frozenset[str] | set[str] = frozenset()) -> tuple[ModelFile, ...]:
        return tuple(f for f in self.files if f.extra is None or f.extra in extras)

    @property
    def extras(self) -> tuple[str, ...]:
        return tuple(sorted({f.extra for f in self.files if f.extra}))


# -- MediaPipe: the last wheel that bundles the face models (newer ones ship none). Any platform's wheel holds
# the same files; one is pinned so the download works from any host. Digests read from the wheel on PyPI.
MEDIAPIPE_WHEEL = Wheel(
    requirement="mediapipe==0.10.21",
    filename="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3", size=35622638,
    pip_args=("--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"))
DETECTOR = WheelMember(MEDIAPIPE_WHEEL, "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                       "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229714)
MESH = WheelMember(MEDIAPIPE_WHEEL, "mediapipe/modules/face_landmark/face_landmark.tflite",
                   "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", 1242398)

MEDIAPIPE_FILES = (
    ModelFile("mediapipe", "face_detection_short_range.tflite", DETECTOR, "MediaPipe face detector (BlazeFace)",
              size=DETECTOR.size, sha256=DETECTOR.sha256),
    # Built here; its bytes depend on the flatbuffers version, so only the record holds its digest.
    ModelFile("mediapipe", "face_landmarker.task", LandmarkerBundle(DETECTOR, MESH), "MediaPipe face landmarker"),
)

VAE_DIR = "sd-vae-ft-mse"
VAE_FILES = tuple(
    ModelFile("vae", f"{VAE_DIR}/{name}", HubSource("stabilityai/sd-vae-ft-mse", name), "SD 1.5 VAE (ft-MSE)")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"))

WAV2VEC_DIR = "wav2vec2-base-960h"
# Hallo's copy of facebook/wav2vec2-base-960h, because it holds the weights as .safetensors.
WAV2VEC_FILES = tuple(
    ModelFile("audio_encoders", f"{WAV2VEC_DIR}/{name}",
              HubSource("fudan-generative-ai/hallo", f"wav2vec/wav2vec2-base-960h/{name}"), "wav2vec2-base-960h")
    for name in ("config.json", "model.safetensors"))

WHISPER_DIR = "whisper-tiny"
# The same weights as EchoMimic's whisper_tiny.pt (OpenAI's tiny.pt), as .safetensors instead of a pickle.
WHISPER_FILES = tuple(
    ModelFile("audio_encoders", f"{WHISPER_DIR}/{name}", HubSource("openai/whisper-tiny", name), "whisper-tiny")
    for name in ("config.json", "model.safetensors"))

IDENTITY_PATH = "models/antelopev2/glintr100.onnx"
# The recognition model Hallo ships in face_analysis/models/ (its FaceAnalysis(name="") loads that folder).
IDENTITY = ModelFile("insightface", IDENTITY_PATH,
                     HubSource("fudan-generative-ai/hallo", "face_analysis/models/glintr100.onnx"),
                     "face-identity model (insightface recognition, as Hallo ships it)", extra="identity")

SHARED = (*VAE_FILES, *MEDIAPIPE_FILES)


def _net(repo: str, source: str, dest: str, what: str, extra: str | None = None) -> ModelFile:
    return ModelFile("emo", dest, HubSource(repo, source), what, convert=True, extra=extra)


ECHOMIMIC_PARTS = ("reference_unet", "denoising_unet", "motion_module", "face_locator")
FAMILIES: dict[str, Family] = {
    "hallo": Family(
        "hallo", (_net("fudan-generative-ai/hallo", "hallo/net.pth", "hallo/net.safetensors", "Hallo network"),
                  *WAV2VEC_FILES, *SHARED, IDENTITY),
        network="emo/hallo/net.safetensors", audio_encoder=f"audio_encoders/{WAV2VEC_DIR}", vae=f"vae/{VAE_DIR}",
        identity=f"insightface/{IDENTITY_PATH}"),
    "hallo2": Family(
        "hallo2", (_net("fudan-generative-ai/hallo2", "hallo2/net.pth", "hallo2/net.safetensors", "Hallo2 network"),
                   *WAV2VEC_FILES, *SHARED, IDENTITY),
        network="emo/hallo2/net.safetensors", audio_encoder=f"audio_encoders/{WAV2VEC_DIR}", vae=f"vae/{VAE_DIR}",
        identity=f"insightface/{IDENTITY_PATH}"),
    "echomimic": Family(
        "echomimic", (*(_net("BadToBest/EchoMimic", f"{p}.pth", f"echomimic/{p}.safetensors", f"EchoMimic {p}")
                        for p in ECHOMIMIC_PARTS),
                      *(_net("BadToBest/EchoMimic", f"{p}_acc.pth", f"echomimic/{p}_acc.safetensors",
                             f"EchoMimic {p} (6-step acc weights)", extra="acc")
                        for p in ("denoising_unet", "motion_module")),
                      *WHISPER_FILES, *SHARED),
        network="emo/echomimic/denoising_unet.safetensors", audio_encoder=f"audio_encoders/{WHISPER_DIR}",
        vae=f"vae/{VAE_DIR}"),
}
NO_WEIGHTS = {"emo": "EMO's own weights were never published; fetch a family that loads into the same network "
                     "(hallo, hallo2 or echomimic)"}


def family(name: str) -> Family:
    """The family's row, or InvalidInputError naming the known ones."""
    if name in NO_WEIGHTS:
        raise InvalidInputError(NO_WEIGHTS[name])
    if name not in FAMILIES:
        raise InvalidInputError(f"unknown family '{name}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def fetch_hint(family_name: str | None = None, where: str = "") -> str:
    """The command that gets a family's files, for error messages: `emo-models fetch --family hallo<where>`, or
    with no family named, FAMILY and the choices. `where`: e.g. " --dir /models" or " --comfyui PATH"."""
    command = f"`{FETCH_COMMAND.format(family=family_name or 'FAMILY')}{where}`"
    return command if family_name else f"{command} (FAMILY: {', '.join(FAMILIES)})"

"""`emo-models`: fetch from a local stand-in for the Hugging Face hub and PyPI (tests/fake_hub_server.py), never
the internet. Download, resume after a cut transfer, placement where the pack looks, digest checks, refused
tampered or pickled-code files, list and verify; nothing is downloaded unless `fetch` is asked."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, load_pack, mediapipe_models_or_skip, parity_dir, shared_file
from fake_hub_server import FakeHub

from emo_core.model_files import catalog, cli
from emo_core.model_files.catalog import Family, HubSource, LandmarkerBundle, ModelFile, Wheel, WheelMember
from emo_core.model_files.fetch import FetchOptions, fetch_family
from emo_core.model_files.layout import models_root
from emo_core.model_files.record import Record


def pip_env(server: FakeHub) -> dict[str, str]:
    """pip pointed at the stand-in index only (no config file, no other index or wheel folder)."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"{server.url}/simple", "PIP_EXTRA_INDEX_URL": "",
            "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1", "PIP_CONSTRAINT": ""}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in hub, and huggingface_hub pointed at it with a fresh cache. huggingface_hub reads HF_ENDPOINT
    and HF_HOME once, at import, so in this process its constants are set as those variables would set them
    (test_cli_honours_hf_endpoint_and_hf_home runs the command with the variables themselves)."""
    import huggingface_hub.constants as constants

    with FakeHub() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        for key, value in pip_env(server).items():
            monkeypatch.setenv(key, value)
        yield server


def tiny_pickle(**tensors) -> bytes:
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def family_of(*files: ModelFile) -> Family:
    return Family("test", tuple(files), network="", audio_encoder="", vae="")


def hub_file(path: str, repo: str = "org/repo", **kw) -> ModelFile:
    return ModelFile("emo", path, HubSource(repo, path), f"test file {path}", **kw)


def fake_wheel(spec: Wheel, members: dict[str, bytes]) -> bytes:
    """A wheel named like `spec` holding `members` (with the dist-info pip reads)."""
    name, version = spec.requirement.split("==")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
        info = f"{name}-{version}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n")
        z.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


def mediapipe_sources() -> dict[str, bytes]:
    """Real MediaPipe models by wheel member (skips or fails without them, see conftest): the detector, and as
    the mesh the landmarker bundle's own (already padded) landmark model, which the bundle builder takes as is."""
    from emo_core.face_models import find_detector, find_landmarker

    dirs = mediapipe_models_or_skip()
    with zipfile.ZipFile(find_landmarker(dirs)) as bundle:
        mesh = bundle.read("face_landmarks_detector.tflite")
    return {catalog.DETECTOR.member: find_detector(dirs).read_bytes(), catalog.MESH.member: mesh}


def pinned_to(data: dict[str, bytes], wheel_bytes: bytes) -> tuple[Wheel, WheelMember, WheelMember]:
    """The catalog's wheel and member rows with their pins replaced by those of a test wheel."""
    wheel = dataclasses.replace(catalog.MEDIAPIPE_WHEEL, sha256=hashlib.sha256(wheel_bytes).hexdigest(),
                                size=len(wheel_bytes))

    def member(row: WheelMember) -> WheelMember:
        blob = data[row.member]
        return dataclasses.replace(row, wheel=wheel, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))

    return wheel, member(catalog.DETECTOR), member(catalog.MESH)


def with_wheel(fam: Family, detector: WheelMember, mesh: WheelMember) -> Family:
    """`fam` with its MediaPipe rows taken from a test wheel."""
    def swap(f: ModelFile) -> ModelFile:
        if isinstance(f.source, WheelMember):
            return dataclasses.replace(f, source=detector, size=detector.size, sha256=detector.sha256)
        if isinstance(f.source, LandmarkerBundle):
            return dataclasses.replace(f, source=LandmarkerBundle(detector, mesh))
        return f
    return dataclasses.replace(fam, files=tuple(swap(f) for f in fam.files))


def serve_hallo(server: FakeHub, tmp_path: Path) -> dict[tuple[str, str], bytes]:
    """Tiny stand-ins for every Hugging Face file of the Hallo family: the fixture set's wav2vec2, a random
    tiny VAE, a pickled network; -> what was served, by (repo, file)."""
    from diffusers import AutoencoderKL

    vae_dir = tmp_path / "served-vae"
    AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, latent_channels=4).save_pretrained(vae_dir)
    wav2vec = parity_dir() / "wav2vec2"
    shared_file("parity", parity_dir().name, "wav2vec2", "model.safetensors")
    by_path = {"hallo/net.pth": tiny_pickle(**{"reference_unet.w": torch.arange(6.0).reshape(2, 3),
                                               "denoising_unet.b": torch.ones(4)}),
               "face_analysis/models/glintr100.onnx": b"not an onnx model, only served bytes" * 64}
    served = {}
    for f in catalog.FAMILIES["hallo"].files:
        if not isinstance(f.source, HubSource):
            continue
        name = Path(f.path).name
        data = by_path.get(f.source.filename) or (
            (wav2vec / name).read_bytes() if f.folder == "audio_encoders" else (vae_dir / name).read_bytes())
        server.add(f.source.repo_id, f.source.filename, data)
        served[(f.source.repo_id, f.source.filename)] = data
    return served


def test_fetch_places_the_hallo_family_where_the_pack_looks(hub, tmp_path, monkeypatch):
    data = mediapipe_sources()
    served = serve_hallo(hub, tmp_path)
    wheel_bytes = fake_wheel(catalog.MEDIAPIPE_WHEEL, data)
    wheel, detector, mesh = pinned_to(data, wheel_bytes)
    hub.add_wheel(wheel.filename, wheel_bytes)
    fam = with_wheel(catalog.FAMILIES["hallo"], detector, mesh)
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    root = models_root(comfyui=comfyui)

    outcomes = fetch_family(fam, root, FetchOptions(extras=frozenset({"identity"})))
    assert [o.state for o in outcomes] == ["fetched"] * len(fam.files), outcomes
    record = Record.load(root)
    for f in fam.files:
        path = root / f.folder / f.path
        entry = record.get(f.relpath)
        assert entry["size"] == path.stat().st_size and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        if isinstance(f.source, HubSource) and not f.convert:
            assert path.read_bytes() == served[(f.source.repo_id, f.source.filename)]
    # The pickle was converted once to .safetensors with the same tensors; no pickle is placed.
    from safetensors.torch import load_file
    net = load_file(str(root / "emo" / "hallo" / "net.safetensors"))
    original = torch.load(io.BytesIO(served[("fudan-generative-ai/hallo", "hallo/net.pth")]), weights_only=True)
    assert net.keys() == original.keys() and all(torch.equal(net[k], original[k]) for k in net)
    assert not list(root.rglob("*.pth")) and not list(root.rglob("*.partial"))

    # Where the pack looks: the nodes' folders list the network and the encoder folder; the files load.
    pack = load_pack()
    monkeypatch.setenv("EMO_MODELS_DIR", str(root))
    monkeypatch.delenv("EMO_MEDIAPIPE_MODELS", raising=False)
    services = pack.nodes.comfy_services
    assert "hallo/net.safetensors" in services.list_models("emo")
    assert catalog.WAV2VEC_DIR in services.list_models("audio_encoders", {".safetensors"}, with_dirs=True)
    from emo_core.face_models import find_detector, find_landmarker
    from emo_core.wav2vec import load_wav2vec
    dirs = services.mediapipe_dirs()
    assert find_detector(dirs).parent == find_landmarker(dirs).parent == root / "mediapipe"
    load_wav2vec(services.model_path("audio_encoders", catalog.WAV2VEC_DIR, allow_dir=True))
    from diffusers import AutoencoderKL
    AutoencoderKL.from_pretrained(str(root / "vae" / catalog.VAE_DIR), local_files_only=True)

    # A second fetch finds everything in place and asks the hub nothing.
    before = len(hub.requests)
    assert {o.state for o in fetch_family(fam, root, FetchOptions(extras=frozenset({"identity"})))} == {"present"}
    assert len(hub.requests) == before


def test_a_cut_transfer_resumes_where_it_stopped(hub, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub writes what it received in blocks of DOWNLOAD_CHUNK_SIZE: cut after the first block.
    data = os.urandom(constants.DOWNLOAD_CHUNK_SIZE + 300_000)
    hub.add("org/repo", "big.safetensors", data)
    hub.cut_once["big.safetensors"] = constants.DOWNLOAD_CHUNK_SIZE + 1000
    (outcome,) = fetch_family(family_of(hub_file("big.safetensors")), tmp_path / "models")
    assert outcome.state == "fetched"
    assert (tmp_path / "models" / "emo" / "big.safetensors").read_bytes() == data
    first, second = hub.gets("/cdn/" + hashlib.sha256(data).hexdigest())
    assert first[2] is None
    offset = int(second[2].removeprefix("bytes=").split("-")[0])
    assert 0 < offset < len(data)  # the second request asked for the rest only


def test_a_tampered_download_is_refused_and_not_placed(hub, tmp_path):
    good, bad = os.urandom(4096), os.urandom(4096)
    hub.add("org/repo", "good.safetensors", good)
    hub.add("org/repo", "bad.safetensors", bad)
    hub.tamper["bad.safetensors"] = os.urandom(4096)  # the bytes differ from the digest the hub announces
    root = tmp_path / "models"
    outcomes = fetch_family(family_of(hub_file("bad.safetensors"), hub_file("good.safetensors")), root)
    assert [o.state for o in outcomes] == ["failed", "fetched"]
    assert "bad.safetensors" in outcomes[0].detail and "SHA-256" in outcomes[0].detail
    assert not (root / "emo" / "bad.safetensors").exists() and (root / "emo" / "good.safetensors").is_file()
    assert "emo/bad.safetensors" not in Record.load(root).files
    cached = [p.read_bytes() for p in (tmp_path / "hf-cache").rglob("*") if p.is_file()]
    assert hub.tamper["bad.safetensors"] not in cached  # not kept in the hub cache either
    assert len(hub.gets("/cdn/" + hashlib.sha256(bad).hexdigest())) == 2  # tried once more, then refused


def test_a_small_file_is_checked_against_its_git_blob_hash(hub, tmp_path):
    hub.add("org/repo", "config.json", b'{"a": 1}')
    hub.tamper["config.json"] = b'{"a": 2}'
    (outcome,) = fetch_family(family_of(hub_file("config.json")), tmp_path / "models")
    assert outcome.state == "failed" and "git blob hash" in outcome.detail
    del hub.tamper["config.json"]
    (outcome,) = fetch_family(family_of(hub_file("config.json")), tmp_path / "models")
    assert outcome.state == "fetched" and "git blob hash" in outcome.detail


def test_list_and_verify_name_truncated_and_tampered_files_and_set_them_aside(hub, tmp_path, monkeypatch):
    files = {f"f{i}.safetensors": os.urandom(2048 + i) for i in range(3)}
    for name, data in files.items():
        hub.add("org/repo", name, data)
    fam = family_of(*(hub_file(name) for name in files))
    monkeypatch.setitem(catalog.FAMILIES, "test", fam)
    root = tmp_path / "models"
    args = ["--dir", str(root), "--family", "test"]
    assert cli.main(["fetch", *args], stream=io.StringIO()) == 0
    with open(root / "emo" / "f0.safetensors", "r+b") as f:  # truncated
        f.truncate(1000)
    with open(root / "emo" / "f1.safetensors", "r+b") as f:  # tampered, same size
        f.seek(10)
        f.write(b"\x00\xff")

    out = io.StringIO()
    assert cli.main(["list", *args], stream=out) == 1
    lines = {line.split()[1]: line.split()[0] for line in out.getvalue().splitlines() if line.startswith("  ")}
    assert lines == {"emo/f0.safetensors": "corrupt", "emo/f1.safetensors": "ok", "emo/f2.safetensors": "ok"}

    out = io.StringIO()
    assert cli.main(["verify", *args], stream=out) == 1
    lines = {line.split()[1]: line.split()[0] for line in out.getvalue().splitlines() if line.startswith("  ")}
    assert lines == {"emo/f0.safetensors": "corrupt", "emo/f1.safetensors": "corrupt", "emo/f2.safetensors": "ok"}
    for name in ("f0", "f1"):  # set aside: no longer where a loader looks
        assert not (root / "emo" / f"{name}.safetensors").exists()
        assert (root / "emo" / f"{name}.safetensors.corrupt").is_file()

    # The damaged bytes were also in the hub cache (the placed file is a hard link to it): a new fetch sees
    # they do not match the hub's digest and downloads them again.
    assert cli.main(["fetch", *args], stream=io.StringIO()) == 0
    assert cli.main(["verify", *args], stream=io.StringIO()) == 0
    assert all((root / "emo" / n).read_bytes() == d for n, d in files.items())


class _Marker:
    """A pickle whose loading would run code (create a file)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_holding_code_is_refused_not_run(hub, tmp_path):
    marker = tmp_path / "ran"
    hub.add("org/repo", "net.pth", pickle.dumps({"w": _Marker(str(marker))}, protocol=2))
    root = tmp_path / "models"
    net = dataclasses.replace(hub_file("net.safetensors", convert=True), source=HubSource("org/repo", "net.pth"))
    (outcome,) = fetch_family(family_of(net), root)
    assert outcome.state == "failed" and "not loaded" in outcome.detail
    assert not marker.exists() and not (root / "emo" / "net.safetensors").exists()
    assert not list(root.rglob("*.partial*"))


def test_mediapipe_comes_from_the_pinned_wheel_through_pip_and_a_wrong_wheel_is_refused(hub, tmp_path):
    data = mediapipe_sources()
    wheel_bytes = fake_wheel(catalog.MEDIAPIPE_WHEEL, data)
    wheel, detector, mesh = pinned_to(data, wheel_bytes)
    hub.add_wheel(wheel.filename, wheel_bytes)
    fam = with_wheel(family_of(*catalog.MEDIAPIPE_FILES), detector, mesh)
    root = tmp_path / "models"
    assert [o.state for o in fetch_family(fam, root)] == ["fetched", "fetched"]
    assert (root / "mediapipe" / "face_detection_short_range.tflite").read_bytes() == data[catalog.DETECTOR.member]
    with zipfile.ZipFile(root / "mediapipe" / "face_landmarker.task") as bundle:
        assert set(bundle.namelist()) == {"face_detector.tflite", "face_landmarks_detector.tflite"}
    assert hub.gets("/simple/mediapipe/")  # pip asked the index

    # Another wheel with one byte changed in the detector: its digest is not the pinned one, nothing is placed.
    changed = dict(data)
    blob = bytearray(data[catalog.DETECTOR.member])
    blob[len(blob) // 2] ^= 0xFF
    changed[catalog.DETECTOR.member] = bytes(blob)
    other = tmp_path / wheel.filename
    other.write_bytes(fake_wheel(catalog.MEDIAPIPE_WHEEL, changed))
    outcomes = fetch_family(fam, tmp_path / "other", FetchOptions(mediapipe_wheel=str(other)))
    assert [o.state for o in outcomes] == ["failed", "failed"]
    assert all("pinned" in o.detail for o in outcomes)
    assert not (tmp_path / "other" / "mediapipe").exists() or not any((tmp_path / "other" / "mediapipe").iterdir())


def test_nothing_is_downloaded_unless_fetch_is_asked(hub, tmp_path, monkeypatch):
    root = tmp_path / "models"
    for command in ("list", "verify"):
        assert cli.main([command, "--dir", str(root)], stream=io.StringIO()) == 0  # every family shown, none asked for
        assert cli.main([command, "--dir", str(root), "--family", "hallo"], stream=io.StringIO()) == 1  # all missing
    pack = load_pack()
    monkeypatch.setenv("EMO_MODELS_DIR", str(root))
    with pytest.raises(pack.emo_core.errors.MissingWeightsError, match="emo-models fetch --family FAMILY --dir"):
        pack.nodes.comfy_services.model_path("emo", "hallo/net.safetensors")
    from emo_core.errors import MissingWeightsError
    from emo_core.face_models import find_detector
    with pytest.raises(MissingWeightsError, match="emo-models fetch --family hallo"):
        find_detector([root / "mediapipe"])
    assert hub.requests == []


def test_emo_has_no_weights_to_fetch_and_bad_options_exit_2(tmp_path):
    out = io.StringIO()
    assert cli.main(["fetch", "--family", "emo", "--dir", str(tmp_path)], stream=out) == 2
    assert "never published" in out.getvalue()
    out = io.StringIO()
    assert cli.main(["fetch", "--family", "echomimic", "--with", "identity", "--dir", str(tmp_path)], stream=out) == 2
    assert "acc" in out.getvalue()
    out = io.StringIO()
    assert cli.main(["list", "--comfyui", str(tmp_path / "nowhere")], stream=out) == 2
    assert "ComfyUI folder" in out.getvalue()
    assert not list(tmp_path.iterdir())


def test_cli_honours_hf_endpoint_and_hf_home(tmp_path):
    """The installed command, in a process of its own, with HF_ENDPOINT and HF_HOME as a user sets them."""
    data = os.urandom(3000)
    with FakeHub() as server:
        server.add("fudan-generative-ai/hallo", "wav2vec/wav2vec2-base-960h/model.safetensors", data)
        server.add("fudan-generative-ai/hallo", "wav2vec/wav2vec2-base-960h/config.json", b"{}")
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", **pip_env(server)}
        env.pop("HF_HUB_CACHE", None)
        run = subprocess.run([sys.executable, "-m", "emo_core.model_files", "fetch", "--family", "hallo", "--dir",
                              str(tmp_path / "models")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    # Only the two wav2vec2 files are served: they are placed, every other file is named as failed.
    assert run.returncode == 1, run.stdout + run.stderr
    lines = {line.split()[1]: line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")}
    assert lines.pop(f"audio_encoders/{catalog.WAV2VEC_DIR}/model.safetensors") == "fetched"
    assert lines.pop(f"audio_encoders/{catalog.WAV2VEC_DIR}/config.json") == "fetched"
    assert set(lines.values()) == {"failed"} and "emo/hallo/net.safetensors" in lines
    assert (tmp_path / "models" / "audio_encoders" / catalog.WAV2VEC_DIR / "model.safetensors").read_bytes() == data
    assert list((tmp_path / "hf" / "hub").glob("models--fudan-generative-ai--hallo"))


def test_a_pickle_with_tied_and_strided_tensors_converts_to_the_same_tensors(hub, tmp_path):
    """safetensors stores neither shared nor strided storage: the conversion copies exactly those tensors."""
    weight = torch.randn(4, 3)
    tensors = {"a.weight": weight, "b.weight": weight, "t": torch.randn(3, 5).t(), "bias": torch.randn(3)}
    hub.add("org/repo", "net.pth", tiny_pickle(**tensors))
    net = dataclasses.replace(hub_file("net.safetensors", convert=True), source=HubSource("org/repo", "net.pth"))
    (outcome,) = fetch_family(family_of(net), tmp_path / "models")
    assert outcome.state == "fetched", outcome.detail
    from safetensors.torch import load_file
    got = load_file(str(tmp_path / "models" / "emo" / "net.safetensors"))
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)

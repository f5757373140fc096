"""The example workflows in a real ComfyUI server (CPU, tiny random models, this checkout as a custom node).

The server runs from the checkout in COMFYUI_DIR with the Python in COMFYUI_PYTHON (default: this one), in
its own --base-directory holding the models, input and output folders. Checked: the pack loads and the core
nodes' schemas match tests/test_workflows.py's table; the template browser lists and serves the three UI
workflows; the server validates every API twin (only the model and media files are missing); the
portrait + audio twin renders an H.264 + AAC MP4, and a second run with other audio takes the portrait
branch from the cache; the speed-from-video twin runs with a native EMO checkpoint.

Tiny models: a Hallo-layout net with a 512-d identity input (so the face-identity model fits) and a native
EMO net, both random and saved with `save_native`; the parity fixture's tiny wav2vec2; a random TAESD as
the VAE (ComfyUI's VAELoader recognises its keys); a random linear ONNX model as w600k_r50.onnx.
Needs the Hallo parity fixtures (EMO_PARITY_DIR) and the MediaPipe models (EMO_MEDIAPIPE_MODELS).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHARED, echomimic_file, mediapipe_models_or_skip, parity_dir, tiny_emo_config_for_fixture_audio
from test_workflows import CORE, FILE_INPUTS, NAMES, OURS, load_api, load_ui

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
SKIP_WHY = "needs a ComfyUI checkout in COMFYUI_DIR (and its requirements installed) to run the real server"
FIXTURES = SHARED / "fixtures"
SIZE = 64  # the portrait is resized to SIZE x SIZE by the workflow's own Upscale Image node
PROMPT_TIMEOUT = 240


def _comfy_ready() -> str | None:
    """Why the real server cannot run here, or None."""
    if not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file():
        return SKIP_WHY
    probe = subprocess.run([COMFYUI_PYTHON, "-c", "import torch, av, aiohttp, yaml, safetensors, PIL, numpy"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode:
        return f"{SKIP_WHY}; {COMFYUI_PYTHON} cannot import its requirements: {probe.stderr.strip()[-300:]}"
    if "--base-directory" not in (Path(COMFYUI_DIR) / "comfy" / "cli_args.py").read_text(encoding="utf-8"):
        return f"{SKIP_WHY}; the checkout in {COMFYUI_DIR} predates --base-directory"
    return None


# --- tiny models --------------------------------------------------------------------------------------------

def tiny_hallo_config():
    """Hallo's layout (hierarchical audio attention, 3-channel face locator, identity tokens from a 512-d
    embedding, pixel motion frames) at conftest's toy size, with 8-frame clips."""
    from emo_core.config import HALLO_CODE_CHOICES, AudioAttentionConfig, FaceLocatorConfig, IdentityConfig, MotionConfig

    return tiny_emo_config_for_fixture_audio(
        family="hallo", identity=IdentityConfig(embedding_dim=512, tokens=4), speed=None,
        audio_attention=AudioAttentionConfig(form="hierarchical", audio_dim=16),
        face_locator=FaceLocatorConfig(conditioning_channels=3, block_out_channels=(4, 8, 8, 16)),
        motion=MotionConfig(heads=4, max_len=32, in_plain_blocks=False), reference_rows="cfg_tiled",
        clip_length=8, motion_frames=2, first_motion="reference", motion_source="pixels",
        **HALLO_CODE_CHOICES, reference_cross_attention=True)


TAESD_SCRIPT = """
import sys, torch
sys.argv = ["make_vae", "--cpu"]
sys.path.insert(0, ".")
import comfy.options
comfy.options.enable_args_parsing()
from comfy.taesd.taesd import TAESD
from safetensors.torch import save_file
torch.manual_seed(0)
# ComfyUI's layers skip weight init (the tensors hold whatever memory held, NaN included): draw them here.
state = {k: (torch.randn(v.shape) / v[0].numel() ** 0.5 if v.dim() > 1 else torch.zeros(v.shape)).contiguous()
         for k, v in TAESD().state_dict().items()}
state["vae_scale"] = torch.tensor(0.18215)  # SD 1.5's latent scale, as VAELoader sets it for taesd
save_file(state, OUT)
"""

PROBE_SCRIPT = """
import av, json, sys
with av.open(sys.argv[1]) as c:
    streams = [{"type": s.type, "codec": s.codec_context.name, "frames": s.frames,
                "width": getattr(s.codec_context, "width", None), "rate": getattr(s.codec_context, "sample_rate", None)}
               for s in c.streams]
    print(json.dumps({"duration": c.duration / 1e6 if c.duration else None, "streams": streams}))
"""

DRIVING_SCRIPT = """
import av, sys, numpy as np
from PIL import Image
face = Image.open(sys.argv[1]).convert("RGB").resize((128, 128))
with av.open(sys.argv[2], "w") as c:
    s = c.add_stream("h264", rate=25)
    s.width, s.height, s.pix_fmt = 128, 128, "yuv420p"
    for i in range(20):  # 0.8 s at 25 fps, longer than the 0.6 s audio; the head turns 3 degrees per frame
        frame = np.asarray(face.rotate(3 * i, resample=Image.BICUBIC, fillcolor=(128, 128, 128)))
        for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(packet)
    for packet in s.encode():
        c.mux(packet)
"""


def comfy_python(script: str, *args: str, **env) -> str:
    out = subprocess.run([COMFYUI_PYTHON, "-c", script, *args], cwd=COMFYUI_DIR, capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def install_models(models: Path) -> bool:
    """Put the tiny models where the loaders look; returns whether the face-identity model can run."""
    from emo_core.checkpoint import save_native
    from emo_core.network import EmoNet

    wav2vec = parity_dir() / "wav2vec2"
    if not (wav2vec / "config.json").is_file():
        why = f"the parity fixtures' tiny wav2vec2 is missing in {wav2vec} (set EMO_PARITY_DIR)"
        if os.environ.get("EMO_REQUIRE_PARITY") == "1":
            pytest.fail(why)
        pytest.skip(why)
    for folder in ("emo", "vae", "audio_encoders"):
        (models / folder).mkdir(parents=True)
    torch.manual_seed(0)
    save_native(EmoNet(tiny_hallo_config()).eval(), str(models / "emo" / "hallo_tiny.safetensors"))
    save_native(EmoNet(tiny_emo_config_for_fixture_audio(clip_length=4, motion_frames=2)).eval(),
                str(models / "emo" / "emo_tiny.safetensors"))
    shutil.copytree(wav2vec, models / "audio_encoders" / "wav2vec2-tiny")
    shutil.copy(echomimic_file("net.safetensors"), models / "emo" / "echomimic_tiny.safetensors")
    shutil.copy(echomimic_file("whisper_tiny.pt"), models / "audio_encoders" / "whisper_tiny.pt")
    comfy_python(TAESD_SCRIPT.replace("OUT", repr(str(models / "vae" / "tiny_taesd.safetensors"))))
    if subprocess.run([COMFYUI_PYTHON, "-c", "import onnxruntime"], capture_output=True).returncode:
        return False
    pytest.importorskip("onnx", reason="the onnx package (test extra) builds the tiny face-identity model")
    from test_identity import linear_model

    face_dir = models / "insightface" / "models" / "buffalo_l"
    face_dir.mkdir(parents=True)
    linear_model(face_dir / "w600k_r50.onnx")
    return True


# --- the server ---------------------------------------------------------------------------------------------

class Comfy:
    """A ComfyUI server process in its own base directory, and the few HTTP calls the tests make."""

    def __init__(self, base: Path, args: tuple[str, ...] = ()):
        self.base, self.log = base, base / "comfyui.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(base), "--preview-method", "latent2rgb"]
        if "--database-url" in (Path(COMFYUI_DIR) / "comfy" / "cli_args.py").read_text(encoding="utf-8"):
            cmd += ["--database-url", "sqlite:///:memory:"]  # not the checkout's user/comfyui.db
        cmd += args
        env = {**os.environ, "EMO_MEDIAPIPE_MODELS": os.environ["EMO_MEDIAPIPE_MODELS"]}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT, env=env)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, seconds: float = 180) -> float:
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2).read()
                return time.monotonic() - start
            except OSError:
                if time.monotonic() - start > seconds:
                    pytest.fail(f"ComfyUI did not answer within {seconds} s:\n{self.tail()}")
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as answer:
            return json.loads(answer.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def upload(self, path: Path, subfolder: str = "emo_e2e") -> str:
        """POST /upload/image (what the frontend's upload buttons use, for audio and video too)."""
        boundary = uuid.uuid4().hex
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n").encode(), path.read_bytes(), b"\r\n"]
        for key, value in (("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f"--{boundary}--\r\n".encode())
        request = urllib.request.Request(self.url + "/upload/image", b"".join(parts),
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            info = json.loads(answer.read())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def run(self, prompt: dict) -> dict:
        """Queue the prompt, wait for it in /history; its history entry (with `seconds`), or fail with why."""
        start = time.monotonic()
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": "emo-e2e"})
        assert status == 200, f"prompt rejected ({status}): {json.dumps(answer, indent=1)[:3000]}"
        prompt_id = answer["prompt_id"]
        while time.monotonic() - start < PROMPT_TIMEOUT:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                errors = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
                assert not errors, (f"{errors[0]['node_type']} (node {errors[0]['node_id']}) failed: "
                                    f"{errors[0]['exception_message']}\n{''.join(errors[0]['traceback'])}")
                entry["seconds"] = time.monotonic() - start
                return entry
            time.sleep(0.5)
        pytest.fail(f"the prompt did not finish within {PROMPT_TIMEOUT} s:\n{self.tail()}")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    why = _comfy_ready()
    if why:
        pytest.skip(why)
    mediapipe_models_or_skip()
    base = tmp_path_factory.mktemp("comfyui_base")
    (base / "custom_nodes").mkdir()
    try:
        (base / "custom_nodes" / "ComfyUI-EMO").symlink_to(ROOT, target_is_directory=True)
    except OSError:  # no symlinks (Windows without developer mode): a copy of the pack
        shutil.copytree(ROOT, base / "custom_nodes" / "ComfyUI-EMO",
                        ignore=shutil.ignore_patterns(".git", "__pycache__", "models"))
    server = Comfy(base)
    try:
        server.identity = install_models(base / "models")
        server.started_in = server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def media(comfy, tmp_path_factory):
    """Uploaded inputs: the portrait, 1 s of the stereo 44.1 kHz speech, 0.6 s of the 16 kHz mono one."""
    tmp = tmp_path_factory.mktemp("media")
    return {"portrait": comfy.upload(FIXTURES / "portrait_astronaut_512.png"),
            "speech": comfy.upload(cut_wav(FIXTURES / "speech_en_44k_stereo.wav", tmp / "speech_1s.wav", 1.0)),
            "other": comfy.upload(cut_wav(FIXTURES / "speech_en_16k_mono.wav", tmp / "speech_0.6s.wav", 0.6))}


def cut_wav(src: Path, dst: Path, seconds: float) -> Path:
    with wave.open(str(src)) as w:
        params, frames = w.getparams(), w.readframes(int(w.getframerate() * seconds))
    with wave.open(str(dst), "wb") as out:
        out.setparams(params)
        out.writeframes(frames)
    return dst


# The tiny stand-ins of each workflow's checkpoint and audio encoder (Hallo's otherwise; emo_hallo2 sets the
# loader's family to hallo2 itself).
TINY_MODELS = {"emo_speed_from_video": ("emo_tiny.safetensors", "wav2vec2-tiny"),
               "emo_echomimic": ("echomimic_tiny.safetensors", "whisper_tiny.pt")}


def tiny_prompt(name: str, comfy: Comfy, **files) -> dict:
    """The API twin with the tiny models, the uploaded media, a SIZE x SIZE portrait and 2 steps."""
    prompt = load_api(name)
    model, encoder = TINY_MODELS.get(name, ("hallo_tiny.safetensors", "wav2vec2-tiny"))
    values = {"EMO_ModelLoader": {"model_name": model},
              "VAELoader": {"vae_name": "tiny_taesd.safetensors"},
              "EMO_AudioEncoderLoader": {"encoder_name": encoder},
              "ImageScale": {"width": SIZE, "height": SIZE}, "EMO_Sampler": {"steps": 2},
              "LoadImage": {"image": files.get("image")}, "LoadAudio": {"audio": files.get("audio")},
              "LoadVideo": {"file": files.get("video")}, "SaveVideo": {"filename_prefix": f"emo_e2e/{name}"},
              "EMO_SaveVideo": {"filename_prefix": f"emo_e2e/{name}"}, "EMO_FaceCrop": {"size": SIZE}}
    for node_id, node in list(prompt.items()):
        node["inputs"].update(values.get(node["class_type"], {}))
        if node["class_type"] == "EMO_FaceEmbedderLoader" and not comfy.identity:
            # No onnxruntime in ComfyUI's Python: run as a user would with the node bypassed.
            del prompt[node_id]
            for other in prompt.values():
                other["inputs"] = {k: v for k, v in other["inputs"].items() if v != [node_id, 0]}
    return prompt


LAST_FRAME_SCRIPT = """
import av, sys
from PIL import Image
with av.open(sys.argv[1]) as c:
    *_, last = c.decode(video=0)
last.to_image().save(sys.argv[2])
"""


def last_frame(video: Path, png: Path) -> torch.Tensor:
    """The video's last frame as (H, W, 3) float 0..1 (decoded with ComfyUI's PyAV)."""
    import numpy as np
    from PIL import Image

    comfy_python(LAST_FRAME_SCRIPT, str(video), str(png))
    return torch.from_numpy(np.array(Image.open(png).convert("RGB"))).float() / 255


def probe(path: Path) -> dict:
    return json.loads(comfy_python(PROBE_SCRIPT, str(path)))


def saved_video(comfy: Comfy, entry: dict) -> Path:
    (item,) = [i for out in entry["outputs"].values() for i in out.get("images", []) if i["type"] == "output"]
    path = comfy.base / "output" / item["subfolder"] / item["filename"]
    assert path.is_file() and path.suffix == ".mp4", path
    return path


def cached_nodes(entry: dict) -> set[str]:
    return {n for kind, d in entry["status"]["messages"] if kind == "execution_cached" for n in d["nodes"]}


def node_id(prompt: dict, class_type: str) -> str:
    (found,) = [i for i, n in prompt.items() if n["class_type"] == class_type]
    return found


# --- tests ----------------------------------------------------------------------------------------------------

def test_the_pack_loads_and_the_core_schemas_are_the_servers(comfy):
    info = comfy.get("/object_info")
    missing = sorted(set(OURS) - set(info))
    assert not missing, f"ComfyUI did not load the pack's nodes {missing}:\n{comfy.tail()}"
    for name, schema in CORE.items():
        live = info[name]
        order = live["input_order"].get("required", []) + live["input_order"].get("optional", [])
        assert order == list(schema.inputs), f"{name}: the server's inputs are {order}"
        for section in ("required", "optional"):
            for input_name, (kind, *rest) in live["input"].get(section, {}).items():
                kind = "COMBO" if isinstance(kind, list) else kind
                assert schema.inputs[input_name] == kind, f"{name}.{input_name}: the server says {kind}"
                assert (section == "optional") == (input_name in schema.optional), f"{name}.{input_name}"
                control = bool(rest and rest[0].get("control_after_generate"))
                assert control == (input_name in schema.control), f"{name}.{input_name} control_after_generate"
        assert tuple(live["output"]) == schema.outputs, f"{name}: the server's outputs are {live['output']}"


def test_the_template_browser_lists_and_serves_the_workflows(comfy):
    assert sorted(comfy.get("/api/workflow_templates").get("ComfyUI-EMO", [])) == sorted(NAMES)
    for name in NAMES:
        assert comfy.get(f"/api/workflow_templates/ComfyUI-EMO/{name}.json") == load_ui(name)


@pytest.mark.parametrize("name", NAMES)
def test_the_server_accepts_each_api_twin_but_for_its_files(comfy, name):
    # The twins name the real model files and example media, absent here: the server's validator must
    # object to those inputs and nothing else (types, links, widget values and ranges all pass).
    status, answer = comfy.post("/prompt", {"prompt": load_api(name), "client_id": "emo-e2e"})
    assert status == 400, answer
    problems = [(e["type"], ne["class_type"], e.get("extra_info", {}).get("input_name"))
                for ne in answer["node_errors"].values() for e in ne["errors"]]
    assert problems and all(kind in ("value_not_in_list", "custom_validation_failed") and (cls, input_name)
                            in FILE_INPUTS for kind, cls, input_name in problems), problems


def test_portrait_and_audio_render_an_mp4_with_sound(comfy, media):
    prompt = tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["speech"])
    entry = comfy.run(prompt)
    video = saved_video(comfy, entry)
    info = probe(video)
    streams = {s["type"]: s for s in info["streams"]}
    print(f"\nComfyUI ready in {comfy.started_in:.1f} s; emo_portrait_audio ran in {entry['seconds']:.1f} s -> "
          f"{video.name} {video.stat().st_size} bytes, {info}")
    assert streams["video"]["codec"] == "h264" and streams["video"]["frames"] == 25
    assert streams["video"]["width"] == SIZE
    assert streams["audio"]["codec"] == "aac" and streams["audio"]["rate"] == 44100
    assert 0.9 < info["duration"] < 1.2
    outputs = entry["outputs"]
    assert outputs[node_id(prompt, "EMO_AudioFeatures")]["emo_audio"][0]["frames"] == 25
    assert outputs[node_id(prompt, "EMO_FaceLocator")]["emo_face"][0]["source"] == "mediapipe"


def test_new_audio_reuses_the_cached_portrait_branch(comfy, media):
    comfy.run(tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["speech"]))
    prompt = tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["other"])
    entry = comfy.run(prompt)
    cached = cached_nodes(entry)
    assert {node_id(prompt, "EMO_ReferenceEncode"), node_id(prompt, "EMO_FaceLocator")} <= cached, cached
    assert node_id(prompt, "EMO_Sampler") not in cached
    streams = {s["type"]: s for s in probe(saved_video(comfy, entry))["streams"]}
    print(f"\nsecond audio: {entry['seconds']:.1f} s, cached nodes {sorted(cached, key=int)}, {streams}")
    assert streams["video"]["frames"] == 15 and streams["audio"]["rate"] == 16000


def test_speed_from_a_driving_video_with_a_native_emo_checkpoint(comfy, media, tmp_path):
    driving = tmp_path / "driving.mp4"
    comfy_python(DRIVING_SCRIPT, str(FIXTURES / "portrait_astronaut_512.png"), str(driving))
    prompt = tiny_prompt("emo_speed_from_video", comfy, image=media["portrait"], audio=media["other"],
                         video=comfy.upload(driving))
    entry = comfy.run(prompt)
    mean_speed = float(entry["outputs"][node_id(prompt, "PreviewAny")]["text"][0])
    streams = {s["type"]: s for s in probe(saved_video(comfy, entry))["streams"]}
    print(f"\nemo_speed_from_video: {entry['seconds']:.1f} s, mean head speed {mean_speed:.3f} rad/s, {streams}")
    assert 0.2 < mean_speed < 3.0  # 3 degrees per frame at 25 fps is 1.31 rad/s, less at the smoothed ends
    assert streams["video"]["frames"] == 15 and streams["audio"]["codec"] == "aac"


@pytest.mark.parametrize("name, family", [("emo_echomimic", "echomimic"), ("emo_hallo2", "hallo2")])
def test_each_family_workflow_renders_with_its_familys_defaults(comfy, media, name, family):
    """EchoMimic: context windows at its own fps (fps 0 on EMO Audio Features); Hallo2: the pixel drop, the
    video streamed by EMO Save Video (Streaming). Every frame of the audio, with its sound track."""
    prompt = tiny_prompt(name, comfy, image=media["portrait"], audio=media["speech"])
    entry = comfy.run(prompt)
    model = entry["outputs"][node_id(prompt, "EMO_ModelLoader")]["emo_model"][0]
    audio = entry["outputs"][node_id(prompt, "EMO_AudioFeatures")]["emo_audio"][0]
    streams = {s["type"]: s for s in probe(saved_video(comfy, entry))["streams"]}
    print(f"\n{name}: {entry['seconds']:.1f} s, {model}, {audio}, {streams}")
    assert model["family"] == family and audio["fps"] == model["fps"]
    assert (model["motion_pixel_drop"] > 0) == (family == "hallo2")
    assert streams["video"]["frames"] == audio["frames"] and streams["audio"]["codec"] == "aac"


def test_batch_client_renders_jobs_on_the_real_server(comfy, tmp_path):
    """emo-batch against the real server: the API twin (tiny models), two jobs sharing one portrait."""
    from emo_core.batch.__main__ import main

    workflow = tiny_prompt("emo_portrait_audio", comfy, image="placeholder.png", audio="placeholder.wav")
    (tmp_path / "workflow.api.json").write_text(json.dumps(workflow))
    one = cut_wav(FIXTURES / "speech_en_16k_mono.wav", tmp_path / "one.wav", 0.5)
    two = cut_wav(FIXTURES / "speech_en_44k_stereo.wav", tmp_path / "two.wav", 0.4)
    jobs = [{"portrait": str(FIXTURES / "portrait_astronaut_512.png"), "audio": str(one), "seed": 3, "name": "one"},
            {"portrait": str(FIXTURES / "portrait_astronaut_512.png"), "audio": str(two), "name": "two"}]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    args = ["--server", comfy.url, "--jobs", str(tmp_path / "jobs.json"), "--out", str(tmp_path / "out"),
            "--workflow", str(tmp_path / "workflow.api.json")]
    assert main(args) == 0, comfy.tail()
    for name, frames in (("one", 13), ("two", 10)):
        info = probe(tmp_path / "out" / f"{name}.mp4")
        streams = {s["type"]: s for s in info["streams"]}
        assert streams["video"]["frames"] == frames and "audio" in streams
    before = (tmp_path / "out" / "one.mp4").stat().st_mtime_ns
    assert main(args) == 0  # resumed: nothing to do, nothing overwritten
    assert (tmp_path / "out" / "one.mp4").stat().st_mtime_ns == before


def test_cancel_stops_the_sampler_cleanly(comfy, media):
    """Interrupt during sampling: the prompt ends interrupted, no video is written, the server keeps serving."""
    prompt = tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["speech"])
    prompt[node_id(prompt, "EMO_Sampler")]["inputs"].update(steps=200, seed=99)
    prompt[node_id(prompt, "SaveVideo")]["inputs"]["filename_prefix"] = "emo_e2e/cancelled"
    status, answer = comfy.post("/prompt", {"prompt": prompt, "client_id": "emo-e2e"})
    assert status == 200, answer
    prompt_id, start = answer["prompt_id"], time.monotonic()
    while not comfy.get("/queue")["queue_running"] and time.monotonic() - start < 60:
        time.sleep(0.2)
    time.sleep(3.0)  # well inside the sampler's 4 clips x 200 steps
    request = urllib.request.Request(comfy.url + "/interrupt", b"{}", {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:  # the Cancel button's request; empty body
        assert answer.status == 200
    while time.monotonic() - start < PROMPT_TIMEOUT:
        entry = comfy.get(f"/history/{prompt_id}").get(prompt_id)
        if entry:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the interrupted prompt never reached /history")
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    interrupted = next(d for kind, d in entry["status"]["messages"] if kind == "execution_interrupted")
    assert interrupted["node_type"] == "EMO_Sampler"
    assert not list((comfy.base / "output").rglob("cancelled*"))
    assert comfy.run(tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["other"]))


def test_progress_and_previews_reach_the_websocket(comfy, media):
    """ComfyUI's progress per step, our emo.progress with clip i of N, and latent previews (binary frames)."""
    from websockets.sync.client import connect

    prompt = tiny_prompt("emo_portrait_audio", comfy, image=media["portrait"], audio=media["other"])
    prompt[node_id(prompt, "EMO_Sampler")]["inputs"].update(steps=3, seed=123)
    sampler = node_id(prompt, "EMO_Sampler")
    client = f"emo-e2e-ws-{uuid.uuid4().hex[:8]}"
    progress, emo, previews = [], [], 0
    with connect(comfy.url.replace("http", "ws") + f"/ws?clientId={client}", open_timeout=30) as ws:
        status, answer = comfy.post("/prompt", {"prompt": prompt, "client_id": client})
        assert status == 200, answer
        deadline = time.monotonic() + PROMPT_TIMEOUT
        while time.monotonic() < deadline:
            message = ws.recv(timeout=PROMPT_TIMEOUT)
            if isinstance(message, bytes):
                previews += 1
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if event["type"] == "progress" and data.get("node") == sampler:
                progress.append((data["value"], data["max"]))
            elif event["type"] == "emo.progress":
                emo.append(data)
            elif event["type"] in ("execution_success", "execution_error"):
                assert event["type"] == "execution_success", data
                break
    clips = emo[0]["clips"]
    assert progress == [(i, clips * 3) for i in range(1, clips * 3 + 1)]
    assert [(d["clip"], d["step"]) for d in emo] == [(c, s) for c in range(1, clips + 1) for s in (1, 2, 3)]
    assert all(d["node"] == sampler and d["prompt_id"] == answer["prompt_id"] for d in emo)
    assert previews >= clips * 3, "one latent preview per step (--preview-method latent2rgb)"


@pytest.mark.parametrize("model", ["hallo_tiny.safetensors", "emo_tiny.safetensors"])
def test_a_portrait_without_a_human_face_fails_naming_face_mask(comfy, media, model):
    """Through the real server, for a Hallo and a native EMO checkpoint: EMO Face Locator refuses a photo
    without a human face (EMO_CAT_PHOTO: a cat photo of your own; default the no-face fixture) at 512 px,
    and the error names its 'face_mask' input as the way out."""
    photo = Path(os.environ.get("EMO_CAT_PHOTO") or FIXTURES / "noface_coffee_512.png")
    prompt = tiny_prompt("emo_portrait_audio", comfy, image=comfy.upload(photo), audio=media["other"])
    for node in prompt.values():
        if node["class_type"] == "ImageScale":
            node["inputs"].update(width=512, height=512)
        if node["class_type"] == "EMO_ModelLoader":
            node["inputs"]["model_name"] = model
    status, answer = comfy.post("/prompt", {"prompt": prompt, "client_id": "emo-e2e"})
    assert status == 200, answer
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while time.monotonic() < deadline:
        entry = comfy.get(f"/history/{answer['prompt_id']}").get(answer["prompt_id"])
        if entry and entry["status"].get("status_str") in ("error", "success"):
            break
        time.sleep(0.5)
    errors = [d for kind, d in (entry or {}).get("status", {}).get("messages", []) if kind == "execution_error"]
    assert errors, f"the prompt did not fail: {entry}"
    print(f"\n{model}: {errors[0]['node_type']}: {errors[0]['exception_message']}")
    assert errors[0]["node_type"] == "EMO_FaceLocator" and "'face_mask'" in errors[0]["exception_message"]


def _photo(tmp_path: Path, size_hw: tuple[int, int]) -> tuple[Path, torch.Tensor]:
    """A phone-sized photo: the portrait fixture off-centre on the no-face one (test_face_crop.compose)."""
    from PIL import Image
    from test_face_crop import compose

    canvas, _, _ = compose(size_hw, (0.3, 0.6))
    path = tmp_path / f"photo_{size_hw[1]}x{size_hw[0]}.png"
    Image.fromarray(canvas.numpy()).save(path)
    return path, canvas.float() / 255


def _check_pasted(video: Path, photo: torch.Tensor, box, png: Path) -> tuple[float, float]:
    """(mean difference outside the crop's square, inside it) between the video's last frame and the photo."""
    frame = last_frame(video, png)
    height, width = frame.shape[:2]
    inside = torch.zeros(height, width, dtype=torch.bool)
    x0, y0, x1, y1 = box
    inside[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
    diff = (frame - photo[:height, :width]).abs().mean(-1)
    return float(diff[~inside].mean()), float(diff[inside].mean())


def test_any_photo_streams_the_animation_back_into_the_full_photo(comfy, media, tmp_path):
    """emo_any_photo on an odd-sized phone photo (1 px more than 1080x1920 each way): EMO Face Crop finds the
    off-centre face and cuts the model's square; EMO Save Video (Streaming) pastes every chunk back and writes
    the photo's size less the odd pixel; outside the square the video is the photo (up to H.264)."""
    from test_face_crop import TALL

    size_hw = (TALL[0] + 1, TALL[1] + 1)
    path, photo = _photo(tmp_path, size_hw)
    prompt = tiny_prompt("emo_any_photo", comfy, image=comfy.upload(path), audio=media["speech"])
    entry = comfy.run(prompt)
    info = entry["outputs"][node_id(prompt, "EMO_FaceCrop")]["emo_crop"][0]
    audio = entry["outputs"][node_id(prompt, "EMO_AudioFeatures")]["emo_audio"][0]
    video = saved_video(comfy, entry)
    streams = {s["type"]: s for s in probe(video)["streams"]}
    outside, inside = _check_pasted(video, photo, info["box"], tmp_path / "last.png")
    print(f"\nemo_any_photo: {entry['seconds']:.1f} s, crop {info}, {streams}, mean difference outside the square "
          f"{outside:.4f}, inside {inside:.4f}")
    assert (info["faces"], info["source"], info["size"], info["runs_off"]) == (1, "detector", SIZE, False)
    assert (info["height"], info["width"]) == size_hw
    assert streams["video"]["width"] == TALL[1] and streams["video"]["frames"] == audio["frames"]
    assert streams["audio"]["codec"] == "aac"
    assert outside < 0.02 < inside  # the photo around, the (random tiny model's) animation in the square


def test_any_photo_through_paste_back_and_core_save_video(comfy, media, tmp_path):
    """The IMAGE path of the same workflow: VAE Decode -> EMO Paste Back -> Create Video -> Save Video."""
    from test_face_crop import TALL

    path, photo = _photo(tmp_path, TALL)
    prompt = tiny_prompt("emo_any_photo", comfy, image=comfy.upload(path), audio=media["other"])
    saver_id, crop_id = node_id(prompt, "EMO_SaveVideo"), node_id(prompt, "EMO_FaceCrop")
    saver = prompt.pop(saver_id)["inputs"]
    prompt.update({
        "90": {"class_type": "VAEDecode", "inputs": {"samples": saver["latent"], "vae": saver["vae"]}},
        "91": {"class_type": "EMO_PasteBack", "inputs": {"image": prompt[crop_id]["inputs"]["image"],
                                                         "frames": ["90", 0], "crop": [crop_id, 1], "feather": 0.1,
                                                         "keep_detail": True, "match_colors": True}},
        "92": {"class_type": "CreateVideo", "inputs": {"images": ["91", 0], "fps": saver["fps"],
                                                       "audio": saver["audio"]}},
        "93": {"class_type": "SaveVideo", "inputs": {"video": ["92", 0], "filename_prefix": "emo_e2e/any_photo_ib",
                                                     "format": "auto", "codec": "auto"}}})
    entry = comfy.run(prompt)
    info = entry["outputs"][crop_id]["emo_crop"][0]
    video = saved_video(comfy, entry)
    streams = {s["type"]: s for s in probe(video)["streams"]}
    outside, inside = _check_pasted(video, photo, info["box"], tmp_path / "last.png")
    print(f"\nemo_any_photo via EMO Paste Back: {entry['seconds']:.1f} s, {streams}, mean difference outside the "
          f"square {outside:.4f}, inside {inside:.4f}")
    assert (streams["video"]["width"], streams["video"]["frames"]) == (TALL[1], 15)
    assert outside < 0.02 < inside

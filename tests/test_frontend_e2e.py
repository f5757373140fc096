"""The three UI workflows in the real ComfyUI frontend, in a headless Chromium.

A ComfyUI server (COMFYUI_DIR, COMFYUI_PYTHON, started as in tests/test_comfyui_e2e.py, with this checkout
as a custom node) serves its frontend package; a small playwright-core script (DRIVER) opens the page,
waits for `window.app`, and loads each workflow through the template browser itself: the
Comfy.BrowseTemplates command, a click on this pack's category, a click on the workflow's card (the
frontend then fetches /api/workflow_templates/ComfyUI-EMO/<name>.json and calls app.loadGraphData). For
each it records the dialogs, toasts, console errors, every node's widgets, the workflow the frontend
serializes back and `app.graphToPrompt()`. Checked: no errors of any kind (no missing-node dialog, no
broken node); every widget value sits on the widget it was written for (combo values among the combo's
options, numbers in range, the control_after_generate value after each seed, widgets_values unchanged by a
load/serialize round trip); and the prompt the frontend would queue is the API twin: the same node ids,
class types, titles, links and widget values. Then the server broadcasts what a run sends our nodes (RUN:
`executed` for the audio and face nodes, `emo.progress` for the sampler): the text must show whole, the node
must not shrink, and the prompt and saved workflow must stay as they were; and each workflow must open at a
zoom the frontend draws in full detail.

It runs once with the frontend ComfyUI pins and once per EMO_FRONTEND_ROOTS entry (newer frontends, served
with --front-end-root). What legitimately differs in a newer frontend passes: endpoints this server lacks
(404s of paths no server route serves, and the bundle's own reports of them), string node ids, more _meta
fields, frontend-only widgets; what this pack controls stays strict, and no frontend may print an internal-
module notice or an unknown message type for our extension.

The server gets files named as the workflows name them (empty model files; a small image, wav and H.264
video in input/), so every file combo holds its value in the list the server offers.
Frontend-only widgets that graphToPrompt sends along (LoadAudio's audioUI, LoadVideo's video-preview,
PreviewAny's preview, which the server ignores as they are in no node's schema) are checked to be empty
and then left out of the comparison.

Needs, besides ComfyUI: Node.js, EMO_PLAYWRIGHT_DIR (a folder where `node -e "require('playwright-core')"`
works, e.g. `mkdir /tmp/pw && cd /tmp/pw && npm i playwright-core`) and Chromium (/usr/bin/chromium or
CHROMIUM; Debian: `apt-get install chromium`). Runs in about 25 s per frontend.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from test_comfyui_e2e import COMFYUI_DIR, COMFYUI_PYTHON, Comfy, _comfy_ready, comfy_python
from conftest import ROOT
from test_workflows import FILE_INPUTS, NAMES, load_api, load_ui

PACK = "ComfyUI-EMO"  # the custom_nodes folder name: the template browser's module name
PLAYWRIGHT_DIR = os.environ.get("EMO_PLAYWRIGHT_DIR")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
BROWSER_TIMEOUT = 120

# Frontends to test besides the one ComfyUI pins (its requirements.txt; the one its Python has installed).
FRONTEND_ROOTS_HELP = (
    f"set EMO_FRONTEND_ROOTS to test newer frontends too ({os.pathsep!r}-separated; each a frontend's static "
    "folder with index.html, an unpacked comfyui-frontend-package wheel, or the wheel itself: "
    "pip download comfyui-frontend-package==VERSION --no-deps -d DIR), served with --front-end-root")
EXTRA_FRONTENDS = [Path(p) for p in os.environ.get("EMO_FRONTEND_ROOTS", "").split(os.pathsep) if p.strip()]


def _frontend_id(root: Path | None) -> str:
    if root is None:
        return "pinned"
    found = re.search(r"(\d+\.\d+\.\d+)", root.name) or next(
        (re.search(r"(\d+\.\d+\.\d+)", d.name) for d in root.parent.parent.glob("*.dist-info")), None)
    return f"frontend-{found.group(1)}" if found else f"frontend-{root.name}"


FRONTENDS = [None, *EXTRA_FRONTENDS] if EXTRA_FRONTENDS else [None, "unset"]
FRONTEND_IDS = [_frontend_id(r) if r != "unset" else "newer-frontend" for r in FRONTENDS]


def _static_root(root: Path, tmp: Path) -> Path:
    """The folder --front-end-root wants (it holds index.html), from any of the forms EMO_FRONTEND_ROOTS takes."""
    if root.is_file() and root.suffix == ".whl":
        with zipfile.ZipFile(root) as wheel:
            wheel.extractall(tmp, [m for m in wheel.namelist() if m.startswith("comfyui_frontend_package/static/")])
        root = tmp
    for candidate in (root, root / "static", root / "comfyui_frontend_package" / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    pytest.fail(f"EMO_FRONTEND_ROOTS names {root}, which holds no frontend (no index.html in it, its static/ or "
                "comfyui_frontend_package/static/)")


def _pinned_frontend() -> str | None:
    """The comfyui-frontend-package version in ComfyUI's requirements.txt, or None."""
    requirements = Path(os.environ.get("COMFYUI_DIR", "")) / "requirements.txt"
    text = requirements.read_text(encoding="utf-8") if requirements.is_file() else ""
    found = re.search(r"^comfyui-frontend-package==([\w.]+)", text, re.M)
    return found.group(1) if found else None

# Where the server looks for each file input's value (the example workflows' model and media names).
FILE_HOMES = {("EMO_ModelLoader", "model_name"): "models/emo", ("VAELoader", "vae_name"): "models/vae",
              ("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
              ("EMO_FaceEmbedderLoader", "model_name"): "models/insightface",
              ("EMO_AudioEncoderLoader", "encoder_name"): "models/audio_encoders",  # a Hugging Face folder
              ("LoadImage", "image"): "input", ("LoadAudio", "audio"): "input", ("LoadVideo", "file"): "input"}

# Frontend 1.27's model-to-node store registers these loaders; if one is not in /object_info (a ComfyUI
# without spandrel has no UpscaleModelLoader), isAssetBrowserEligible throws while the frontend builds the
# combo of *every* VAELoader / CheckpointLoaderSimple node, which then loads as a broken node. A full
# ComfyUI install has them all; where the server lacks one, a placeholder node with that name stands in.
# Likewise a ComfyUI without the comfyui-workflow-templates package gets an empty core template index.
FRONTEND_MODEL_PROVIDERS = {
    "CheckpointLoaderSimple": "ckpt_name", "ImageOnlyCheckpointLoader": "ckpt_name", "LoraLoader": "lora_name",
    "LoraLoaderModelOnly": "lora_name", "VAELoader": "vae_name", "ControlNetLoader": "control_net_name",
    "UNETLoader": "unet_name", "UpscaleModelLoader": "model_name", "StyleModelLoader": "style_model",
    "GLIGENLoader": "gligen_name"}

PLACEHOLDER_PACK = '''"""Stand-ins for what this ComfyUI lacks and its frontend needs (frontend e2e test only)."""
import importlib.util

import nodes
from aiohttp import web
from server import PromptServer

PROVIDERS = %r
NODE_CLASS_MAPPINGS = {}


def _placeholder(name, key):
    def fail(self, **kwargs):
        raise RuntimeError(name + " is a test placeholder: ComfyUI could not load the real node")
    return type(name, (), {"INPUT_TYPES": classmethod(lambda cls: {"required": {key: (["(placeholder)"],)}}),
                           "RETURN_TYPES": (), "FUNCTION": "fail", "OUTPUT_NODE": True,
                           "CATEGORY": "testing", "fail": fail})


for _name, _key in PROVIDERS.items():
    if _name not in nodes.NODE_CLASS_MAPPINGS:
        NODE_CLASS_MAPPINGS[_name] = _placeholder(_name, _key)
USED = sorted(NODE_CLASS_MAPPINGS)

if importlib.util.find_spec("comfyui_workflow_templates") is None:
    # Without the core templates the server has no /templates/index.json; the template browser's store
    # then never counts as loaded and its cards do nothing when clicked. An empty core index stands in.
    @PromptServer.instance.routes.get("/templates/index.json")
    async def _empty_core_templates(request):
        return web.json_response([])
    USED.append("/templates/index.json")


@PromptServer.instance.routes.get("/emo_frontend_e2e/placeholders")
async def _placeholders(request):
    return web.json_response(USED)


@PromptServer.instance.routes.get("/emo_frontend_e2e/routes")
async def _routes(request):
    """The server's own routes (paths, or patterns of paths with variables), its static folders left out."""
    found = []
    for resource in request.app.router.resources():
        info = resource.get_info()
        if "path" in info:
            found.append({"path": info["path"]})
        elif "pattern" in info:
            found.append({"pattern": info["pattern"].pattern})
    return web.json_response(found)


@PromptServer.instance.routes.post("/emo_frontend_e2e/send")
async def _send(request):
    """Broadcast one websocket message, as the server sends them while a prompt runs."""
    message = await request.json()
    PromptServer.instance.send_sync(message["type"], message["data"])
    return web.json_response({})
''' % FRONTEND_MODEL_PROVIDERS

# A returning user's settings: no first-run template browser over the canvas, and the two settings that
# frontend 1.27's default "legacy" navigation mode sets at startup already set (for a new user it sets them
# before they are registered, an uncaught TypeError in the frontend's own startup).
RETURNING_USER = {"Comfy.TutorialCompleted": True, "Comfy.Canvas.LeftMouseClickBehavior": "panning",
                  "Comfy.Canvas.MouseWheelScroll": "zoom"}
# Files a fresh user has not made yet; the frontend asks for them and takes the 404.
ABSENT_USER_FILES = ("/api/userdata", "/user.css", "/favicon.ico")
# The template browser's card thumbnails (example_workflows/<name>.jpg): the pack ships none, and the card
# shows a placeholder icon.
THUMBNAIL = re.compile(rf"/api/workflow_templates/{PACK}/[^/]+\.(jpg|jpeg|png|webp)$")

# What a run sends to our nodes (the ui dicts of nodes/audio.py, nodes/face.py and nodes/loaders.py, the
# sampler's emo.progress), broadcast by the server while each workflow is open: its text must show, fit, and
# stay out of what is saved.
RUN = {
    "EMO_AudioFeatures": {"widget": "emo_audio_info", "type": "executed", "data": {"emo_audio": [
        {"duration": 12.34, "frames": 309, "fps": 25, "clips": 20, "clip_length": 16, "motion_frames": 2,
         "sample_rate": 44100, "channels": 2}]}},
    "EMO_FaceLocator": {"widget": "emo_face_info", "type": "executed", "data": {"emo_face": [
        {"box": [120, 80, 392, 400], "width": 512, "height": 512, "frames": 1, "source": "mediapipe"}]}},
    "EMO_ModelLoader": {"widget": "emo_model_info", "type": "executed", "data": {"emo_model": [
        {"model": "hallo2/net.pth", "family": "hallo2", "clip_length": 16, "motion_frames": 2,
         "motion_pixel_drop": 0.25, "long_video": "motion_frames", "context_overlap": 3, "steps": 40, "cfg": 3.5,
         "fps": 25.0}]}},
    "EMO_Sampler": {"widget": "emo_progress", "type": "emo.progress",
                    "data": {"clip": 2, "clips": 20, "step": 7, "steps": 25}},
}

DRIVER = r"""
const fs = require('fs');
const [url, pack, namesJson, runJson, outFile] = process.argv.slice(2);
const pw = require(require.resolve('playwright-core', {paths: [process.env.EMO_PLAYWRIGHT_DIR]}));
const names = JSON.parse(namesJson);  // {workflow name: [its node ids as strings, sorted]}
const run = JSON.parse(runJson);  // {node type: {widget, type, data}}: what a run sends to our nodes
const shots = process.env.EMO_SCREENSHOTS || '';  // a folder for screenshots of each workflow, or ''

// A run's websocket messages for our nodes, broadcast by the server itself (the placeholder pack's
// /emo_frontend_e2e/send), then each node centred at zoom 1 and its text box measured.
async function showARun(page, name) {
  const targets = await page.evaluate((types) => window.app.graph.nodes.filter((n) => types.includes(n.type))
    .map((n) => ({id: String(n.id), type: n.type, before: [n.size[0], n.size[1]]})), Object.keys(run));
  for (const t of targets) {
    const {type, data} = run[t.type];
    const message = type === 'executed' ? {node: t.id, display_node: t.id, output: data, prompt_id: 'emo-e2e'}
                                        : {...data, node: t.id, prompt_id: 'emo-e2e'};
    const answer = await page.request.post(url + '/emo_frontend_e2e/send', {data: {type, data: message}});
    if (!answer.ok()) throw new Error(`/emo_frontend_e2e/send answered ${answer.status()}`);
  }
  const found = (t) => `window.app.graph.nodes.find((n) => String(n.id) === ${JSON.stringify(t.id)})`;
  await page.waitForFunction((checks) => checks.every((c) => eval(c)), targets.map((t) =>
    `((${found(t)}.widgets || []).find((w) => w.name === ${JSON.stringify(run[t.type].widget)}) || {}).value`),
    {timeout: 20000});
  await page.waitForTimeout(500);  // the resize runs on the next animation frame
  if (shots) await page.screenshot({path: `${shots}/${name}-run.png`});
  for (const t of targets) {
    Object.assign(t, await page.evaluate(([id, widgetName]) => {
      const app = window.app;
      const node = app.graph.nodes.find((n) => String(n.id) === id);
      const after = [node.size[0], node.size[1]];
      app.canvas.ds.scale = 1;
      app.canvas.centerOnNode(node);
      app.canvas.setDirty(true, true);
      const w = node.widgets.find((w) => w.name === widgetName);
      return {after, value: w.value, widgetType: w.type, serialize: w.serialize !== false,
              optionsSerialize: (w.options || {}).serialize !== false, hasElement: !!w.element};
    }, [t.id, run[t.type].widget]));
    await page.waitForTimeout(300);
    t.box = await page.evaluate(([id, widgetName]) => {
      const node = window.app.graph.nodes.find((n) => String(n.id) === id);
      const e = (node.widgets.find((w) => w.name === widgetName) || {}).element;
      if (!e) return null;
      const r = e.getBoundingClientRect();
      const style = getComputedStyle(e);
      return {width: r.width, height: r.height, display: style.display, visibility: style.visibility,
              scrollWidth: e.scrollWidth, clientWidth: e.clientWidth, scrollHeight: e.scrollHeight,
              clientHeight: e.clientHeight};
    }, [t.id, run[t.type].widget]);
  }
  const prompt = await page.evaluate(() => window.app.graphToPrompt());
  return {targets, output: prompt.output, workflow: prompt.workflow};
}

(async () => {
  const browser = await pw.chromium.launch({executablePath: process.env.CHROMIUM, headless: true,
                                            args: ['--no-sandbox', '--disable-gpu']});
  const result = {startup: {logs: []}, workflows: {}};
  let logs = result.startup.logs, step = 'start';
  try {
    const page = await browser.newPage({viewport: {width: 1920, height: 1080}});  // a common desktop window
    const where = (m) => (m.location() && m.location().url) || '';
    page.on('console', (m) => logs.push({kind: m.type(), text: m.text(), url: where(m)}));
    page.on('pageerror', (e) => logs.push({kind: 'pageerror', text: String(e && e.stack || e), url: ''}));
    page.on('response', (r) => {
      if (r.status() >= 400) logs.push({kind: 'http' + r.status(), text: '', url: r.url()});
    });
    page.on('requestfailed', (r) => logs.push({kind: 'requestfailed', text: (r.failure() || {}).errorText,
                                               url: r.url()}));
    step = 'open the page';
    await page.goto(url, {waitUntil: 'load'});
    await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas && window.app.api &&
                               window.app.extensionManager, null, {timeout: 60000});
    await page.waitForTimeout(1000);  // let the startup workflow and the extensions settle
    result.startup.templates = await page.evaluate(() => window.app.api.getWorkflowTemplates());
    result.startup.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null);
    // PrimeVue dialogs in 1.27, reka-ui ones (role="dialog") in newer frontends.
    const DIALOG = '.p-dialog, [role="dialog"]';
    const dialogs = () => page.evaluate(
      (sel) => [...document.querySelectorAll(sel)].map((e) => e.innerText.trim()), DIALOG);
    for (const [name, ids] of Object.entries(names)) {
      logs = [];
      // The template browser: open it, pick this pack's category, click the workflow's card.
      step = `${name}: open the template browser`;
      await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
      await page.getByText(pack, {exact: true}).first().click({timeout: 20000});
      const browserText = (await dialogs()).join('\n');
      step = `${name}: click its card`;
      const [answer] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith(`/workflow_templates/${pack}/${name}.json`), {timeout: 20000}),
        page.getByText(name, {exact: true}).first().click({timeout: 20000})]);
      const json = await answer.json();
      step = `${name}: wait for the graph`;
      await page.waitForFunction((ids) => !document.querySelector('[data-testid^="template-workflow-"]') &&
        JSON.stringify(window.app.graph.nodes.map((n) => String(n.id)).sort()) === JSON.stringify(ids),
        ids, {timeout: 20000});
      await page.waitForTimeout(500);
      if (shots) await page.screenshot({path: `${shots}/${name}.png`});
      step = `${name}: read the graph`;
      const r = await page.evaluate(async (DIALOG) => {
        const app = window.app;
        const text = (sel) => [...document.querySelectorAll(sel)].map((e) => e.innerText.trim()).filter(Boolean);
        const registered = (window.LiteGraph || {}).registered_node_types || {};
        const plain = (v) => (v === undefined ? null : v);
        const nodes = app.graph.nodes.map((n) => ({
          id: String(n.id), type: n.type, registered: !!registered[n.type], comfyClass: plain(n.comfyClass),
          has_errors: !!n.has_errors, mode: n.mode,
          widgets: (n.widgets || []).map((w) => {
            const o = w.options || {};
            const values = typeof o.values === 'function' ? o.values(w, n) : o.values;
            return {name: w.name, type: w.type, value: plain(w.value), serialize: o.serialize !== false,
                    values: Array.isArray(values) ? values : null, min: plain(o.min), max: plain(o.max)};
          }),
        }));
        const prompt = await app.graphToPrompt();
        const ds = app.canvas.ds;
        return {nodes, workflow: prompt.workflow, output: prompt.output,
                dialogs: text(DIALOG), toasts: text('.p-toast-message, [data-sonner-toast]'),
                view: {scale: ds.scale, offset: [ds.offset[0], ds.offset[1]], lowQuality: !!app.canvas.low_quality,
                       minFontSizeForLod: plain(app.canvas.min_font_size_for_lod)}};
      }, DIALOG);
      Object.assign(r, {json, browserText, logs});
      result.workflows[name] = r;
      step = `${name}: show a run's results`;
      r.run = await showARun(page, name);
      await page.keyboard.press('Escape');
    }
    step = 'done';
  } finally {
    result.step = step;
    fs.writeFileSync(outFile, JSON.stringify(result));
    await browser.close();
  }
})().catch((e) => { console.error(e && e.stack || e); process.exit(1); });
"""


def _browser_ready() -> str | None:
    """What is missing to drive Chromium with playwright-core, or None."""
    node = shutil.which("node")
    if node is None:
        return "needs Node.js (node on PATH) to run playwright-core"
    if not PLAYWRIGHT_DIR:
        return ("needs EMO_PLAYWRIGHT_DIR: a folder with playwright-core installed "
                "(mkdir /tmp/pw && cd /tmp/pw && npm i playwright-core)")
    probe = subprocess.run([node, "-e", "require('playwright-core')"], cwd=PLAYWRIGHT_DIR, capture_output=True,
                           text=True, timeout=60)
    if probe.returncode:
        error = next((line for line in probe.stderr.splitlines() if "Error" in line), probe.stderr.strip()[-300:])
        return f"`node -e \"require('playwright-core')\"` fails in EMO_PLAYWRIGHT_DIR={PLAYWRIGHT_DIR}: {error}"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


def _file_values() -> dict[tuple[str, str], set[str]]:
    """Every file name the three workflows use, by (class_type, input)."""
    found: dict[tuple[str, str], set[str]] = {}
    for name in NAMES:
        for node in load_api(name).values():
            for key, value in node["inputs"].items():
                if (node["class_type"], key) in FILE_INPUTS:
                    found.setdefault((node["class_type"], key), set()).add(value)
    return found


MEDIA_SCRIPT = """
import sys, wave, av, numpy as np
from PIL import Image
image, audio, video = sys.argv[1:]
ramp = np.linspace(0, 255, 64, dtype=np.uint8)
frame = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)], -1)
if image != "-":
    Image.fromarray(frame).save(image)
if audio != "-":
    with wave.open(audio, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
        w.writeframes((3000 * np.sin(np.arange(8000) * 2 * np.pi * 220 / 16000)).astype("<i2").tobytes())
if video != "-":
    with av.open(video, "w") as c:
        s = c.add_stream("h264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            for packet in s.encode(av.VideoFrame.from_ndarray(np.roll(frame, 4 * i, 1), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
"""


def _install_named_files(base: Path) -> None:
    """The workflows' model names as empty files (a folder with config.json for the audio encoder), and
    a small image, wav and H.264 video under their input names, so that the server lists each value in its
    combo and the frontend's previews have something to show."""
    media = {"LoadImage": 0, "LoadAudio": 1, "LoadVideo": 2}
    paths = ["-", "-", "-"]
    for (class_type, key), values in _file_values().items():
        home = base / FILE_HOMES[(class_type, key)]
        for value in sorted(values):
            path = home / value
            path.parent.mkdir(parents=True, exist_ok=True)
            if class_type == "EMO_AudioEncoderLoader":
                path.mkdir(exist_ok=True)
                (path / "config.json").write_text("{}")
            elif class_type in media:
                if paths[media[class_type]] == "-":
                    paths[media[class_type]] = str(path)
                else:
                    path.symlink_to(paths[media[class_type]])
            else:
                path.write_bytes(b"")
    comfy_python(MEDIA_SCRIPT, *paths)


@pytest.fixture(scope="module", params=FRONTENDS, ids=FRONTEND_IDS)
def frontend(request, tmp_path_factory):
    """The browser's record of the startup and of each workflow's load (see DRIVER), once for the frontend
    ComfyUI pins and once for each of EMO_FRONTEND_ROOTS."""
    why = [reason for reason in (_comfy_ready(), _browser_ready()) if reason]
    if request.param == "unset":
        why.append(FRONTEND_ROOTS_HELP)
    if why:
        pytest.skip("; ".join(why))
    base = tmp_path_factory.mktemp("comfyui_frontend")
    args = ()
    if request.param is not None:
        args = ("--front-end-root", str(_static_root(request.param, tmp_path_factory.mktemp("frontend_root"))))
    (base / "custom_nodes").mkdir()
    try:
        (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    except OSError:
        shutil.copytree(ROOT, base / "custom_nodes" / PACK,
                        ignore=shutil.ignore_patterns(".git", "__pycache__", "models"))
    (base / "custom_nodes" / "frontend_e2e_placeholders").mkdir()
    (base / "custom_nodes" / "frontend_e2e_placeholders" / "__init__.py").write_text(PLACEHOLDER_PACK)
    (base / "user" / "default").mkdir(parents=True)
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(RETURNING_USER))
    _install_named_files(base)
    with pytest.MonkeyPatch.context() as env:  # the pack needs no MediaPipe models to load
        env.setenv("EMO_MEDIAPIPE_MODELS", os.environ.get("EMO_MEDIAPIPE_MODELS", ""))
        server = Comfy(base, args)
    try:
        server.wait_ready()
        # Endpoints a newer frontend calls and this server lacks answer 404; the pinned one must need none.
        routes = None if request.param is None else server.get("/emo_frontend_e2e/routes")
        script, out = base / "drive.js", base / "frontend.json"
        script.write_text(DRIVER)
        shots = ""  # EMO_SCREENSHOTS=DIR keeps a screenshot of each workflow as it opens and after the run
        if os.environ.get("EMO_SCREENSHOTS"):
            shots = str(Path(os.environ["EMO_SCREENSHOTS"]) / _frontend_id(request.param))
            Path(shots).mkdir(parents=True, exist_ok=True)
        ids = {name: sorted(str(n["id"]) for n in load_ui(name)["nodes"]) for name in NAMES}
        proc = subprocess.run(["node", str(script), server.url, PACK, json.dumps(ids), json.dumps(RUN), str(out)],
                              capture_output=True, text=True, timeout=BROWSER_TIMEOUT,
                              env={**os.environ, "EMO_PLAYWRIGHT_DIR": PLAYWRIGHT_DIR, "CHROMIUM": CHROMIUM,
                                   "EMO_SCREENSHOTS": shots})
        record = json.loads(out.read_text()) if out.is_file() else {"step": "launch the browser", "startup": {}}
        if proc.returncode:
            seen = [*record["startup"].get("logs", []), *(e for w in record.get("workflows", {}).values()
                                                          for e in w["logs"])]
            pytest.fail(f"the browser script failed at '{record['step']}':\n{proc.stderr[-3000:]}\n"
                        f"page errors: {_errors(seen, routes)[:20]}\n{server.tail(2000)}")
        record["pinned"], record["routes"] = request.param is None, routes
        record["object_info"] = server.get("/object_info")
        record["placeholders"] = server.get("/emo_frontend_e2e/placeholders")
        yield record
    finally:
        server.stop()


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[-1].partition("/")[2].partition("?")[0]


def _missing_endpoint(path: str, routes: list[dict] | None) -> bool:
    """Whether `path` is an endpoint of a newer frontend that this server lacks: no route of the server's own
    serves it (routes None: never). Paths of this pack are never one (they are ours to serve)."""
    if routes is None or PACK in path:
        return False
    return not any(path == r["path"] if "path" in r else re.fullmatch(r["pattern"], path) for r in routes)


def _errors(logs: list[dict], routes: list[dict] | None = None) -> list[str]:
    """Console errors, uncaught exceptions and failed requests, but for the frontend's calls to the
    internet (release notes: this machine may be offline), its look-ups of a new user's files and of card
    thumbnails. With the server's `routes` (a frontend newer than the one ComfyUI pins), also but for its
    calls to endpoints this server lacks and the frontend bundle's own reports of those 404s."""
    bad, missing = [], False
    for entry in logs:
        if entry["kind"] not in ("error", "pageerror", "requestfailed") and not entry["kind"].startswith("http"):
            continue
        url = entry["url"]
        if url.startswith("http") and not url.startswith(("http://127.0.0.1", "http://localhost")):
            continue
        path = _path(url)
        not_found = entry["kind"] in ("http404", "requestfailed") or "status of 404" in entry["text"]
        if not_found and (path.startswith(ABSENT_USER_FILES) or THUMBNAIL.match(path)):
            continue
        if not_found and _missing_endpoint(path, routes):
            missing = True
            continue
        if entry["kind"] == "requestfailed" and entry["text"] == "net::ERR_ABORTED":
            continue  # a fetch the page cancelled itself (it navigated, or replaced the workflow)
        bad.append((entry, f"{entry['kind']} {url} {entry['text'][:1500]}"))
    if missing:  # e.g. "[Jobs API] Error fetching jobs: JobsApiError: Failed to fetch jobs: 404" from its bundle
        bad = [(e, text) for e, text in bad if not (e["kind"] == "error" and _path(e["url"]).startswith("/assets/")
                                                    and "404" in e["text"] and "EMO" not in e["text"])]
    return [text for _, text in bad]


def _notices(logs: list[dict]) -> list[str]:
    """Console lines, of any level, that our pack causes and must not: an import of a frontend module that is
    not public API, a websocket message type the frontend does not handle (ours: emo.progress)."""
    return [f"{e['kind']} {e['url']} {e['text'][:500]}" for e in logs
            if "not part of the public API" in e["text"] or "Unknown message type" in e["text"]]


def _widgets(record: dict, name: str) -> dict[str, dict]:
    """The frontend's nodes by id as a string (numbers in frontend 1.27, strings in newer graphs)."""
    return {str(n["id"]): n for n in record["workflows"][name]["nodes"]}


def _ui_nodes(name: str) -> dict[str, dict]:
    return {str(n["id"]): n for n in load_ui(name)["nodes"]}


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_the_page_starts_cleanly_and_lists_the_templates(frontend):
    print(f"\nfrontend {frontend['startup']['frontend']}; stand-ins for what this ComfyUI lacks: "
          f"{frontend['placeholders'] or 'none'}")
    logs = frontend["startup"]["logs"]
    assert not _errors(logs, frontend["routes"]), _errors(logs, frontend["routes"])
    assert not _notices(logs), _notices(logs)
    assert sorted(frontend["startup"]["templates"].get(PACK, [])) == sorted(NAMES), frontend["startup"]["templates"]
    pinned = _pinned_frontend()
    if frontend["pinned"] and pinned:
        assert frontend["startup"]["frontend"] == pinned, (
            f"ComfyUI pins frontend {pinned} but serves {frontend['startup']['frontend']}: "
            f"pip install -r {COMFYUI_DIR}/requirements.txt into {COMFYUI_PYTHON}'s environment")


def test_the_template_browser_shows_and_serves_the_workflow(frontend, name):
    record = frontend["workflows"][name]
    assert PACK in record["browserText"] and name in record["browserText"].splitlines(), record["browserText"]
    assert record["json"] == load_ui(name)  # what the card's click fetched


def test_the_workflow_loads_without_errors(frontend, name):
    record = frontend["workflows"][name]
    assert not record["dialogs"], f"{name}: dialogs after loading: {record['dialogs']}"
    assert not record["toasts"], f"{name}: toasts after loading: {record['toasts']}"
    assert not _errors(record["logs"], frontend["routes"]), f"{name}: {_errors(record['logs'], frontend['routes'])}"
    assert not _notices(record["logs"]), f"{name}: {_notices(record['logs'])}"
    ui = _ui_nodes(name)
    nodes = _widgets(frontend, name)
    assert sorted(nodes) == sorted(ui), f"{name}: the frontend's graph holds nodes {sorted(nodes)}"
    for node_id, node in nodes.items():
        where = f"{name}: node {node_id} ({node['type']})"
        assert node["type"] == ui[node_id]["type"] and node["registered"], f"{where} is not a known node type"
        assert not node["has_errors"] and node["mode"] == 0, where
        if node["type"] in frontend["object_info"]:
            assert node["comfyClass"] == node["type"], f"{where} has no server class ({node['comfyClass']})"


def test_every_widget_value_lands_on_its_widget(frontend, name):
    ui = _ui_nodes(name)
    saved = {str(n["id"]): n for n in frontend["workflows"][name]["workflow"]["nodes"]}
    for node_id, node in _widgets(frontend, name).items():
        where = f"{name}: node {node_id} ({node['type']})"
        # A load followed by a save gives the file's widgets_values back: no value was moved or replaced.
        saved_values, values = saved[node_id].get("widgets_values"), ui[node_id]["widgets_values"]
        if not frontend["pinned"]:
            # Newer frontends leave out an empty widgets_values and have other frontend-only widgets (LoadAudio's
            # audioUI is gone in 1.58), which the files hold as null; our values must all come back in order.
            saved_values = [v for v in saved_values or [] if v is not None]
            values = [v for v in values if v is not None]
        assert saved_values == values, where
        schema = frontend["object_info"].get(node["type"])
        for i, widget in enumerate(node["widgets"]):
            value, label = widget["value"], f"{where}.{widget['name']} = {widget['value']!r}"
            if widget["values"] is not None:
                assert value in widget["values"], f"{label}: not one of {widget['values'][:20]}"
            if widget["type"] == "number":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), label
                assert (widget["min"] is None or value >= widget["min"]) and \
                       (widget["max"] is None or value <= widget["max"]), f"{label}: out of range"
            if widget["name"] == "control_after_generate":
                # It follows the seed widget it controls and holds the value written after the seed: "fixed"
                # in the examples, so that a second Queue sends the same seed (the API twin's) again.
                seed = node["widgets"][i - 1]
                assert i > 0 and seed["type"] == "number" and schema, label
                spec = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
                assert spec[seed["name"]][1].get("control_after_generate"), f"{label} after {seed['name']}"
                values = ui[node_id]["widgets_values"]
                assert values[i - 1] == seed["value"] and values[i] == value == "fixed", label


def test_graph_to_prompt_is_the_api_twin(frontend, name):
    got, want = frontend["workflows"][name]["output"], load_api(name)
    assert sorted(got, key=int) == sorted(want, key=int), f"{name}: prompt node ids {sorted(got, key=int)}"
    ui_only = []
    for node_id, expected in want.items():
        node = got[node_id]
        where = f"{name}: node {node_id} ({expected['class_type']})"
        assert node.get("class_type") == expected["class_type"], f"{where}: the frontend sent {node}"
        # The title is ours (the workflow's); newer frontends add fields of their own to _meta.
        assert (node.get("_meta") or {}).get("title") == expected["_meta"]["title"], f"{where}: {node.get('_meta')}"
        if frontend["pinned"]:
            assert node.get("_meta") == expected["_meta"], f"{where}: _meta {node.get('_meta')}"
        schema = frontend["object_info"][expected["class_type"]]["input"]
        known = {**schema.get("required", {}), **schema.get("optional", {})}
        inputs = {}
        for key, value in node["inputs"].items():
            if key in known:
                inputs[key] = value
            else:  # a frontend-only widget; the server skips inputs outside the schema
                assert value in ("", None), f"{where}: frontend-only input {key} = {value!r}"
                ui_only.append(f"{expected['class_type']}.{key}")
        assert inputs == expected["inputs"], (f"{where}:\n  frontend {json.dumps(inputs, sort_keys=True)}\n"
                                              f"  API twin {json.dumps(expected['inputs'], sort_keys=True)}")
        for key, value in inputs.items():  # links as [id string, slot int], not just equal numbers
            if isinstance(value, list):
                assert isinstance(value[0], str) and type(value[1]) is int, f"{where}.{key} = {value!r}"
    print(f"\n{name}: {len(got)} nodes match the API twin; frontend-only inputs left out: {sorted(set(ui_only))}")


def _expected_text(node_type: str) -> list[str]:
    """Parts the node's text must hold, read from the message RUN sends (formats: web/emo_format.js)."""
    data = RUN[node_type]["data"]
    if node_type == "EMO_Sampler":
        return [f"clip {data['clip']} of {data['clips']}", f"step {data['step']}/{data['steps']}"]
    if node_type == "EMO_AudioFeatures":
        (info,) = data["emo_audio"]
        return [f"{info['duration']:.2f} s", f"{info['frames']} frames", f"{info['clips']} clips"]
    if node_type == "EMO_ModelLoader":
        (info,) = data["emo_model"]
        return ["Hallo2", f"clips of {info['clip_length']}", f"{info['motion_pixel_drop'] * 100:g}% motion pixels",
                f"{info['steps']} steps, CFG {info['cfg']:g}, {info['fps']:g} fps"]
    (info,) = data["emo_face"]
    return ["face box " + ",".join(map(str, info["box"][:2])), f"image {info['width']}\u00d7{info['height']}"]


def test_a_runs_results_show_on_our_nodes(frontend, name):
    """The audio and face info after `executed` and the sampler's clip after `emo.progress`, sent over the real
    websocket: shown in full (the text box is not cut), the node never shrunk, nothing saved or sent."""
    record = frontend["workflows"][name]
    run = record["run"]
    assert {t["type"] for t in run["targets"]} == {n["type"] for n in load_ui(name)["nodes"]} & set(RUN)
    for t in run["targets"]:
        where = f"{name}: node {t['id']} ({t['type']})"
        for part in _expected_text(t["type"]):
            assert part in t["value"], f"{where} shows {t['value']!r}, without {part!r}"
        assert not t["serialize"] and not t["optionsSerialize"], f"{where}: the text widget would be saved"
        assert t["after"][0] >= t["before"][0] - 0.5 and t["after"][1] >= t["before"][1] - 0.5, (
            f"{where} shrank from {t['before']} to {t['after']}")
        box = t["box"]
        assert t["hasElement"] and box, f"{where}: no text box element"
        assert box["display"] != "none" and box["visibility"] != "hidden" and box["width"] > 0, f"{where}: {box}"
        assert box["scrollWidth"] <= box["clientWidth"] + 1 and box["scrollHeight"] <= box["clientHeight"] + 1, (
            f"{where}: the text is cut ({box})")
    # Display only: the prompt and the saved widgets_values are what they were before the run.
    assert run["output"] == record["output"], f"{name}: the prompt changed after the run"
    saved = {str(n["id"]): n.get("widgets_values") for n in run["workflow"]["nodes"]}
    assert saved == {str(n["id"]): n.get("widgets_values") for n in record["workflow"]["nodes"]}
    print(f"\n{name}: " + "; ".join(f"{t['type']} {t['before'][0]:.0f}x{t['before'][1]:.0f} -> "
                                    f"{t['after'][0]:.0f}x{t['after'][1]:.0f} {t['value']!r}" for t in run["targets"]))


def test_the_workflow_opens_readable(frontend, name):
    """At the zoom it opens with in a 1920x1080 window (1.27: the file's extra.ds; newer frontends fit a
    template to the window) the canvas draws nodes in full, not as the text-less shapes of its low-quality mode."""
    view = frontend["workflows"][name]["view"]
    assert not view["lowQuality"], (f"{name} opens at zoom {view['scale']:.2f}, below the frontend's "
                                    f"level of detail (min font {view['minFontSizeForLod']} px): lay it out smaller")

"""The example workflows (UI format for the template browser, API twins for batch users) against the node
schemas: known node types, real input names, link types, widget values, the API twin, the cached reference
branch. No ComfyUI needed; tests/test_comfyui_e2e.py loads and runs them in a real server."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from conftest import ROOT, load_pack

pack = load_pack()
OURS = pack.NODE_CLASS_MAPPINGS
WORKFLOWS = ROOT / "example_workflows"
NAMES = ("emo_portrait_audio", "emo_sd15_portrait", "emo_speed_from_video", "emo_echomimic", "emo_hallo2",
         "emo_any_photo")
# The checkpoint each workflow names, the audio encoder that family takes, and the family the loader is set to.
MODELS = {"emo_portrait_audio": ("net.pth", "wav2vec2-base-960h", "auto"),
          "emo_sd15_portrait": ("net.pth", "wav2vec2-base-960h", "auto"),
          "emo_speed_from_video": ("emo.safetensors", "wav2vec2-base-960h", "auto"),
          "emo_echomimic": ("echomimic/denoising_unet.pth", "whisper_tiny.pt", "auto"),
          "emo_hallo2": ("hallo2/net.pth", "wav2vec2-base-960h", "hallo2"),
          "emo_any_photo": ("net.pth", "wav2vec2-base-960h", "auto")}
STREAMED = {"emo_hallo2", "emo_any_photo"}  # the workflows that write with EMO Save Video (Streaming)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # frontend notes: never sent to the server, no API twin
# Inputs that name files: their values depend on what a user has installed, so they are not checked here.
FILE_INPUTS = {("EMO_ModelLoader", "model_name"), ("EMO_AudioEncoderLoader", "encoder_name"),
               ("EMO_FaceEmbedderLoader", "model_name"), ("VAELoader", "vae_name"),
               ("CheckpointLoaderSimple", "ckpt_name"), ("LoadImage", "image"), ("LoadAudio", "audio"),
               ("LoadVideo", "file")}
# Nodes whose output changes with the audio: none may feed the portrait branch.
AUDIO_SOURCES = {"LoadAudio", "LoadVideo", "GetVideoComponents", "EMO_AudioEncoderLoader", "EMO_AudioFeatures"}
REFERENCE_BRANCH = ("EMO_ReferenceEncode", "EMO_FaceLocator")
CONTROL = object()  # the frontend's control_after_generate value after a seed widget


@dataclass(frozen=True)
class Schema:
    """A node's inputs in declaration order (name -> type; COMBO for a list), its output types, and how the
    frontend lays out widgets_values: one value per widget input, plus one after every
    control_after_generate input, plus `ui_extra` trailing values of upload widgets."""
    inputs: dict
    outputs: tuple
    optional: frozenset = frozenset()
    control: frozenset = frozenset()
    ui_extra: int = 0
    options: dict = field(default_factory=dict)

    @property
    def widgets(self) -> list[str]:
        return [n for n, t in self.inputs.items() if t in WIDGET_TYPES]

    def ui_widget_count(self) -> int:
        return len(self.widgets) + len(self.control) + self.ui_extra

    def required_sockets(self) -> list[str]:
        return [n for n, t in self.inputs.items() if t not in WIDGET_TYPES and n not in self.optional]


def core(inputs, outputs, optional=(), control=(), ui_extra=0):
    return Schema(dict(inputs), tuple(outputs), frozenset(optional), frozenset(control), ui_extra)


# The core nodes the workflows use, read from ComfyUI 0.3.64 (commit a125cd84, see ../shared/COMFYUI.md):
# nodes.py (LoadImage, ImageScale, VAELoader, CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage,
# KSampler, VAEDecode, PreviewImage), comfy_extras/nodes_audio.py (LoadAudio), nodes_video.py (LoadVideo,
# GetVideoComponents, CreateVideo, SaveVideo), nodes_preview_any.py (PreviewAny). Upload widgets add values
# after the file name in the UI format: LoadImage/LoadVideo "image" (the upload button), LoadAudio two
# (upload button and player). test_comfyui_e2e.py checks this table against a live server's /object_info.
CORE = {
    "LoadImage": core({"image": "COMBO"}, ("IMAGE", "MASK"), ui_extra=1),
    "LoadAudio": core({"audio": "COMBO"}, ("AUDIO",), ui_extra=2),
    "LoadVideo": core({"file": "COMBO"}, ("VIDEO",), ui_extra=1),
    "GetVideoComponents": core({"video": "VIDEO"}, ("IMAGE", "AUDIO", "FLOAT")),
    "ImageScale": core({"image": "IMAGE", "upscale_method": "COMBO", "width": "INT", "height": "INT",
                        "crop": "COMBO"}, ("IMAGE",)),
    "VAELoader": core({"vae_name": "COMBO"}, ("VAE",)),
    "CheckpointLoaderSimple": core({"ckpt_name": "COMBO"}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": core({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": core({"width": "INT", "height": "INT", "batch_size": "INT"}, ("LATENT",)),
    "KSampler": core({"model": "MODEL", "seed": "INT", "steps": "INT", "cfg": "FLOAT", "sampler_name": "COMBO",
                      "scheduler": "COMBO", "positive": "CONDITIONING", "negative": "CONDITIONING",
                      "latent_image": "LATENT", "denoise": "FLOAT"}, ("LATENT",), control=("seed",)),
    "VAEDecode": core({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "PreviewImage": core({"images": "IMAGE"}, ()),
    "PreviewAny": core({"source": "*"}, ()),
    "CreateVideo": core({"images": "IMAGE", "fps": "FLOAT", "audio": "AUDIO"}, ("VIDEO",), optional=("audio",)),
    "SaveVideo": core({"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO", "codec": "COMBO"}, ()),
}


def our_schema(cls) -> Schema:
    spec = cls.INPUT_TYPES()
    inputs, optional, control, options = {}, set(), set(), {}
    for section in ("required", "optional"):
        for name, (kind, *rest) in spec.get(section, {}).items():
            opts = rest[0] if rest else {}
            inputs[name] = "COMBO" if isinstance(kind, (list, tuple)) else kind
            options[name] = list(kind) if isinstance(kind, (list, tuple)) else opts
            if section == "optional":
                optional.add(name)
            if opts.get("control_after_generate"):
                control.add(name)
    return Schema(inputs, tuple(cls.RETURN_TYPES), frozenset(optional), frozenset(control), 0, options)


SCHEMAS = {**CORE, **{name: our_schema(cls) for name, cls in OURS.items()}}


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.api.json").read_text(encoding="utf-8"))


def graph_nodes(ui: dict) -> list[dict]:
    return [n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY]


def ui_widget_values(node: dict) -> dict:
    """widgets_values by widget name, skipping control_after_generate and upload-widget values."""
    schema = SCHEMAS[node["type"]]
    values, out = list(node["widgets_values"]), {}
    for name in schema.widgets:
        out[name] = values.pop(0)
        if name in schema.control:
            values.pop(0)
    return out


def ui_to_api(ui: dict) -> dict:
    """The API prompt the frontend sends for this UI workflow (what 'Export (API)' writes, without _meta)."""
    links = {row[0]: row for row in ui["links"]}
    prompt = {}
    for node in graph_nodes(ui):
        inputs = dict(ui_widget_values(node))
        for entry in node["inputs"]:
            if entry.get("link") is not None:
                _, src, slot, *_ = links[entry["link"]]
                inputs[entry["name"]] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def api_ancestors(api: dict, node_id: str) -> set[str]:
    seen, todo = set(), [node_id]
    while todo:
        for value in api[todo.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


def test_the_folder_holds_the_ui_workflows_with_api_twins():
    ui = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    api = sorted(p.name.removesuffix(".api.json") for p in (WORKFLOWS / "api").glob("*.json"))
    assert ui == api == sorted(NAMES)


def test_ui_workflow_is_the_frontend_format(name):
    ui = load_ui(name)
    assert ui["version"] == 0.4 and isinstance(ui["groups"], list) and isinstance(ui["extra"], dict)
    ids = [n["id"] for n in ui["nodes"]]
    assert len(ids) == len(set(ids)) and ui["last_node_id"] >= max(ids)
    assert ui["last_link_id"] >= max(row[0] for row in ui["links"])
    for node in ui["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(node), node["id"]
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed"
    for note in (n for n in ui["nodes"] if n["type"] in FRONTEND_ONLY):
        assert not note["inputs"] and not note["outputs"] and len(note["widgets_values"]) == 1


# LiteGraph draws a node's title bar above its pos (LiteGraph.NODE_TITLE_HEIGHT) and a group's title bar at the
# top of its bounding box, font_size * 1.4 high (LGraphGroup; font_size 24 unless the group sets one).
NODE_TITLE_HEIGHT = 30


def _overlap(a, b) -> bool:
    """Whether two [x, y, width, height] rectangles share an area (touching edges do not)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(inner, outer) -> bool:
    return (outer[0] <= inner[0] and inner[0] + inner[2] <= outer[0] + outer[2]
            and outer[1] <= inner[1] and inner[1] + inner[3] <= outer[1] + outer[3])


def _node_box(node) -> list[float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return [x, y - NODE_TITLE_HEIGHT, w, h + NODE_TITLE_HEIGHT]


def test_layout_groups_apart_titles_visible_nodes_within_groups(name):
    """The layout reads well: no two groups overlap, no node covers a group's title, and each node lies
    wholly inside a group or wholly outside it (none straddles a group's edge)."""
    ui = load_ui(name)
    groups = ui["groups"]
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not _overlap(a["bounding"], b["bounding"]), (
                f"{name}: groups {a['title']!r} {a['bounding']} and {b['title']!r} {b['bounding']} overlap")
    for group in groups:
        x, y, w, _ = group["bounding"]
        title_bar = [x, y, w, group.get("font_size", 24) * 1.4]
        for node in ui["nodes"]:
            box, where = _node_box(node), f"{name}: node {node['id']} ({node['type']}) at {node['pos']}"
            assert not _overlap(box, title_bar), f"{where} covers the title of group {group['title']!r}"
            assert _inside(box, group["bounding"]) or not _overlap(box, group["bounding"]), (
                f"{where} straddles the edge of group {group['title']!r} {group['bounding']}")


def test_every_node_is_ours_or_a_known_core_node(name):
    for node in graph_nodes(load_ui(name)):
        assert node["type"] in SCHEMAS, f"{name}: node {node['id']} has unknown type {node['type']}"
    for node_id, node in load_api(name).items():
        assert node["class_type"] in SCHEMAS, f"{name}.api: node {node_id} has unknown type {node['class_type']}"


def test_ui_inputs_and_outputs_follow_the_schemas(name):
    for node in graph_nodes(load_ui(name)):
        schema = SCHEMAS[node["type"]]
        where = f"{name}: node {node['id']} ({node['type']})"
        for entry in node["inputs"]:
            assert entry["name"] in schema.inputs, f"{where} has no input {entry['name']}"
            kind = schema.inputs[entry["name"]]
            assert entry["type"] == kind, f"{where}.{entry['name']}: type {entry['type']}, schema {kind}"
            assert ("widget" in entry) == (kind in WIDGET_TYPES), f"{where}.{entry['name']}: widget flag"
        names = [e["name"] for e in node["inputs"]]
        assert len(names) == len(set(names)), f"{where} lists an input twice"
        assert [o["type"] for o in node["outputs"]] == list(schema.outputs), f"{where} outputs"


def test_ui_widget_values_fit_the_widgets(name):
    for node in graph_nodes(load_ui(name)):
        schema = SCHEMAS[node["type"]]
        where = f"{name}: node {node['id']} ({node['type']})"
        assert len(node["widgets_values"]) == schema.ui_widget_count(), \
            f"{where}: {len(node['widgets_values'])} widget values for widgets {schema.widgets}"
        layout = [slot for w in schema.widgets for slot in ([w, CONTROL] if w in schema.control else [w])]
        for slot, value in zip(layout, node["widgets_values"]):
            if slot is CONTROL:
                assert value in ("fixed", "increment", "decrement", "randomize"), f"{where}: {value!r}"
        if node["type"] not in OURS:
            continue
        for key, value in ui_widget_values(node).items():
            opts = schema.options[key]
            if (node["type"], key) in FILE_INPUTS:
                assert isinstance(value, str) and value, where
            elif isinstance(opts, list):
                assert value in opts, f"{where}.{key} = {value!r} is not one of {opts}"
            elif schema.inputs[key] == "STRING":
                assert isinstance(value, str) and value, f"{where}.{key} = {value!r}"
            else:
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{where}.{key} = {value}"
                assert isinstance(value, (int, float)) and (schema.inputs[key] != "INT" or isinstance(value, int))


def test_ui_links_join_matching_slots(name):
    ui = load_ui(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    seen_in, seen_out = set(), set()
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        out, entry = nodes[src]["outputs"][slot], nodes[dst]["inputs"][dst_slot]
        where = f"{name}: link {link_id} {nodes[src]['type']}[{slot}] -> {nodes[dst]['type']}.{entry['name']}"
        assert kind == out["type"] == SCHEMAS[nodes[src]["type"]].outputs[slot], where
        assert entry["type"] in (kind, "*"), f"{where}: {kind} into {entry['type']}"
        assert entry["link"] == link_id and link_id in out["links"], where
        seen_in.add(link_id)
        seen_out.add(link_id)
    node_links_in = {e["link"] for n in ui["nodes"] for e in n["inputs"] if e.get("link") is not None}
    node_links_out = {i for n in ui["nodes"] for o in n["outputs"] for i in (o.get("links") or [])}
    assert node_links_in == seen_in and node_links_out == seen_out, f"{name}: dangling link ids on nodes"


def test_required_inputs_are_connected_or_set(name):
    for node in graph_nodes(load_ui(name)):
        linked = {e["name"] for e in node["inputs"] if e.get("link") is not None}
        missing = set(SCHEMAS[node["type"]].required_sockets()) - linked
        assert not missing, f"{name}: node {node['id']} ({node['type']}) misses {sorted(missing)}"
    for node_id, node in load_api(name).items():
        schema = SCHEMAS[node["class_type"]]
        required = [n for n in schema.inputs if n not in schema.optional]
        missing = set(required) - set(node["inputs"])
        assert not missing, f"{name}.api: node {node_id} ({node['class_type']}) misses {sorted(missing)}"
        unknown = set(node["inputs"]) - set(schema.inputs)
        assert not unknown, f"{name}.api: node {node_id} ({node['class_type']}) has unknown inputs {unknown}"


def test_api_twin_is_the_ui_workflow(name):
    api = load_api(name)
    expected = ui_to_api(load_ui(name))
    assert {k: v["class_type"] for k, v in api.items()} == {k: v["class_type"] for k, v in expected.items()}
    for node_id, node in api.items():
        assert node["inputs"] == expected[node_id]["inputs"], f"{name}: node {node_id} ({node['class_type']})"
        assert node["_meta"]["title"]


def test_api_links_point_at_existing_outputs_of_the_right_type(name):
    api = load_api(name)
    for node_id, node in api.items():
        for input_name, value in node["inputs"].items():
            if not isinstance(value, list):
                continue
            src, slot = value
            where = f"{name}.api: {node_id}.{input_name} <- {src}[{slot}]"
            assert src in api, f"{where}: no such node"
            outputs = SCHEMAS[api[src]["class_type"]].outputs
            assert 0 <= slot < len(outputs), f"{where}: {api[src]['class_type']} has {len(outputs)} outputs"
            wanted = SCHEMAS[node["class_type"]].inputs[input_name]
            assert wanted in (outputs[slot], "*"), f"{where}: {outputs[slot]} into {wanted}"


def test_the_portrait_branch_has_no_audio_ancestor(name):
    # ComfyUI caches a node by its inputs' signature: the ReferenceNet encoding and the face region are
    # reused when only the audio changes, as long as nothing upstream of them depends on the audio.
    api = load_api(name)
    for node_id, node in api.items():
        if node["class_type"] in REFERENCE_BRANCH:
            audio = {i for i in api_ancestors(api, node_id) if api[i]["class_type"] in AUDIO_SOURCES}
            assert not audio, f"{name}: {node['class_type']} {node_id} depends on audio nodes {sorted(audio)}"
    assert {n["class_type"] for n in api.values()} >= set(REFERENCE_BRANCH)


def test_the_video_gets_the_frame_rate_and_audio_of_the_features(name):
    api = load_api(name)
    (video,) = [n for n in api.values() if n["class_type"] in ("CreateVideo", "EMO_SaveVideo")]
    (features_id,) = [i for i, n in api.items() if n["class_type"] == "EMO_AudioFeatures"]
    assert video["inputs"]["fps"] == [features_id, 2]
    assert video["inputs"]["audio"] == api[features_id]["inputs"]["audio"]
    if video["class_type"] == "CreateVideo":  # VAE Decode -> Create Video, or the streaming saver decodes
        decode = api[video["inputs"]["images"][0]]
        assert decode["class_type"] == "VAEDecode"
    else:
        decode = video
    (sampler_id,) = [i for i, n in api.items() if n["class_type"] == "EMO_Sampler"]
    assert decode["inputs"]["latent" if decode is video else "samples"] == [sampler_id, 0]
    if MODELS[name][1] != "whisper_tiny.pt":  # Hallo re-encodes motion frames with it; EchoMimic has none
        assert api[sampler_id]["inputs"]["vae"] == decode["inputs"]["vae"]


def test_sampling_settings_follow_the_loaded_family(name):
    (sampler,) = [n["inputs"] for n in load_api(name).values() if n["class_type"] == "EMO_Sampler"]
    (features,) = [n["inputs"] for n in load_api(name).values() if n["class_type"] == "EMO_AudioFeatures"]
    assert (sampler["steps"], sampler["cfg"], features["fps"]) == (0, -1.0, 0.0)


def test_default_model_files(name):
    api = load_api(name)
    by_type = {n["class_type"]: n["inputs"] for n in api.values()}
    model, encoder, family = MODELS[name]
    assert by_type["EMO_ModelLoader"]["model_name"] == model
    assert by_type["EMO_ModelLoader"]["family"] == family
    assert by_type["EMO_AudioEncoderLoader"]["encoder_name"] == encoder
    if "VAELoader" in by_type:
        assert by_type["VAELoader"]["vae_name"] == "sd-vae-ft-mse.safetensors"


def test_sd15_portrait_feeds_the_generated_image_and_the_checkpoint_vae():
    api = load_api("emo_sd15_portrait")
    (ckpt,) = [i for i, n in api.items() if n["class_type"] == "CheckpointLoaderSimple"]
    assert not any(n["class_type"] == "VAELoader" for n in api.values())
    for node in api.values():
        if node["class_type"] in REFERENCE_BRANCH:
            image = api[node["inputs"]["image"][0]]
            assert image["class_type"] == "VAEDecode" and image["inputs"]["vae"] == [ckpt, 2]
            assert api[image["inputs"]["samples"][0]]["class_type"] == "KSampler"
        if node["class_type"] == "EMO_ReferenceEncode":
            assert node["inputs"]["vae"] == [ckpt, 2]
    (latent,) = [n for n in api.values() if n["class_type"] == "EmptyLatentImage"]
    assert (latent["inputs"]["width"], latent["inputs"]["height"]) == (512, 512)


def test_speed_from_video_drives_the_sampler():
    api = load_api("emo_speed_from_video")
    (speed_id,) = [i for i, n in api.items() if n["class_type"] == "EMO_SpeedFromVideo"]
    (sampler,) = [n for n in api.values() if n["class_type"] == "EMO_Sampler"]
    assert sampler["inputs"]["speed"] == [speed_id, 0]
    components = api[speed_id]["inputs"]["images"][0]
    assert api[components]["class_type"] == "GetVideoComponents"
    assert api[speed_id]["inputs"]["fps"] == [components, 2]
    assert api[api[components]["inputs"]["video"][0]]["class_type"] == "LoadVideo"


def test_portrait_audio_api_fits_the_batch_client():
    from emo_core.batch.workflow import bind, check_reference_branch

    api = load_api("emo_portrait_audio")
    kinds = [n["class_type"] for n in api.values()]
    for kind in ("LoadImage", "LoadAudio", "EMO_Sampler", "SaveVideo", "EMO_SpeedConstant"):
        assert kinds.count(kind) == 1, kind
    (speed_id,) = [i for i, n in api.items() if n["class_type"] == "EMO_SpeedConstant"]
    (sampler,) = [n for n in api.values() if n["class_type"] == "EMO_Sampler"]
    assert sampler["inputs"]["speed"] == [speed_id, 0]
    binding = bind(api)
    assert not binding.problems, binding.problems
    assert check_reference_branch(api, binding).ok


def test_every_api_twin_binds_the_batch_clients_fields(name):
    from emo_core.batch.workflow import REQUIRED, bind, check_reference_branch

    api = load_api(name)
    binding = bind(api)
    painted = not any(n["class_type"] == "LoadImage" for n in api.values())  # the SD 1.5 one paints its portrait
    binding.require([f for f in REQUIRED + ("seed", "steps") if not (painted and f == "portrait")])
    assert painted or check_reference_branch(api, binding).ok
    saver = api[binding["output"].node]["class_type"]
    assert saver == ("EMO_SaveVideo" if name in STREAMED else "SaveVideo")  # long audio, full-size photos: streamed


def test_echomimic_workflow_has_no_identity_or_speed_nodes():
    kinds = {n["class_type"] for n in load_api("emo_echomimic").values()}
    assert not kinds & {"EMO_FaceEmbedderLoader", "EMO_SpeedConstant", "EMO_SpeedFromVideo"}


def test_every_workflow_has_a_template_browser_thumbnail(name):
    from PIL import Image

    with Image.open(WORKFLOWS / f"{name}.jpg") as image:
        assert image.format == "JPEG" and image.width == image.height >= 256


def test_any_photo_crops_the_loaded_photo_and_the_saver_pastes_it_back():
    """emo_any_photo: Load Image -> EMO Face Crop (no resize: any size) -> EMO Reference Encode and EMO Face
    Locator; the crop's handle goes to EMO Save Video (Streaming), which writes the photo's size; the square is
    the model's frame size and placed by the loaded family (expand_ratio 0 with the model connected)."""
    api = load_api("emo_any_photo")
    (crop_id,) = [i for i, n in api.items() if n["class_type"] == "EMO_FaceCrop"]
    crop = api[crop_id]["inputs"]
    assert api[crop["image"][0]]["class_type"] == "LoadImage"
    assert crop["expand_ratio"] == 0 and api[crop["emo_model"][0]]["class_type"] == "EMO_ModelLoader"
    assert crop["size"] == 512 and "face_mask" not in crop  # Load Image's MASK is 64x64 zeros without alpha
    for node in api.values():
        if node["class_type"] in REFERENCE_BRANCH:
            assert node["inputs"]["image"] == [crop_id, 0]
    (saver,) = [n for n in api.values() if n["class_type"] == "EMO_SaveVideo"]
    assert saver["inputs"]["crop"] == [crop_id, 1]
    assert not any(n["class_type"] in ("ImageScale", "VAEDecode", "EMO_PasteBack") for n in api.values())

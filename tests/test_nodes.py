"""The node classes without ComfyUI: real ComfyUI-format tensors through the whole chain (tiny models)
down to a LATENT of exactly the audio's frame count, plus readable errors and the node schemas."""
from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch

from comfy_fakes import LowVramComfy, ManagedVAE, TinyVAE, load_audio, load_image, tiny_onnx_embedder
from conftest import (load_pack, mediapipe_models_or_skip, parity_dir, shared_file, tiny_emo_config,
                      tiny_emo_config_for_fixture_audio, write_parity_checkpoint)

pack = load_pack()
N = pack.NODE_CLASS_MAPPINGS
errors = pack.emo_core.errors


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, parity):
    """A models folder: a tiny native EMO net, the fixture set's Hallo net and its tiny wav2vec2 (the
    `parity` fixture skips, saying why, when the fixture set is missing)."""
    from emo_core.checkpoint import save_native
    from emo_core.network import EmoNet

    root = tmp_path_factory.mktemp("models")
    (root / "emo").mkdir()
    torch.manual_seed(0)
    save_native(EmoNet(tiny_emo_config_for_fixture_audio(clip_length=4, motion_frames=2)).eval(),
                str(root / "emo" / "tiny_emo.safetensors"))
    write_parity_checkpoint(root / "emo" / "hallo_tiny.safetensors", parity[2])
    shutil.copytree(parity_dir() / "wav2vec2", root / "audio_encoders" / "wav2vec2-tiny")
    return root


@pytest.fixture
def env(models_dir, monkeypatch):
    monkeypatch.setenv("EMO_MODELS_DIR", str(models_dir))
    mediapipe_models_or_skip()
    return models_dir


def loaded(model_name, precision="auto"):
    (model,) = run("EMO_ModelLoader", model_name=model_name, precision=precision)
    return model


def two_clips_seconds(model_name, fps=25.0):
    """Audio length that makes exactly two clips of the model at `fps`, whatever its clip length."""
    return (2 * loaded(model_name, "fp32").config.clip_length - 1) / fps


def run(node_id, **kwargs):
    node = N[node_id]()
    out = getattr(node, node.FUNCTION)(**kwargs)
    return out["result"] if isinstance(out, dict) else out


def chain(model_name, seconds=0.7, size=128, steps=2, vae=None, **sampler_kwargs):
    model = loaded(model_name)
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    vae = vae or TinyVAE()
    portrait = load_image("portrait_astronaut_512.png", size)
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=vae, image=portrait)
    audio = load_audio("speech_en_44k_stereo.wav", seconds)
    feats, frames, fps = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder, audio=audio, fps=25.0)
    region, mask = run("EMO_FaceLocator", emo_model=model, image=portrait, expand_ratio=1.2)
    (latent,) = run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region,
                    seed=1, steps=steps, cfg=3.5, sampler_name="ddim", vae=vae, **sampler_kwargs)
    return latent, frames, fps, mask, vae


def test_emo_chain_gives_a_latent_of_exactly_the_audio_frame_count(env):
    (speed,) = run("EMO_SpeedConstant", speed=0.8)
    latent, frames, fps, mask, vae = chain("tiny_emo.safetensors", speed=speed)
    assert frames == math.ceil(0.7 * 25) and fps == 25.0
    assert latent["samples"].shape == (frames, 4, 16, 16)
    assert torch.isfinite(latent["samples"]).all()
    assert mask.shape == (1, 128, 128) and 0 < mask.mean() < 0.6
    images = vae.decode(latent["samples"])  # what ComfyUI's VAEDecode hands to CreateVideo
    assert images.shape == (frames, 128, 128, 3)


def test_hallo_chain_re_encodes_motion_frames_through_the_vae(env):
    config = loaded("hallo_tiny.safetensors").config
    f, n = config.clip_length, config.motion_frames
    latent, frames, _, _, vae = chain("hallo_tiny.safetensors", seconds=two_clips_seconds("hallo_tiny.safetensors"),
                                      size=64)
    assert latent["samples"].shape == (frames, 4, 8, 8)
    clips = math.ceil(frames / f)
    assert clips == 2
    # 1 reference encode + n re-encoded motion frames per later clip
    assert vae.encoded == 1 + n * (clips - 1)


def test_audio_node_reports_duration_frames_and_clips(env):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    out = N["EMO_AudioFeatures"]().extract(model, encoder, load_audio("speech_en_16k_mono.wav", 1.0), 25.0)
    info = out["ui"]["emo_audio"][0]
    assert info == {"duration": 1.0, "frames": 25, "fps": 25.0, "clips": 7, "clip_length": 4,
                    "motion_frames": 2, "sample_rate": 16000, "channels": 1}
    assert out["result"][1] == 25


def test_face_locator_preview_and_user_mask(env):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    portrait = load_image("portrait_astronaut_512.png")
    out = N["EMO_FaceLocator"]().locate(model, portrait, 1.2)
    x0, y0, x1, y1 = out["ui"]["emo_face"][0]["box"]
    assert 100 < x0 < 200 and 300 < x1 < 420 and 90 < y0 < 200 and 300 < y1 < 420
    preview = out["ui"]["images"][0]
    assert (pack.nodes.comfy_services.temp_directory() / preview["filename"]).is_file()
    drawn = torch.zeros(1, 512, 512)
    drawn[0, 100:200, 300:400] = 1
    noface = load_image("noface_coffee_512.png")
    region, mask = N["EMO_FaceLocator"]().locate(model, noface, 1.0, face_mask=drawn)["result"]
    assert region.region.box == (300, 100, 400, 200) and torch.equal(mask[0], drawn[0])


def test_no_face_is_one_readable_sentence(env):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    with pytest.raises(errors.EmoError, match="no face") as err:
        N["EMO_FaceLocator"]().locate(model, load_image("noface_coffee_512.png"), 1.2)
    assert "mask" in str(err.value)


def test_missing_model_names_the_file_and_folder(env):
    with pytest.raises(errors.MissingWeightsError, match="net.pth.*emo"):
        run("EMO_ModelLoader", model_name="net.pth", precision="auto")


def test_wrong_checkpoint_family_is_explained(env, models_dir):
    shutil.copy(models_dir / "audio_encoders" / "wav2vec2-tiny" / "model.safetensors",
                models_dir / "emo" / "not_emo.safetensors")
    try:
        with pytest.raises(errors.IncompatibleCheckpointError, match="wav2vec2"):
            run("EMO_ModelLoader", model_name="not_emo.safetensors", precision="auto")
    finally:
        (models_dir / "emo" / "not_emo.safetensors").unlink()


def test_loader_lists_only_model_files(env, models_dir):
    (models_dir / "emo" / "notes.txt").write_text("not a model")
    names = N["EMO_ModelLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["hallo_tiny.safetensors", "tiny_emo.safetensors"]
    encoders = N["EMO_AudioEncoderLoader"].INPUT_TYPES()["required"]["encoder_name"][0]
    assert encoders == ["wav2vec2-tiny", "wav2vec2-tiny/model.safetensors"]


def test_mismatched_face_region_and_reference_sizes(env):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=TinyVAE(),
                       image=load_image("portrait_astronaut_512.png", 128))
    region, _ = run("EMO_FaceLocator", emo_model=model, image=load_image("portrait_astronaut_512.png", 256),
                    expand_ratio=1.2)
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    feats, _, _ = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder,
                      audio=load_audio("speech_en_16k_mono.wav", 0.3), fps=25.0)
    with pytest.raises(errors.InvalidInputError, match="same portrait"):
        run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region,
            seed=0, steps=1, cfg=3.5, sampler_name="ddim")


def test_odd_image_size_and_bad_keyframes(env):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    with pytest.raises(errors.InvalidInputError, match="multiples of 8"):
        run("EMO_ReferenceEncode", emo_model=model, vae=TinyVAE(), image=torch.rand(1, 100, 100, 3))
    assert "keyframe" in N["EMO_SpeedKeyframes"].VALIDATE_INPUTS("0:0.2, x")
    assert N["EMO_SpeedKeyframes"].VALIDATE_INPUTS("0:0.2, 10:1") is True


def test_speed_schedules_per_frame():
    (k,) = run("EMO_SpeedKeyframes", keyframes="0:0, 10:1")
    speeds = k.per_frame(12, 25.0)
    assert speeds[0] == 0 and speeds[10] == 1 and speeds[11] == 1 and abs(speeds[5] - 0.5) < 1e-9
    measured = pack.nodes.handles.SpeedSchedule("measured", (torch.arange(10, dtype=torch.float64), 50.0))
    assert measured.per_frame(5, 25.0).tolist() == [0, 2, 4, 6, 8]  # a 50 fps video sampled at 25 fps


def test_default_speed_keyframes_work_for_audio_shorter_than_their_last_keyframe(env, caplog):
    """The keyframe node's default reaches past short audio: the sampler runs, the speed is the start of
    the full schedule, and a log line says the schedule was cut."""
    default = N["EMO_SpeedKeyframes"].INPUT_TYPES()["required"]["keyframes"][1]["default"]
    last = max(f for f, _ in pack.emo_core.speed.parse_keyframes(default))
    (speed,) = run("EMO_SpeedKeyframes", keyframes=default)
    with caplog.at_level(logging.INFO):
        latent, frames, fps, _, _ = chain("tiny_emo.safetensors", seconds=0.3, size=64, steps=1, speed=speed)
    assert frames <= last, "the audio must end before the default's last keyframe"
    assert latent["samples"].shape[0] == frames
    assert torch.equal(speed.per_frame(frames, fps), speed.per_frame(last + 1, fps)[:frames])
    assert f"lie past the video's last frame {frames - 1}" in caplog.text


def test_features_and_speed_that_do_not_fit_the_video_are_refused(env):
    """Features made with another model (other clip settings), features shorter than the video's clips,
    and a driving video shorter than the audio: one sentence naming the lengths and what to do."""
    import dataclasses

    from emo_core.checkpoint import save_native
    from emo_core.network import EmoNet

    (emo,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    longer = dataclasses.replace(emo.config, clip_length=emo.config.clip_length + 2)
    save_native(EmoNet(longer).eval(), str(env / "emo" / "tiny_emo_longer_clips.safetensors"))
    (other_model,) = run("EMO_ModelLoader", model_name="tiny_emo_longer_clips.safetensors", precision="fp32")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    portrait = load_image("portrait_astronaut_512.png", 64)
    (reference,) = run("EMO_ReferenceEncode", emo_model=emo, vae=TinyVAE(), image=portrait)
    region, _ = run("EMO_FaceLocator", emo_model=emo, image=portrait, expand_ratio=1.2)
    audio = load_audio("speech_en_16k_mono.wav", 0.5)
    sample = dict(emo_model=emo, reference=reference, face_region=region, seed=0, steps=1, cfg=3.5,
                  sampler_name="ddim")
    other, _, _ = run("EMO_AudioFeatures", emo_model=other_model, audio_encoder=encoder, audio=audio, fps=25.0)
    with pytest.raises(errors.InvalidInputError, match="re-run EMO Audio Features with the same EMO Model Loader"):
        run("EMO_Sampler", audio_features=other, **sample)

    feats, frames, fps = run("EMO_AudioFeatures", emo_model=emo, audio_encoder=encoder, audio=audio, fps=25.0)
    clip = emo.config.clip_length
    needed = math.ceil(frames / clip) * clip
    cut = dataclasses.replace(feats, features=dataclasses.replace(feats.features,
                                                                  hidden=feats.features.hidden[:needed - 1]))
    with pytest.raises(errors.InvalidInputError, match=f"cover {needed - 1} frames but the video needs {needed}"):
        run("EMO_Sampler", audio_features=cut, **sample)

    driving = pack.nodes.handles.SpeedSchedule("measured", (torch.full((frames - 1,), 0.5, dtype=torch.float64), fps))
    with pytest.raises(errors.InvalidInputError, match=f"{frames - 1} frames at .* but the audio lasts .*{frames} "
                                                       "frames.*driving video at least as long"):
        run("EMO_Sampler", audio_features=feats, speed=driving, **sample)


def test_reference_is_accepted_across_loads_of_the_same_weights_only(env, models_dir):
    """ComfyUI may run the loader again and keep the cached reference: a second load of the file, or of a
    copy, samples with it; a model file of the same architecture with other weights is refused."""
    from emo_core.checkpoint import save_native
    from emo_core.network import EmoNet

    folder = models_dir / "emo"
    shutil.copy(folder / "tiny_emo.safetensors", folder / "tiny_emo_copy.safetensors")
    first = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")[0]
    torch.manual_seed(1)
    save_native(EmoNet(first.config).eval(), str(folder / "tiny_emo_other.safetensors"))
    try:
        (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
        portrait = load_image("portrait_astronaut_512.png", 64)
        (reference,) = run("EMO_ReferenceEncode", emo_model=first, vae=TinyVAE(), image=portrait)
        region, _ = run("EMO_FaceLocator", emo_model=first, image=portrait, expand_ratio=1.2)
        feats, frames, _ = run("EMO_AudioFeatures", emo_model=first, audio_encoder=encoder,
                               audio=load_audio("speech_en_16k_mono.wav", 0.2), fps=25.0)
        sample = dict(reference=reference, audio_features=feats, face_region=region, seed=0, steps=1, cfg=3.5,
                      sampler_name="ddim")
        for name in ("tiny_emo.safetensors", "tiny_emo_copy.safetensors"):
            (again,) = run("EMO_ModelLoader", model_name=name, precision="fp32")
            assert again is not first
            (latent,) = run("EMO_Sampler", emo_model=again, **sample)
            assert latent["samples"].shape[0] == frames
        (other,) = run("EMO_ModelLoader", model_name="tiny_emo_other.safetensors", precision="fp32")
        with pytest.raises(errors.InvalidInputError, match="encoded with another EMO model"):
            run("EMO_Sampler", emo_model=other, **sample)
    finally:
        for name in ("tiny_emo_copy.safetensors", "tiny_emo_other.safetensors"):
            (folder / name).unlink()


# -- schemas ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node_id", sorted(N))
def test_schema(node_id, env):
    cls = N[node_id]
    assert node_id.startswith("EMO_") and cls.CATEGORY.startswith("EMO/")
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("EMO ")
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            assert len(entry) == 2 and entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            kind, opts = entry
            if kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name} default out of range"
            if isinstance(kind, list):
                assert kind and all(isinstance(v, str) for v in kind)
                assert opts.get("default", kind[0]) in kind


def test_speed_from_a_driving_video_recovers_a_known_head_roll(env):
    """Portrait frames rolled 2 degrees more each frame at 25 fps: 50 deg/s = 0.87 rad/s."""
    from PIL import Image

    import numpy as np
    base = Image.open(shared_file("fixtures", "portrait_astronaut_512.png")).convert("RGB")
    frames = [np.asarray(base.rotate(2.0 * i, resample=Image.BICUBIC, center=(260, 250))) for i in range(10)]
    images = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)
    schedule, mean = run("EMO_SpeedFromVideo", images=images, fps=25.0, smoothing=3)
    expected = math.radians(2.0) * 25
    assert abs(mean - expected) < 0.2 * expected, (mean, expected)
    still, still_mean = run("EMO_SpeedFromVideo", images=images[:1].expand(6, -1, -1, -1), fps=25.0, smoothing=3)
    assert still_mean < 0.05
    assert schedule.per_frame(20, 50.0).shape == (20,)


def test_face_embedder_loader_lists_both_insightface_folders(env, models_dir, tmp_path):
    """models/insightface/... (shared with other packs) and models/emo/insightface/ both appear and load."""
    for folder in ("insightface/models/buffalo_l", "emo/insightface"):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        tiny_onnx_embedder(models_dir / folder / "w600k_r50.onnx")
    names = N["EMO_FaceEmbedderLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["models/buffalo_l/w600k_r50.onnx", "w600k_r50.onnx"]
    for name in names:
        (handle,) = run("EMO_FaceEmbedderLoader", model_name=name)
        image = load_image("portrait_astronaut_512.png")
        assert handle.embedder.embed(image, landmark_dirs=handle.landmark_dirs).shape == (1, 512)


def test_models_go_through_comfyui_model_management(env, monkeypatch):
    """With ComfyUI present, both models are wrapped in ModelPatchers and loaded by load_models_gpu before
    use. Stand-ins record the calls and, like ComfyUI, set `device` on the managed model (a read-only
    property on transformers' models, hence the holder module)."""
    import sys
    import types

    loaded = []

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device = model, load_device

    def load_models_gpu(patchers, force_full_load=False):
        for p in patchers:
            p.model.to(p.load_device)
            p.model.device = p.load_device
            loaded.append((type(p.model.inner).__name__, force_full_load))

    mm = types.SimpleNamespace(get_torch_device=lambda: torch.device("cpu"),
                               unet_offload_device=lambda: torch.device("cpu"),
                               unet_dtype=lambda device, supported_dtypes: torch.float32,
                               load_models_gpu=load_models_gpu, throw_exception_if_processing_interrupted=lambda: None)
    for name, module in {"comfy": types.ModuleType("comfy"), "comfy.model_management": mm,
                         "comfy.model_patcher": types.SimpleNamespace(ModelPatcher=ModelPatcher)}.items():
        monkeypatch.setitem(sys.modules, name, module)
    latent, frames, _, _, _ = chain("tiny_emo.safetensors", seconds=0.3, size=64, steps=1)
    assert latent["samples"].shape[0] == frames
    assert ("Wav2Vec2Model", True) in loaded and ("EmoNet", True) in loaded


def test_low_vram_the_network_is_reloaded_after_the_vae_between_clips(env, monkeypatch):
    """Hallo re-encodes motion frames through the VAE between clips; on a device with room for one model
    ComfyUI unloads the EMO network to load the VAE. The next clip must put the network back first, and
    the video is the same as with room for everything."""
    seconds = two_clips_seconds("hallo_tiny.safetensors")
    roomy, frames, *_ = chain("hallo_tiny.safetensors", seconds=seconds, size=64, steps=1)
    comfy = LowVramComfy()
    comfy.install(monkeypatch)
    latent, *_ = chain("hallo_tiny.safetensors", seconds=seconds, size=64, steps=1, vae=ManagedVAE(comfy))
    net = next(p.model.inner for p in comfy.loaded if p.name() == "EmoNet")
    clips = math.ceil(frames / net.config.clip_length)
    assert clips >= 2, "the audio must span two clips for the VAE to run between them"
    sampling = comfy.events[comfy.events.index(("load", "Wav2Vec2Model")) + 1:]
    assert sampling.count(("unload", "EmoNet")) == clips - 1  # the VAE pushed it out before every later clip
    assert torch.equal(latent["samples"], roomy["samples"])


# -- long videos: per-clip audio windows, fail-early memory checks ----------------------------------
def sampler_inputs(seconds=0.7, size=64):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    portrait = load_image("portrait_astronaut_512.png", size)
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=TinyVAE(), image=portrait)
    feats, _, _ = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder,
                      audio=load_audio("speech_en_44k_stereo.wav", seconds), fps=25.0)
    region, _ = run("EMO_FaceLocator", emo_model=model, image=portrait, expand_ratio=1.2)
    return dict(emo_model=model, reference=reference, audio_features=feats, face_region=region, seed=1, steps=1,
                cfg=3.5, sampler_name="ddim")


def test_sampler_node_cuts_audio_windows_per_clip(env, monkeypatch):
    """The node never materialises the whole video's windowed audio (5x the features), one clip at a time."""
    inputs = sampler_inputs()
    feats = inputs["audio_features"].features
    cut = []
    windowed = type(feats).windowed
    monkeypatch.setattr(type(feats), "windowed", lambda self, start=0, stop=None: (
        cut.append((stop or self.padded_frames) - start), windowed(self, start, stop))[1])
    (latent,) = run("EMO_Sampler", **inputs)
    clip = inputs["emo_model"].config.clip_length
    assert latent["samples"].shape[0] == feats.num_frames
    assert len(cut) == math.ceil(feats.num_frames / clip) and max(cut) <= clip < feats.padded_frames


def test_sampler_fails_early_when_decoding_every_frame_would_not_fit(env, monkeypatch):
    """With a VAE Decode after the sampler, the decoded frames count; with EMO Save Video they do not."""
    inputs = sampler_inputs(seconds=1.0)
    feats = inputs["audio_features"].features
    h, w = inputs["reference"].latent.shape[-2:]
    every_frame = feats.num_frames * (4 * h * w + 8 * h * 8 * w * 3) * 4  # latents + float32 IMAGE
    one_chunk = sum(pack.emo_core.memory.sampling_bytes(feats.num_frames, (h, w), "streaming").values())
    assert one_chunk < every_frame
    monkeypatch.delenv("EMO_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(pack.emo_core.memory, "available_host_bytes", lambda: (every_frame + one_chunk) // 2)
    sampled = []
    monkeypatch.setattr(pack.nodes.sampler, "generate", lambda *a, **k: sampled.append(1))

    def graph(consumer):
        return {"7": {"class_type": "EMO_Sampler", "inputs": {}},
                "8": {"class_type": consumer, "inputs": {"samples" if consumer == "VAEDecode" else "latent": ["7", 0]}}}

    with pytest.raises(errors.InsufficientMemoryError, match=r"VAE Decode.*EMO Save Video \(Streaming\)"):
        run("EMO_Sampler", **inputs, prompt=graph("VAEDecode"), unique_id="7")
    assert sampled == []  # failed before any sampling
    run("EMO_Sampler", **inputs, prompt=graph("EMO_SaveVideo"), unique_id="7")
    assert sampled == [1]


def test_audio_node_fails_early_when_the_features_would_not_fit(env, monkeypatch):
    (model,) = run("EMO_ModelLoader", model_name="tiny_emo.safetensors", precision="fp32")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-tiny")
    monkeypatch.delenv("EMO_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(pack.emo_core.memory, "available_host_bytes", lambda: 1024)
    with pytest.raises(errors.InsufficientMemoryError, match=r"1 s of audio \(25 frames at 25 fps\).*split"):
        run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder,
            audio=load_audio("speech_en_16k_mono.wav", 1.0), fps=25.0)

"""EchoMimic v1 through the nodes without ComfyUI: its merged checkpoint and whisper_tiny.pt from the models
folders, a portrait with a drawn face mask, real speech, down to a LATENT of exactly the audio's frame count;
features made for another family are refused at the sampler with one sentence; steps 0, cfg -1 and fps 0 take
the loaded family's defaults (the acc weights' 6 steps without CFG)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from comfy_fakes import TinyVAE, load_audio, load_image
from conftest import echomimic_file, load_pack, parity_dir, write_parity_checkpoint

pack = load_pack()
N = pack.NODE_CLASS_MAPPINGS
errors = pack.emo_core.errors


def run(node_id, **kwargs):
    node = N[node_id]()
    out = getattr(node, node.FUNCTION)(**kwargs)
    return out["result"] if isinstance(out, dict) else out


@pytest.fixture(scope="module")
def models(tmp_path_factory, parity):
    root = tmp_path_factory.mktemp("models")
    (root / "emo").mkdir()
    (root / "audio_encoders").mkdir()
    shutil.copy(echomimic_file("net.safetensors"), root / "emo" / "echomimic_tiny.safetensors")
    shutil.copy(echomimic_file("net.safetensors"), root / "emo" / "echomimic_tiny_acc.safetensors")
    shutil.copy(echomimic_file("whisper_tiny.pt"), root / "audio_encoders" / "whisper_tiny.pt")
    write_parity_checkpoint(root / "emo" / "hallo_tiny.safetensors", parity[2])
    shutil.copytree(parity_dir() / "wav2vec2", root / "audio_encoders" / "wav2vec2-tiny")
    return root


@pytest.fixture
def env(models, monkeypatch):
    monkeypatch.setenv("EMO_MODELS_DIR", str(models))
    return models


def _inputs(model, encoder_name, seconds, fps, size=64):
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name=encoder_name)
    vae = TinyVAE()
    portrait = load_image("portrait_astronaut_512.png", size)
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=vae, image=portrait)
    feats, frames, fps = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder,
                             audio=load_audio("speech_en_16k_mono.wav", seconds), fps=fps)
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    region, _ = run("EMO_FaceLocator", emo_model=model, image=portrait, expand_ratio=1.2, face_mask=mask)
    return reference, feats, frames, region, vae


def test_echomimic_chain_gives_every_frame_in_context_windows(env):
    (model,) = run("EMO_ModelLoader", model_name="echomimic_tiny.safetensors", precision="fp32")
    cfg = model.config
    assert cfg.family == "echomimic" and cfg.long_video == "context_windows"
    fps = cfg.default_fps
    seconds = (2 * cfg.clip_length + 1) / fps  # more frames than two windows: overlap and wrap-around run
    reference, feats, frames, region, vae = _inputs(model, "whisper_tiny.pt", seconds, fps)
    assert frames == math.ceil(int(16000 * seconds) / 16000 * fps)  # load_audio keeps int(rate x seconds)
    (latent,) = run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region,
                    seed=1, steps=2, cfg=cfg.guidance_scale, sampler_name="ddim", vae=vae)
    assert latent["samples"].shape == (frames, 4, 8, 8) and torch.isfinite(latent["samples"]).all()


def test_features_of_another_family_are_refused_at_the_sampler(env):
    (echo,) = run("EMO_ModelLoader", model_name="echomimic_tiny.safetensors", precision="fp32")
    (hallo,) = run("EMO_ModelLoader", model_name="hallo_tiny.safetensors", precision="fp32")
    reference, whisper_feats, _, region, _ = _inputs(echo, "whisper_tiny.pt", 0.6, 24.0)
    h_reference, wav2vec_feats, _, h_region, _ = _inputs(hallo, "wav2vec2-tiny", 0.6, 25.0)
    with pytest.raises(errors.InvalidInputError, match="made by wav2vec2 but this echomimic model takes whisper"):
        run("EMO_Sampler", emo_model=echo, reference=reference, audio_features=wav2vec_feats, face_region=region,
            seed=1, steps=1, cfg=2.5, sampler_name="ddim")
    with pytest.raises(errors.InvalidInputError, match="made by whisper but this hallo model takes wav2vec2"):
        run("EMO_Sampler", emo_model=hallo, reference=h_reference, audio_features=whisper_feats,
            face_region=h_region, seed=1, steps=1, cfg=3.5, sampler_name="ddim")



@pytest.mark.parametrize("name", ["echomimic_tiny.safetensors", "echomimic_tiny_acc.safetensors", "hallo_tiny.safetensors"])
def test_zero_steps_negative_cfg_and_zero_fps_follow_the_loaded_family(env, name, monkeypatch):
    out = N["EMO_ModelLoader"]().load(model_name=name, precision="fp32")
    (model,), info = out["result"], out["ui"]["emo_model"][0]
    cfg = model.config
    assert (info["steps"], info["cfg"], info["fps"]) == (cfg.default_steps, cfg.guidance_scale, cfg.default_fps)
    if name.endswith("_acc.safetensors"):
        assert (cfg.default_steps, cfg.guidance_scale) == (6, 1.0)
    encoder = "whisper_tiny.pt" if cfg.family == "echomimic" else "wav2vec2-tiny"
    seconds = (cfg.clip_length + 1) / cfg.default_fps
    reference, feats, frames, region, _ = _inputs(model, encoder, seconds, 0.0)
    explicit = _inputs(model, encoder, seconds, cfg.default_fps)
    assert frames == explicit[2] == math.ceil(int(16000 * seconds) / 16000 * cfg.default_fps)
    assert torch.equal(feats.features.windowed(0, frames), explicit[1].features.windowed(0, frames))

    calls = []  # the settings the sampler node hands to emo_core's generate
    monkeypatch.setattr(pack.nodes.sampler, "generate", lambda net, video, settings, **kw: (
        calls.append(settings), torch.zeros(video.num_frames, *video.reference.shape))[1])
    for steps, guidance, want in ((0, -1.0, (cfg.default_steps, cfg.guidance_scale)), (7, -1.0, (7, cfg.guidance_scale)),
                                  (0, 0.5, (cfg.default_steps, 0.5)), (9, 4.0, (9, 4.0))):
        run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region,
            seed=3, steps=steps, cfg=guidance, sampler_name="ddim")
        assert (calls[-1].steps, calls[-1].guidance_scale) == want


def test_the_loaders_compile_option_compiles_the_unet(env):
    from emo_core.compile import is_compiled

    (plain,) = run("EMO_ModelLoader", model_name="hallo_tiny.safetensors", precision="fp32")
    (compiled,) = run("EMO_ModelLoader", model_name="hallo_tiny.safetensors", precision="fp32", compile="default")
    assert not is_compiled(plain.net) and is_compiled(compiled.net)
    spec = N["EMO_ModelLoader"].INPUT_TYPES()["optional"]["compile"]
    assert spec[1]["default"] == "off" and "off" in spec[0]

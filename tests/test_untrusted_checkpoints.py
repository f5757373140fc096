"""Untrusted checkpoint files: pickles with code, pickle files on torch < 2.6, other kinds of model files."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from emo_core import pickle_safety
from emo_core.checkpoint import load_network, read_state_dict
from emo_core.convert import main as convert_main
from emo_core.errors import IncompatibleCheckpointError, MissingWeightsError
from emo_core.wav2vec import load_wav2vec

from conftest import SHARED, parity_dir

ECHOMIMIC = SHARED / "parity" / "echomimic-tiny"


class RunsCode:
    """A pickle payload that creates a marker file when unpickled (what a hostile .pth does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_with_one_sentence_of_ours(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"denoising_unet.x": RunsCode(marker)}, path)
    assert not marker.exists()
    with pytest.raises(IncompatibleCheckpointError) as err:
        read_state_dict(str(path))
    text = str(err.value)
    assert not marker.exists(), "unpickling ran the file's code"
    # torch's own text advises weights_only=False (running the code): it must not reach the user.
    assert "weights_only" not in text and "evil.pth" in text and ".safetensors" in text
    assert text.count(". ") == 0 and "\n" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_pickle_files_are_refused_on_torch_before_2_6(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"net{suffix}"
    torch.save({"reference_unet.w": torch.zeros(2)}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on torch < 2.6"))
    with pytest.raises(IncompatibleCheckpointError) as err:
        load_network(str(path))
    text = str(err.value)
    assert "2.5.1" in text and "CVE-2025-32434" in text and ".safetensors" in text
    assert "python -m emo_core.convert" in text


@pytest.mark.parametrize("version, allowed", [("2.1.0", False), ("2.5.1+cpu", False), ("2.6.0", True),
                                              ("2.13.0+cpu", True), ("3.0.0a0", True)])
def test_torch_version_gate(monkeypatch, version, allowed):
    monkeypatch.setattr(torch, "__version__", version)
    assert (pickle_safety.torch_version() >= pickle_safety.SAFE_PICKLE_TORCH) is allowed


def test_safetensors_still_load_on_old_torch(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    save_file({"reference_unet.w": torch.ones(2)}, str(path))
    monkeypatch.setattr(torch, "__version__", "2.1.2")
    state, _ = read_state_dict(str(path))
    assert torch.equal(state["reference_unet.w"], torch.ones(2))


def test_a_wav2vec_folder_with_pickle_weights_is_refused_on_old_torch(tmp_path, monkeypatch, parity):
    folder = tmp_path / "wav2vec2"
    folder.mkdir()
    src = parity_dir() / "wav2vec2"
    shutil.copy(src / "config.json", folder)
    torch.save(read_state_dict(str(src / "model.safetensors"))[0], folder / "pytorch_model.bin")  # the old HF layout
    assert load_wav2vec(str(folder)) is not None  # torch >= 2.6: loads (weights_only)
    monkeypatch.setattr(torch, "__version__", "2.4.0")
    with pytest.raises(IncompatibleCheckpointError, match=r"pytorch_model\.bin.*CVE-2025-32434"):
        load_wav2vec(str(folder))


def test_convert_writes_safetensors_that_load_the_same(tmp_path, monkeypatch):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "b": base.t(), "c": base[1]}  # shared and strided storage
    src = tmp_path / "net.pth"
    torch.save(state, src)
    assert convert_main([str(src)]) == 0
    out, _ = read_state_dict(str(tmp_path / "net.safetensors"))
    assert set(out) == set(state) and all(torch.equal(out[k], state[k]) for k in state)
    assert convert_main([str(src)]) == 2  # never overwrites
    monkeypatch.setattr(torch, "__version__", "2.5.0")
    assert convert_main([str(src), str(tmp_path / "other.safetensors")]) == 2
    assert not (tmp_path / "other.safetensors").exists()


# -- other kinds of model files say what they look like ------------------------------------------------
def _diffusers_vae() -> dict:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2).state_dict()


def _diffusers_unet() -> dict:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).state_dict()


def _wav2vec2() -> dict:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         conv_dim=(8, 8), conv_kernel=(3, 3), conv_stride=(2, 2), num_conv_pos_embeddings=4,
                         num_conv_pos_embedding_groups=2)
    return Wav2Vec2Model(cfg).state_dict()


def _motion_adapter() -> dict:
    from diffusers import MotionAdapter

    return MotionAdapter(block_out_channels=(8, 8), motion_layers_per_block=1, motion_num_attention_heads=2,
                         motion_norm_num_groups=4, motion_max_seq_length=8).state_dict()


# Key names of files in ldm layout (SD 1.5 single-file checkpoints, vae-ft-mse-840000-ema-pruned, AnimateDiff's
# mm_sd_v15.ckpt) as those files name them.
LDM_VAE = ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.0.conv1.weight",
           "encoder.down.0.downsample.conv.weight", "encoder.mid.attn_1.q.weight", "encoder.conv_out.weight",
           "decoder.conv_in.weight", "decoder.up.0.block.0.conv1.weight", "decoder.up.3.upsample.conv.weight",
           "decoder.mid.attn_1.proj_out.weight", "quant_conv.weight", "post_quant_conv.weight"]
LDM_SD = (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
           "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
          + ["first_stage_model." + k for k in LDM_VAE])
MM_SD_V15 = ["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight",
             "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight",
             "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0."
             "pos_encoder.pe", "up_blocks.3.motion_modules.2.temporal_transformer.proj_out.weight"]


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


KINDS = [
    ("sd_ldm", lambda: dict.fromkeys(LDM_SD), "Stable Diffusion checkpoint"),
    ("vae_ldm", lambda: dict.fromkeys(LDM_VAE), "a VAE"),
    ("vae_diffusers", _diffusers_vae, "a VAE"),
    ("vae_diffusers_prefixed", lambda: _prefixed(_diffusers_vae(), "vae."), "a VAE"),
    ("wav2vec2_hf", _wav2vec2, "wav2vec2"),
    ("wav2vec2_prefixed", lambda: _prefixed(_wav2vec2(), "wav2vec2."), "wav2vec2"),
    ("motion_mm_sd_v15", lambda: dict.fromkeys(MM_SD_V15), "AnimateDiff motion module"),
    ("motion_diffusers", _motion_adapter, "AnimateDiff motion module"),
    ("unet_diffusers", _diffusers_unet, "bare UNet"),
]


@pytest.mark.parametrize("kind, build, says", KINDS, ids=[k[0] for k in KINDS])
def test_another_kind_of_model_file_is_named(tmp_path, kind, build, says):
    state = {k: (v if isinstance(v, torch.Tensor) else torch.zeros(1)).contiguous() for k, v in build().items()}
    path = tmp_path / f"{kind}.safetensors"
    save_file(state, str(path))
    with pytest.raises(IncompatibleCheckpointError, match=says) as err:
        load_network(str(path))
    assert "unrecognised" not in str(err.value)


@pytest.mark.parametrize("name", ["reference_unet.pth", "denoising_unet.pth", "motion_module.pth"])
def test_a_lone_echomimic_part_names_the_files_it_needs(tmp_path, name):
    """One of EchoMimic's four files is read with its siblings; alone, the error names the missing ones."""
    src = ECHOMIMIC / name
    if not src.is_file():
        pytest.skip(f"EchoMimic tiny fixture {src} not found (it ships with ../shared/parity)")
    shutil.copy(src, tmp_path / name)
    others = [p for p in ("reference_unet.pth", "motion_module.pth", "denoising_unet.pth", "face_locator.pth")
              if p != name]
    with pytest.raises(MissingWeightsError, match="lacks " + ", ".join(o.replace(".", r"\.") for o in others)):
        load_network(str(tmp_path / name))


@pytest.mark.parametrize("name, says", [("reference_unet.pth", "bare UNet"), ("denoising_unet.pth", "bare UNet"),
                                        ("motion_module.pth", "AnimateDiff motion module")])
def test_a_renamed_echomimic_part_is_named_by_its_keys(tmp_path, name, says):
    src = ECHOMIMIC / name
    if not src.is_file():
        pytest.skip(f"EchoMimic tiny fixture {src} not found (it ships with ../shared/parity)")
    shutil.copy(src, tmp_path / f"my_{name}")
    with pytest.raises(IncompatibleCheckpointError, match=says):
        load_network(str(tmp_path / f"my_{name}"))


def test_unknown_keys_are_still_shown(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"something.else": torch.zeros(1)}, str(path))
    with pytest.raises(IncompatibleCheckpointError, match=r"unrecognised keys such as \['something.else'\]"):
        load_network(str(path))
    assert os.path.exists(path)

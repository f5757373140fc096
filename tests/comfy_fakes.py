"""ComfyUI-format values for node tests without ComfyUI: IMAGE/AUDIO tensors from the shared fixtures, a
VAE object with ComfyUI's encode/decode API around a tiny random diffusers AutoencoderKL, stand-ins for
ComfyUI's model management on a device with room for one model, and a stand-in for ComfyUI's folder_paths."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile

from conftest import shared_file


def load_image(name: str, size: int | None = None) -> torch.Tensor:
    """IMAGE [1, H, W, 3] float32 0..1, as LoadImage gives it."""
    img = Image.open(shared_file("fixtures", name)).convert("RGB")
    if size:
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


def load_audio(name: str, seconds: float | None = None) -> dict:
    """AUDIO {"waveform": [1, C, T] float32 -1..1, "sample_rate"} as LoadAudio gives it."""
    rate, data = wavfile.read(shared_file("fixtures", name))
    wave = torch.from_numpy(data.astype(np.float32) / 32768.0)
    wave = wave[None] if wave.dim() == 1 else wave.T
    if seconds:
        wave = wave[:, : int(rate * seconds)]
    return {"waveform": wave[None].contiguous(), "sample_rate": int(rate)}


class TinyVAE:
    """ComfyUI's VAE API: encode(IMAGE [B,H,W,3] 0..1) -> raw latent [B,4,H/8,W/8]; decode -> IMAGE."""

    def __init__(self, seed: int = 0):
        from diffusers import AutoencoderKL

        torch.manual_seed(seed)
        self.model = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                                   latent_channels=4,
                                   down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4).eval()
        self.encoded = 0

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encoded += image.shape[0]
        x = image[..., :3].permute(0, 3, 1, 2) * 2 - 1
        return self.model.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.model.decode(latent).sample
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


class LowVramComfy:
    """Stand-ins for comfy.model_management and comfy.model_patcher on a device that holds one model at a
    time, as ComfyUI behaves when VRAM is short: loading a model unloads every other one. An unloaded
    model's tensors go to the 'meta' device (the real ones are kept aside), so using it before it is loaded
    again fails, as a network left on the offload device does on a GPU. `events` records ("load" | "unload",
    model class name)."""

    def __init__(self):
        self.loaded: list = []
        self.events: list[tuple[str, str]] = []
        comfy = self

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device):
                self.model, self.load_device, self.kept = model, load_device, None

            def name(self) -> str:
                return type(getattr(self.model, "inner", self.model)).__name__

        self.ModelPatcher = ModelPatcher

        def load_models_gpu(patchers, force_full_load=False):
            for other in [p for p in comfy.loaded if p not in patchers]:
                comfy._unload(other)
            for p in patchers:
                if p not in comfy.loaded:
                    comfy._load(p)

        self.model_management = types.SimpleNamespace(
            get_torch_device=lambda: torch.device("cpu"), unet_offload_device=lambda: torch.device("cpu"),
            unet_dtype=lambda device, supported_dtypes: torch.float32, load_models_gpu=load_models_gpu,
            throw_exception_if_processing_interrupted=lambda: None)

    def _unload(self, p) -> None:
        tensors = {**dict(p.model.named_parameters()), **dict(p.model.named_buffers())}
        p.kept = {k: v.detach() for k, v in tensors.items()}
        p.model.to("meta")
        self.loaded.remove(p)
        self.events.append(("unload", p.name()))

    def _load(self, p) -> None:
        if p.kept is not None:
            p.model.to_empty(device=p.load_device)
            with torch.no_grad():
                for k, v in {**dict(p.model.named_parameters()), **dict(p.model.named_buffers())}.items():
                    v.copy_(p.kept[k])
            p.kept = None
        self.loaded.append(p)
        self.events.append(("load", p.name()))

    def install(self, monkeypatch) -> None:
        """Make these the ComfyUI modules the pack's services module imports."""
        for name, module in {"comfy": types.ModuleType("comfy"), "comfy.model_management": self.model_management,
                             "comfy.model_patcher": types.SimpleNamespace(ModelPatcher=self.ModelPatcher)}.items():
            monkeypatch.setitem(sys.modules, name, module)


class ManagedVAE(TinyVAE):
    """TinyVAE that, like ComfyUI's VAE, has model management load it before every encode and decode."""

    def __init__(self, comfy: LowVramComfy, seed: int = 0):
        super().__init__(seed)
        self.comfy = comfy
        self.patcher = comfy.ModelPatcher(self.model, torch.device("cpu"), torch.device("cpu"))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.comfy.model_management.load_models_gpu([self.patcher])
        return super().encode(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        self.comfy.model_management.load_models_gpu([self.patcher])
        return super().decode(latent)


def fake_folder_paths(models_dir) -> types.ModuleType:
    """A stand-in for ComfyUI's `folder_paths` module over `models_dir`, with the parts our services use.

    `get_full_path` behaves as ComfyUI's (folder_paths.py): the name is normalised against "/" (so '..' and
    absolute names cannot leave the folder), links are followed, only files count. `calls` records lookups.
    """
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {}
    fp.calls = []

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_full_path(name, filename):
        fp.calls.append((name, filename))
        if name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for folder in fp.folder_names_and_paths[name][0]:
            full = os.path.join(folder, filename)
            if os.path.isfile(full):
                return full
        return None

    fp.get_folder_paths, fp.get_full_path = get_folder_paths, get_full_path
    fp.get_temp_directory = lambda: os.path.join(str(models_dir), "..", "temp")
    return fp


def tiny_onnx_embedder(path) -> None:
    """A tiny ONNX file shaped like insightface's w600k_r50.onnx: (1, 3, 112, 112) -> (1, 512)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("ReduceMean", ["f"], ["m"], keepdims=1),
         helper.make_node("Expand", ["m", "shape"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 512])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))

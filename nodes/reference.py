"""EMO_ReferenceEncode: the portrait through the VAE and ReferenceNet, once, reusable across audio clips."""
from __future__ import annotations

import logging

import torch

from ..emo_core.errors import IncompatibleCheckpointError, InvalidInputError
from ..emo_core.finite import IMAGE_FIX, LATENT_FIX, require_finite
from ..emo_core.sampler import SD15_LATENT_SCALE
from . import comfy_services as services
from .handles import Reference

log = logging.getLogger(__name__)


def check_image(image: torch.Tensor, what: str) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> its first image [1, H, W, 3]; sizes must be multiples of 8."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] < 3:
        raise InvalidInputError(f"{what} must be a ComfyUI IMAGE [batch, height, width, 3], got "
                                f"{getattr(image, 'shape', type(image))}")
    require_finite(image, what, IMAGE_FIX)
    h, w = image.shape[1:3]
    if h % 8 or w % 8 or h < 64 or w < 64:
        raise InvalidInputError(f"{what} is {w}x{h}; width and height must be multiples of 8 and at least 64 "
                                "(512x512 suits Hallo): resize it with an Upscale Image node")
    return image[:1, :, :, :3]


class EmoReferenceEncode:
    """Encodes the portrait: VAE latent, optional identity embedding, ReferenceNet features."""
    CATEGORY = "EMO/conditioning"
    RETURN_TYPES = ("EMO_REFERENCE",)
    RETURN_NAMES = ("reference",)
    FUNCTION = "encode"
    DESCRIPTION = "Run the portrait through the VAE and ReferenceNet once; reuse it for any number of audio clips."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": ("EMO_MODEL", {"tooltip": "From EMO Model Loader."}),
            "vae": ("VAE", {"tooltip": "The SD 1.5 VAE (from Load VAE or any SD 1.5 checkpoint loader)."}),
            "image": ("IMAGE", {"tooltip": "The portrait; width and height multiples of 8 (512x512 for Hallo). "
                                           "The first image of a batch is used."}),
        }, "optional": {
            "face_embedder": ("EMO_FACE_EMBEDDER", {"tooltip": "Face-identity model for Hallo checkpoints; "
                                                               "without it identity fidelity drops."}),
        }}

    def encode(self, emo_model, vae, image, face_embedder=None):
        image = check_image(image, "the reference image")
        latent = require_finite(vae.encode(image)[:1].float().cpu(), "the VAE's latent of the reference image",
                                LATENT_FIX)
        identity = None
        if face_embedder is not None and emo_model.net.imageproj is not None:
            identity = face_embedder.embedder.embed(image, landmark_dirs=face_embedder.landmark_dirs)[0]
            want = emo_model.config.identity.embedding_dim
            if identity.shape[-1] != want:
                raise IncompatibleCheckpointError(f"the face model gives {identity.shape[-1]}-d embeddings but "
                                                  f"this checkpoint expects {want}-d (insightface w600k_r50: 512)")
        net = services.load_on_device(emo_model.net, emo_model.patcher, emo_model.device)
        p = next(net.parameters())
        context, uncond = net.identity_tokens(None if identity is None else identity[None], 1)
        with torch.no_grad():
            features = net.reference_features(latent.to(p.device) * SD15_LATENT_SCALE, context, uncond, True)
        log.info("reference encoded: %dx%d, identity %s", image.shape[2], image.shape[1],
                 "from the face model" if identity is not None else "none")
        return (Reference(latent[0], identity, features.to(device="cpu"), emo_model,
                          (int(image.shape[1]), int(image.shape[2])), image[0].float().cpu()),)

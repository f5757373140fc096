"""EMO_FaceLocator: the face region of the portrait (or a video) for the face locator, with a preview."""
from __future__ import annotations

import uuid

import numpy as np
import torch

from ..emo_core.face import face_region
from ..emo_core.face_hallo import hallo_masks
from . import comfy_services as services
from .handles import FaceRegionHandle
from .reference import check_image


def _preview(image: torch.Tensor, mask: torch.Tensor) -> dict:
    """The first frame with the face region tinted, saved as a temp PNG ComfyUI shows on the node."""
    from PIL import Image

    rgb = image[0, :, :, :3].float().cpu()
    tint = torch.tensor([0.2, 0.9, 0.4])
    shown = torch.where(mask[0, :, :, None] > 0.5, rgb * 0.6 + tint * 0.4, rgb * 0.5)
    name = f"emo_face_{uuid.uuid4().hex[:12]}.png"
    Image.fromarray((shown.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(services.temp_directory() / name)
    return {"filename": name, "subfolder": "", "type": "temp"}


class EmoFaceLocator:
    """Finds the face (MediaPipe) or takes a drawn mask, and renders it for the model's face locator."""
    CATEGORY = "EMO/conditioning"
    RETURN_TYPES = ("EMO_FACE_REGION", "MASK")
    RETURN_NAMES = ("face_region", "mask")
    OUTPUT_TOOLTIPS = ("For EMO Sampler.", "The face region as a ComfyUI mask, for preview.")
    FUNCTION = "locate"
    DESCRIPTION = "Face-bounding-box mask for the face locator (and Hallo's face and lip masks)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": ("EMO_MODEL", {"tooltip": "Decides the mask format (EMO: 1 channel; Hallo: 3 channels "
                                                   "plus face and lip masks)."}),
            "image": ("IMAGE", {"tooltip": "The portrait (the same image as the reference), or video frames: "
                                           "the region is the union over all of them."}),
            "expand_ratio": ("FLOAT", {"default": 1.2, "min": 1.0, "max": 3.0, "step": 0.05,
                                       "tooltip": "Grow the face box about its centre; larger allows more head "
                                                  "motion."}),
        }, "optional": {
            "face_mask": ("MASK", {"tooltip": "A hand-drawn face mask that replaces detection (for stylised "
                                              "faces the detector misses)."}),
        }}

    def locate(self, emo_model, image, expand_ratio, face_mask=None):
        check_image(image, "the face-locator image")
        cfg = emo_model.config
        dirs = services.mediapipe_dirs()
        region = face_region(image, expand_ratio, user_mask=face_mask,
                             channels=cfg.face_locator.conditioning_channels, model_dirs=dirs)
        masks = None
        if cfg.audio_attention.form == "hierarchical":
            masks = hallo_masks(image, levels=len(cfg.unet.block_out_channels), model_dirs=dirs,
                                user_mask=face_mask)
        info = {"box": list(region.box), "width": int(image.shape[2]), "height": int(image.shape[1]),
                "frames": int(image.shape[0]), "source": "mask" if region.source == "user_mask" else "mediapipe"}
        ui = {"images": [_preview(image, region.mask)], "emo_face": [info]}
        return {"ui": ui, "result": (FaceRegionHandle(region, masks), region.mask)}

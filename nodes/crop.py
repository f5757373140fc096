"""EMO_FaceCrop and EMO_PasteBack: any photo in, the model-size square around the face out, and the animated
square composited back into the full photo (emo_core.face_crop, emo_core.paste_back)."""
from __future__ import annotations

import uuid

import numpy as np
import torch

from ..emo_core.face_crop import DEFAULT_EXPAND, FAMILY_EXPAND, PADDINGS, CropSettings, face_crop, family_expand_ratio
from ..emo_core.memory import F32, MemoryEstimate, check_host_memory
from ..emo_core.paste_back import PasteSettings, paste_frames
from . import comfy_services as services
from .handles import CropHandle

PREVIEW_SIDE = 768  # the preview of the photo with its square is at most this many pixels on its long side
FAMILY_TEXT = ", ".join(f"{k} {v:g}" for k, v in FAMILY_EXPAND.items())
STREAMING_HINT = ("connect EMO Sampler to EMO Save Video (Streaming) with this crop instead of VAE Decode -> "
                  "EMO Paste Back (it pastes and writes a chunk of frames at a time)")


def _preview(image: torch.Tensor, result) -> dict:
    """The photo, shrunk, with every face found (numbered left to right) and the crop square drawn on it."""
    from PIL import Image, ImageDraw

    crop = result.crop
    height, width = crop.image_size
    k = min(1.0, PREVIEW_SIDE / max(height, width))
    rgb = (image[0, :, :, :3].float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    shown = Image.fromarray(rgb).resize((max(1, round(width * k)), max(1, round(height * k))))
    draw = ImageDraw.Draw(shown)
    for i, face in enumerate(result.faces):
        draw.rectangle([v * k for v in face[:4]], outline=(255, 200, 60) if i == crop.face_index else (150, 150, 150),
                       width=2)
        draw.text((face[0] * k + 3, face[1] * k + 2), str(i), fill=(255, 255, 255))
    draw.rectangle([v * k for v in crop.box], outline=(60, 230, 110), width=3)
    name = f"emo_crop_{uuid.uuid4().hex[:12]}.png"
    shown.save(services.temp_directory() / name)
    return {"filename": name, "subfolder": "", "type": "temp"}


class EmoFaceCrop:
    """Cuts the model-size square around a face out of any image, and remembers where for EMO Paste Back."""
    CATEGORY = "EMO/conditioning"
    RETURN_TYPES = ("IMAGE", "EMO_CROP", "MASK")
    RETURN_NAMES = ("image", "crop", "face_mask")
    OUTPUT_TOOLTIPS = ("The square crop (size x size) for EMO Reference Encode and EMO Face Locator.",
                       "Where the crop lies in the image: for EMO Paste Back or EMO Save Video (Streaming).",
                       "The face in crop pixels (the drawn mask cropped, or the detected face box): connect it to "
                       "EMO Face Locator's face_mask for a stylised face the detector misses.")
    FUNCTION = "crop"
    DESCRIPTION = ("Find the face in a photo of any size (the largest, or the one face_index picks left to right) "
                   "and cut the square the model animates, placed as its checkpoint family was trained.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Any photo or painting, any size and aspect, RGB or RGBA (alpha is "
                                           "ignored). Of a batch, the first image is searched and every image "
                                           "cut the same way."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                             "tooltip": "Side of the square crop in pixels, a multiple of 8: 512 for Hallo, "
                                        "Hallo2 and EchoMimic."}),
            "expand_ratio": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 8.0, "step": 0.05,
                                       "tooltip": "Square side / the face box's longer side. 0: the connected "
                                                  f"model's family default ({FAMILY_TEXT}; {DEFAULT_EXPAND:g} "
                                                  "without a model). Larger shows more shoulders."}),
            "face_index": ("INT", {"default": -1, "min": -1, "max": 99,
                                   "tooltip": "-1: the largest face. 0, 1, 2, ...: that face counting left to "
                                              "right (the preview numbers them)."}),
            "padding": (list(PADDINGS), {"default": "reflect",
                                         "tooltip": "Where the square runs off the image: reflect mirrors the "
                                                    "pixels at the edge, edge repeats the last row or column. "
                                                    "Paste Back discards that part again."}),
        }, "optional": {
            "face_mask": ("MASK", {"tooltip": "A drawn face mask (same size as the image) that replaces "
                                              "detection, for stylised faces the detector misses."}),
            "emo_model": ("EMO_MODEL", {"tooltip": "From EMO Model Loader: expand_ratio 0 takes its family's "
                                                   "default."}),
        }}

    def crop(self, image, size, expand_ratio, face_index, padding, face_mask=None, emo_model=None):
        if expand_ratio == 0:
            expand_ratio = family_expand_ratio(emo_model.config.family if emo_model is not None else None)
        settings = CropSettings(size=size, expand_ratio=expand_ratio, padding=padding, face_index=face_index)
        result = face_crop(image, settings, user_mask=face_mask, model_dirs=services.mediapipe_dirs())
        crop = result.crop
        info = {"box": list(crop.box), "width": crop.image_size[1], "height": crop.image_size[0],
                "size": crop.size, "scale": crop.scale, "faces": crop.faces, "face_index": crop.face_index,
                "source": crop.source, "expand_ratio": expand_ratio, "runs_off": crop.runs_off}
        ui = {"images": [_preview(image, result)], "emo_crop": [info]}
        return {"ui": ui, "result": (result.image, CropHandle(crop, image), result.mask)}


class EmoPasteBack:
    """Composites the animated square back into the full image, frame by frame, with a feathered edge."""
    CATEGORY = "EMO/output"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Every frame at the image's own size (odd sizes too; a video writer needs even ones: "
                       "EMO Save Video (Streaming) drops the last row or column, core Save Video refuses them).",)
    FUNCTION = "paste"
    DESCRIPTION = ("Put the animated crop back where EMO Face Crop cut it: the image outside the square stays "
                   "as it was. For long videos, connect the crop to EMO Save Video (Streaming) instead.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image given to EMO Face Crop (or one of the same size), or one "
                                           "frame per animated frame."}),
            "frames": ("IMAGE", {"tooltip": "The animated crops: VAE Decode of EMO Sampler's output."}),
            "crop": ("EMO_CROP", {"tooltip": "From EMO Face Crop."}),
            "feather": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.5, "step": 0.01,
                                  "tooltip": "Width of the soft edge as a fraction of the square's side (0.1: a "
                                             "tenth on each edge inside the image); 0: a hard edge."}),
            "keep_detail": ("BOOLEAN", {"default": True,
                                        "tooltip": "Keep the photo's own pixels (its full resolution) where the "
                                                   "animation does not move; off: the whole square is the "
                                                   "upscaled animation."}),
            "match_colors": ("BOOLEAN", {"default": False,
                                         "tooltip": "Shift each frame's colours to match the photo along the "
                                                    "seam, if the model drifted in colour."}),
        }}

    def paste(self, image, frames, crop, feather, keep_detail, match_colors):
        height, width = crop.crop.image_size
        count = int(frames.shape[0]) if isinstance(frames, torch.Tensor) and frames.dim() == 4 else 0
        what = f"{count} full-size frames of {width}x{height}"
        check_host_memory(MemoryEstimate({"pasted frames": count * height * width * 3 * F32}, what), STREAMING_HINT)
        settings = PasteSettings(feather=feather, keep_detail=keep_detail, match_colors=match_colors)
        return (paste_frames(image, frames, crop.crop, settings, check_cancel=services.check_interrupt,
                             on_frame=services.progress_bar(count)),)

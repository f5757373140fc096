"""EMO_SaveVideo: LATENT -> MP4 in the output folder, decoded and encoded a chunk of frames at a time, so long
songs need no more RAM than short clips (VAE Decode -> Create Video holds every decoded frame)."""
from __future__ import annotations

from ..emo_core.paste_back import Paster, paste_stream
from ..emo_core.video_writer import write_latent_video
from . import comfy_services as services


def _decoder(vae, crop, frames: int):
    """Latent chunk -> IMAGE chunk; with an EMO_CROP each chunk is pasted back into the full image as it comes,
    so only chunk_frames full-size frames exist at once."""
    def decode(latent):
        images = vae.decode(latent).float()
        return images.reshape(-1, *images.shape[-3:])  # video VAEs give (B, T, H, W, 3)

    if crop is None:
        return decode
    paste = paste_stream(Paster(crop.image, crop.crop), frames)
    return lambda latent: paste(decode(latent))


class EmoSaveVideo:
    """Decodes the sampler's latents chunk by chunk and writes an H.264 + AAC MP4 as it goes."""
    CATEGORY = "EMO/output"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    DESCRIPTION = ("Decode the latents a chunk of frames at a time and write the MP4 (with the audio track) as it "
                   "goes: memory stays the same for any length. Use it instead of VAE Decode -> Create Video -> "
                   "Save Video for long audio.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("LATENT", {"tooltip": "Every frame's latent, from EMO Sampler."}),
            "vae": ("VAE", {"tooltip": "The SD 1.5 VAE that decodes the latents (the one given to EMO Sampler)."}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.5,
                              "tooltip": "Frame rate: connect the fps output of EMO Audio Features."}),
            "filename_prefix": ("STRING", {"default": "EMO/video", "tooltip": "File name inside ComfyUI's output "
                                           "folder; a number is appended (e.g. EMO/video_00001_.mp4)."}),
            "chunk_frames": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Frames decoded at once: "
                                     "more is a little faster and needs more memory (VRAM and RAM)."}),
            "crf": ("INT", {"default": 19, "min": 0, "max": 51, "tooltip": "H.264 quality: lower is better and "
                            "larger; 17-23 is usual, 0 is lossless."}),
        }, "optional": {
            "audio": ("AUDIO", {"tooltip": "The sound track (Load Audio); cut to the video's length."}),
            "crop": ("EMO_CROP", {"tooltip": "From EMO Face Crop: every decoded chunk is pasted back into the full "
                                             "image (as EMO Paste Back does at its defaults) before it is written; "
                                             "an odd width or height loses its last column or row (H.264 needs "
                                             "even sizes)."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, latent, vae, fps, filename_prefix, chunk_frames=16, crf=19, audio=None, crop=None, prompt=None,
             extra_pnginfo=None):
        samples = latent["samples"]
        path, subfolder, filename = services.output_file(filename_prefix, "mp4")
        write_latent_video(samples, _decoder(vae, crop, int(samples.shape[0])), path, fps, audio=audio,
                           chunk_frames=chunk_frames, crf=crf, metadata=services.video_metadata(prompt, extra_pnginfo),
                           check_cancel=services.check_interrupt, on_chunk=services.progress_bar(samples.shape[0]))
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}

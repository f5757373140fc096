"""EMO_Sampler: every frame of the video as a LATENT, clip after clip, for ComfyUI's VAEDecode."""
from __future__ import annotations

from ..emo_core.errors import InvalidInputError
from ..emo_core.finite import require_finite
from ..emo_core.sampler import SamplerSettings, VaeCodec, VideoConditions, generate
from ..emo_core.scheduling import SAMPLERS
from ..emo_core.speed import speed_features
from . import comfy_services as services
from .memory_check import check_sampling

# 0 / -1 follow the loaded model, so one workflow renders each family (and EchoMimic's 6-step weights) with
# its own settings; any other value overrides them.
STEPS_TOOLTIP = ("Denoising steps per clip. 0 = the loaded model's default: 40 for EMO, Hallo and Hallo2, 30 for "
                 "EchoMimic, 6 for EchoMimic's acc weights.")
CFG_TOOLTIP = ("Classifier-free guidance scale; <= 1 disables it (one UNet pass per step instead of two). -1 = the "
               "loaded model's default: 3.5 for EMO, Hallo and Hallo2, 2.5 for EchoMimic, off for its acc weights.")


def family_settings(config, steps: int, cfg: float) -> tuple[int, float]:
    """(steps, cfg) with 0 steps and a negative cfg replaced by the family's defaults."""
    return (steps if steps > 0 else config.default_steps, cfg if cfg >= 0 else config.guidance_scale)


def _vae_codec(vae) -> VaeCodec | None:
    if vae is None:
        return None
    return VaeCodec(encode=lambda images: vae.encode(images[..., :3]).float(),
                    decode=lambda latents: vae.decode(latents).float())


def _check_sizes(reference, face_region) -> None:
    h, w = reference.latent.shape[-2:]
    fh, fw = face_region.region.mask.shape[-2:]
    if (fh, fw) != (h * 8, w * 8):
        raise InvalidInputError(f"the face region was found on a {fw}x{fh} image but the reference is "
                                f"{w * 8}x{h * 8}; connect the same portrait to EMO Face Locator")


def _check_features(emo_model, audio_features) -> None:
    """The features must come from the encoder this family uses, be cut for this model's clips and cover
    every frame of its last clip (context windows: every frame)."""
    from ..emo_core.whisper_audio import WhisperFeatures

    cfg, feats = emo_model.config, audio_features.features
    whisper = isinstance(feats, WhisperFeatures)
    if whisper != (cfg.family == "echomimic"):
        made, wants = ("whisper", "wav2vec2") if whisper else ("wav2vec2", "whisper")
        raise InvalidInputError(f"the audio features were made by {made} but this {cfg.family} model takes {wants} "
                                "features; re-run EMO Audio Features with the same EMO Model Loader")
    made = (audio_features.clip_length, audio_features.motion_frames, feats.window)
    want = (cfg.clip_length, cfg.motion_frames, feats.window if whisper else cfg.audio_projection.window)
    if made != want:
        raise InvalidInputError(f"the audio features were made for clips of {made[0]} frames with {made[1]} motion "
                                f"frames and {made[2]}-frame windows, but this EMO model uses {want[0]}, {want[1]} "
                                f"and {want[2]}; re-run EMO Audio Features with the same EMO Model Loader")
    windows = cfg.long_video == "context_windows"
    needed = feats.num_frames if windows else -(-feats.num_frames // cfg.clip_length) * cfg.clip_length
    if feats.padded_frames < needed:
        clips = "" if windows else f" in whole clips of {cfg.clip_length}"
        raise InvalidInputError(f"the audio features cover {feats.padded_frames} frames but the video needs "
                                f"{needed} ({feats.num_frames} frames{clips}); re-run "
                                "EMO Audio Features with the same EMO Model Loader")


class EmoSampler:
    """Denoises the whole video clip by clip; the last n frames of each clip drive the next."""
    CATEGORY = "EMO/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Every frame (exactly the audio's frame count); decode with VAE Decode.",)
    FUNCTION = "sample"
    DESCRIPTION = "Chunked EMO sampling: any audio length, memory bounded by one clip."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "emo_model": ("EMO_MODEL", {"tooltip": "From EMO Model Loader."}),
            "reference": ("EMO_REFERENCE", {"tooltip": "From EMO Reference Encode."}),
            "audio_features": ("EMO_AUDIO_FEATURES", {"tooltip": "From EMO Audio Features."}),
            "face_region": ("EMO_FACE_REGION", {"tooltip": "From EMO Face Locator (same portrait)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Clip k's noise depends only on (seed, k)."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 200, "tooltip": STEPS_TOOLTIP}),
            "cfg": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 20.0, "step": 0.1, "tooltip": CFG_TOOLTIP}),
            "sampler_name": (list(SAMPLERS), {"default": "ddim", "tooltip": "DDIM is what EMO and Hallo use."}),
        }, "optional": {
            "speed": ("EMO_SPEED", {"tooltip": "Head speed for EMO checkpoints (ignored by Hallo)."}),
            "vae": ("VAE", {"tooltip": "Hallo re-encodes the motion frames from pixels; without a VAE they are "
                                       "carried as latents."}),
            "pose_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                      "tooltip": "Hallo: weight of audio on the whole image (head pose)."}),
            "face_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                      "tooltip": "Hallo: weight of audio on the face (expression)."}),
            "lip_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                     "tooltip": "Hallo: weight of audio on the lips."}),
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    def sample(self, emo_model, reference, audio_features, face_region, seed, steps, cfg, sampler_name,
               speed=None, vae=None, pose_weight=1.0, face_weight=1.0, lip_weight=1.0, prompt=None, unique_id=None):
        if not emo_model.same_weights(reference.model):
            raise InvalidInputError("the reference was encoded with another EMO model; connect the same "
                                    "EMO Model Loader to EMO Reference Encode and EMO Sampler")
        _check_sizes(reference, face_region)
        _check_features(emo_model, audio_features)
        feats = audio_features.features
        check_sampling(feats, tuple(reference.latent.shape[-2:]), prompt, unique_id)  # the workflow's graph
        video = VideoConditions(
            reference=reference.latent, audio=feats, num_frames=feats.num_frames,
            face_mask=face_region.region.locator_input[0], identity=reference.identity,
            masks=None if face_region.hallo_masks is None else tuple(face_region.hallo_masks),
            reference_features=reference.features, reference_image=getattr(reference, "image", None))
        if speed is not None and emo_model.config.speed is not None:
            video.speed = speed_features(speed.per_frame(feats.num_frames, feats.fps), emo_model.config.speed)
        steps, cfg = family_settings(emo_model.config, steps, cfg)
        settings = SamplerSettings(steps=steps, guidance_scale=cfg, seed=seed, sampler=sampler_name,
                                   motion_scale=(pose_weight, face_weight, lip_weight))
        net = services.load_on_device(emo_model.net, emo_model.patcher, emo_model.device)
        clips = 1 if net.config.long_video == "context_windows" else -(-feats.num_frames // net.config.clip_length)
        latents = generate(net, video, settings, codec=_vae_codec(vae),
                           on_step=services.ProgressReporter(clips * steps), check_cancel=services.check_interrupt,
                           before_clip=lambda: services.load_on_device(net, emo_model.patcher, emo_model.device))
        require_finite(latents, "the sampled video", "the network overflowed at this precision: load the EMO "
                                                     "model with precision fp32 or bf16")
        return ({"samples": latents},)

"""EmoNet: ReferenceNet + backbone + condition encoders, configured per checkpoint family."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from . import fastpath
from .config import EmoNetConfig
from .errors import InvalidInputError
from .models.conditions import ReferenceFeatures, UNetConditions
from .models.encoders import FaceLocator, IdentityProjection, WindowProjection
from .models.reference import build_reference_unet, record_reference
from .models.unet import DenoisingUNet

log = logging.getLogger(__name__)


@dataclass
class ClipConditions:
    """Conditional inputs of one clip for batch b, F frames (the unconditional half is derived).

    audio: (b, F, T, A) audio tokens. face: (b, C0, F, h, w) face-locator features (C0: the UNet's first block
    width, or its 4 latent channels when `face_added_to` is "latent") or None.
    context / uncond_context: (b, T, D) identity tokens of the two CFG branches, or None.
    masks: (full, face, lip), each a list over levels of (b*F, h_l*w_l), or None.
    motion_scale: (3,) or None. speed: (b, F, T, S) speed tokens or None.
    reference: ReferenceFeatures laid out for the CFG batch (see EmoNet.encode_reference).
    """
    audio: torch.Tensor
    face: torch.Tensor | None = None
    context: torch.Tensor | None = None
    uncond_context: torch.Tensor | None = None
    masks: tuple | None = None
    motion_scale: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    reference: ReferenceFeatures | None = None


class EmoNet(nn.Module):
    """The whole network. Submodule names are the checkpoint prefixes (Hallo's `net.pth` layout)."""

    def __init__(self, config: EmoNetConfig):
        super().__init__()
        self.config = config.validate()
        u = config.unet
        self.reference_unet = build_reference_unet(u, cross_attention=config.reference_cross_attention)
        self.denoising_unet = DenoisingUNet(config)
        # The face locator's output is added to the noisy latent (EMO paper) or after conv_in (Hallo): its width.
        face_width = u.in_channels if config.face_added_to == "latent" else u.block_out_channels[0]
        self.face_locator = FaceLocator(config.face_locator, face_width)
        self.imageproj = IdentityProjection(config.identity, u.cross_attention_dim) if config.identity else None
        self.audioproj = WindowProjection(config.audio_projection) if config.audio_projection else None
        self.speedproj = WindowProjection(config.speed.projection()) if config.speed else None
        # Identity of the loaded weights (checkpoint.weights_fingerprint), set by checkpoint.load_network.
        self.fingerprint: str | None = None

    # -- condition encoders -------------------------------------------------------------------
    def identity_tokens(self, embedding: torch.Tensor | None, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Face embedding (b, E) -> (cond, uncond) tokens (b, T, D).

        Hallo's unconditional tokens are imageproj(zeros), not zero tokens. A network without an
        identity projection uses one zero token in the cross-attention slot for both branches.
        """
        p = self._param()
        if self.imageproj is None or embedding is None:
            zeros = torch.zeros(batch, 1, self.config.unet.cross_attention_dim, device=p.device, dtype=p.dtype)
            if self.imageproj is not None:
                log.warning("no face-identity embedding given; identity tokens fall back to the "
                            "unconditional ones and identity fidelity drops")
                zeros = self.imageproj(torch.zeros(batch, self.config.identity.embedding_dim,
                                                   device=p.device, dtype=p.dtype))
            return zeros, zeros
        embedding = embedding.to(p.device, p.dtype)
        return self.imageproj(embedding), self.imageproj(torch.zeros_like(embedding))

    def audio_tokens(self, windowed: torch.Tensor) -> torch.Tensor:
        """Windowed audio features (b, F, window, layers, hidden) -> tokens (b, F, T, A).

        With an audio projection (EMO, Hallo: wav2vec2) its MLP makes the tokens; without one (EchoMimic:
        whisper) every (window frame, layer) feature is a token, frame-major as EchoMimic orders them."""
        p = self._param()
        if self.audioproj is None:
            width = self.config.audio_attention.audio_dim
            if windowed.dim() != 5 or windowed.shape[-1] != width:
                raise InvalidInputError(f"audio features must be (batch, frames, window, layers, {width}) for this "
                                        f"checkpoint, got {tuple(windowed.shape)}; extract them with the audio "
                                        "encoder that matches the model")
            return windowed.flatten(2, 3).to(p.dtype)
        ap = self.config.audio_projection
        expected = (ap.window, ap.blocks, ap.channels)
        if windowed.dim() != 5 or tuple(windowed.shape[2:]) != expected:
            raise InvalidInputError(f"audio features must be (batch, frames, {expected[0]}, {expected[1]}, "
                                    f"{expected[2]}) for this checkpoint, got {tuple(windowed.shape)}; "
                                    "extract them with the audio encoder that matches the model")
        return self.audioproj(windowed.to(p.dtype))

    def speed_tokens(self, windowed: torch.Tensor | None) -> torch.Tensor | None:
        """Windowed speed buckets (b, F, 2m+1, d) -> tokens (b, F, T, S); None without speed layers."""
        if self.speedproj is None or windowed is None:
            return None
        return self.speedproj(windowed.to(self._param().dtype).unsqueeze(3))

    def face_features(self, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """Face-region mask (b, c, H, W) or (b, c, F, H, W) at pixel size -> (b, C0, F, h, w); C0 is 4 (latent
        channels) when the config adds it to the noisy latent, else the UNet's first block width."""
        want = self.config.face_locator.conditioning_channels
        static = mask.dim() == 4 and fastpath.is_on()  # the locator runs per frame: one frame serves them all
        if mask.dim() == 4:
            mask = mask.unsqueeze(2).expand(-1, -1, 1 if static else frames, -1, -1)
        if mask.dim() != 5 or mask.shape[1] != want:
            raise InvalidInputError(f"face mask must have {want} channel(s) for the {self.config.family} family, "
                                    f"got shape {tuple(mask.shape)}")
        features = self.face_locator(mask.to(self._param().dtype))
        return features.expand(-1, -1, frames, -1, -1) if static else features

    # -- ReferenceNet ---------------------------------------------------------------------------
    def encode_reference(self, reference: torch.Tensor, motion: torch.Tensor | None, context: torch.Tensor,
                         uncond_context: torch.Tensor, guidance: bool, zero_motion: int = 0) -> ReferenceFeatures:
        """Run ReferenceNet on [reference, motion frames] and lay its features out for the backbone batch.

        reference: (b, 4, h, w) scaled latent; motion: (b, n, 4, h, w) or None; context/uncond_context:
        (b, T, D). With `guidance` the backbone batch is [uncond b; cond b]. `zero_motion` gives that many
        zero motion frames when `motion` is None (EMO's first clip). The same as
        `with_motion(reference_features(...), motion, ...)`, the split the sampler uses.
        """
        per_video = 1 + (0 if motion is None else motion.shape[1])
        ref = self.reference_features(reference, context, uncond_context, guidance, per_video)
        return self.with_motion(ref, motion, context, uncond_context, guidance, zero_motion)

    def reference_features(self, reference: torch.Tensor, context: torch.Tensor, uncond_context: torch.Tensor,
                           guidance: bool, per_video: int | None = None) -> ReferenceFeatures:
        """The reference image's features alone (once per video). `per_video` = 1 + motion frames per
        clip; it matters only for Hallo's tiled rows, where it decides which token set a row sees."""
        per_video = 1 + self.config.motion_frames if per_video is None else per_video
        b = reference.shape[0]
        bank = self._reference_pass(reference.unsqueeze(1), [0], per_video, context, uncond_context, guidance)
        return ReferenceFeatures(tokens={k: v[:, 0] for k, v in bank.items()}, plain=b if guidance else 0,
                                 frame_major=self.config.reference_rows == "cfg_tiled")

    def with_motion(self, ref: ReferenceFeatures, motion: torch.Tensor | None, context: torch.Tensor,
                    uncond_context: torch.Tensor, guidance: bool, zero_motion: int = 0) -> ReferenceFeatures:
        """`ref` plus the motion frames' features (once per clip). motion: (b, n, 4, h, w) scaled latents,
        or None for `zero_motion` zero feature maps (or none at all)."""
        out = ReferenceFeatures(tokens=ref.tokens, plain=ref.plain, frame_major=ref.frame_major, kv=ref.kv)
        if motion is None:
            if zero_motion > 0:
                out.motion = {k: v.new_zeros(v.shape[0], zero_motion, *v.shape[1:]) for k, v in ref.tokens.items()}
            return out
        n = motion.shape[1]
        out.motion = self._reference_pass(motion, list(range(1, n + 1)), 1 + n, context, uncond_context, guidance)
        return out

    def _reference_pass(self, latents: torch.Tensor, slots: list[int], per_video: int, context: torch.Tensor,
                        uncond_context: torch.Tensor, guidance: bool) -> dict[str, torch.Tensor]:
        """ReferenceNet on latents (b, S, 4, h, w) holding the per-video rows `slots` of [reference,
        motion 1..n] -> {block: (V, S, L, C)} with V = 2b under guidance ([uncond; cond]), else b.

        ReferenceNet rows never interact, so any subset of rows can run alone. Hallo (`cfg_tiled`) runs
        the rows tiled twice with the [uncond; cond] token sets tiled over them (`repeat`), so per-video
        row s of video v sees token set (v * per_video + s) mod V (parity README, case d). EMO
        (`shared`) runs each row once with its own tokens and both CFG halves share the result.
        """
        b, dtype = latents.shape[0], self._param().dtype
        if self.config.reference_rows == "cfg_tiled":
            token_sets = torch.cat([uncond_context, context]) if guidance else context
            videos = token_sets.shape[0]
            rows = torch.stack([latents[v % b, j] for v in range(videos) for j in range(len(slots))])
            tokens = torch.stack([token_sets[(v * per_video + s) % videos] for v in range(videos) for s in slots])
        else:
            videos = b
            rows = latents.flatten(0, 1)
            tokens = context.repeat_interleave(len(slots), 0)
        bank = record_reference(self.reference_unet, rows.to(dtype), tokens.to(dtype),
                                self.denoising_unet.plain_motion_keys())
        bank = {k: rearrange(v, "(v s) l c -> v s l c", s=len(slots)) for k, v in bank.items()}
        if self.config.reference_rows != "cfg_tiled" and guidance:  # one shared pass serves both CFG halves
            bank = {k: torch.cat([v, v]) for k, v in bank.items()}
        return bank

    # -- denoising ------------------------------------------------------------------------------
    def denoise(self, latents: torch.Tensor, timestep, cond: ClipConditions, guidance_scale: float):
        """One prediction with classifier-free guidance in one batched forward.

        latents: (b, 4, F, h, w) scaled. Returns (guided, uncond, cond) each (b, 4, F, h, w); without
        guidance (scale <= 1) all three are the conditional prediction.
        """
        guidance = guidance_scale > 1.0
        unet_cond = self._unet_conditions(cond, guidance)
        model_in = torch.cat([latents, latents]) if guidance else latents
        out = self.denoising_unet(model_in.to(self._param().dtype), timestep, unet_cond)
        if not guidance:
            return out, out, out
        uncond, conditional = out.chunk(2)
        return uncond + guidance_scale * (conditional - uncond), uncond, conditional

    def _unet_conditions(self, cond: ClipConditions, guidance: bool) -> UNetConditions:
        """The UNet's conditions for this clip. Fast path: built once per clip (kept on `cond` while its fields
        are the same objects) with the audio keys/values of the conditional videos; plain: every step."""
        if not fastpath.is_on():
            return self.cfg_conditions(cond) if guidance else self.plain_conditions(cond)
        # The field objects themselves (not ids, which a freed tensor's successor may reuse) tell a changed cond.
        fields = tuple(getattr(cond, f) for f in ClipConditions.__dataclass_fields__)
        cache = cond.__dict__.setdefault("_emo_unet_conditions", {})
        held = cache.get(guidance, ((),))[0]
        if len(held) != len(fields) or any(a is not b for a, b in zip(held, fields)):
            unet_cond = self.cfg_conditions(cond) if guidance else self.plain_conditions(cond)
            plain = cond.audio.shape[0] if guidance else 0  # cfg_conditions: the first half's audio is zeros
            unet_cond.audio_kv = self.denoising_unet.audio_kv(
                unet_cond.audio[plain:].flatten(0, 1).to(self._param().dtype))
            unet_cond.audio_plain = plain
            if unet_cond.context is not None and not torch.is_grad_enabled():
                unet_cond.context_folds = self.denoising_unet.context_folds(
                    unet_cond.context.to(self._param().dtype))
            if cond.reference is not None:  # shared by every clip of the video (with_motion keeps the dict)
                self.denoising_unet.fill_reference_kv(cond.reference)
            cache[guidance] = (fields, unet_cond)
        unet_cond = cache[guidance][1]
        self._fill_motion_constants(unet_cond, cond.reference)
        return unet_cond

    def _fill_motion_constants(self, unet_cond: UNetConditions, reference) -> None:
        """The temporal modules' motion-frame constants of this clip, rebuilt when the motion features are replaced;
        none while autograd records (precomputed, they would carry no gradient back to ReferenceNet)."""
        if reference is None or torch.is_grad_enabled():
            unet_cond.motion_const = None
            unet_cond.__dict__.pop("_emo_motion_source", None)
            return
        source = tuple(reference.motion.values())
        held = unet_cond.__dict__.get("_emo_motion_source")
        if held is None or len(held) != len(source) or any(a is not b for a, b in zip(held, source)):
            unet_cond.motion_const = self.denoising_unet.motion_constants(reference)
            unet_cond.__dict__["_emo_motion_source"] = source

    @staticmethod
    def plain_conditions(cond: ClipConditions) -> UNetConditions:
        return UNetConditions(audio=cond.audio, context=cond.context, face=cond.face, masks=cond.masks,
                              motion_scale=cond.motion_scale, speed=cond.speed, reference=cond.reference)

    @staticmethod
    def cfg_conditions(cond: ClipConditions) -> UNetConditions:
        """[uncond; cond] batch: the unconditional half gets zero audio and face features and the
        unconditional identity tokens; ReferenceFeatures.plain drops its reference tokens."""
        twice = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
        face = None if cond.face is None else torch.cat([torch.zeros_like(cond.face), cond.face])
        context = None if cond.context is None else torch.cat([cond.uncond_context, cond.context])
        masks = None if cond.masks is None else tuple([twice(m) for m in level] for level in cond.masks)
        return UNetConditions(audio=torch.cat([torch.zeros_like(cond.audio), cond.audio]), context=context,
                              face=face, masks=masks, motion_scale=cond.motion_scale, speed=twice(cond.speed),
                              reference=cond.reference)

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

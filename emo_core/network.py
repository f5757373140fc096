"""EmoNet: ReferenceNet + backbone + condition encoders, configured per checkpoint family."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

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

    audio: (b, F, T, A) audio tokens. face: (b, C0, F, h, w) face-locator features or None.
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
        self.reference_unet = build_reference_unet(u)
        self.denoising_unet = DenoisingUNet(config)
        self.face_locator = FaceLocator(config.face_locator, u.block_out_channels[0])
        self.imageproj = IdentityProjection(config.identity, u.cross_attention_dim) if config.identity else None
        self.audioproj = WindowProjection(config.audio_projection)
        self.speedproj = WindowProjection(config.speed.projection()) if config.speed else None

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
        """Windowed wav2vec features (b, F, 2m+1, layers, hidden) -> tokens (b, F, T, A)."""
        expected = (self.config.audio_projection.window, self.config.audio_projection.blocks,
                    self.config.audio_projection.channels)
        if windowed.dim() != 5 or tuple(windowed.shape[2:]) != expected:
            raise InvalidInputError(f"audio features must be (batch, frames, {expected[0]}, {expected[1]}, "
                                    f"{expected[2]}) for this checkpoint, got {tuple(windowed.shape)}; "
                                    "extract them with the audio encoder that matches the model")
        return self.audioproj(windowed.to(self._param().dtype))

    def speed_tokens(self, windowed: torch.Tensor | None) -> torch.Tensor | None:
        """Windowed speed buckets (b, F, 2m+1, d) -> tokens (b, F, T, S); None without speed layers."""
        if self.speedproj is None or windowed is None:
            return None
        return self.speedproj(windowed.to(self._param().dtype).unsqueeze(3))

    def face_features(self, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """Face-region mask (b, c, H, W) or (b, c, F, H, W) at pixel size -> (b, C0, F, h, w)."""
        want = self.config.face_locator.conditioning_channels
        if mask.dim() == 4:
            mask = mask.unsqueeze(2).expand(-1, -1, frames, -1, -1)
        if mask.dim() != 5 or mask.shape[1] != want:
            raise InvalidInputError(f"face mask must have {want} channel(s) for the {self.config.family} family, "
                                    f"got shape {tuple(mask.shape)}")
        return self.face_locator(mask.to(self._param().dtype))

    # -- ReferenceNet ---------------------------------------------------------------------------
    def encode_reference(self, reference: torch.Tensor, motion: torch.Tensor | None, context: torch.Tensor,
                         uncond_context: torch.Tensor, guidance: bool, zero_motion: int = 0) -> ReferenceFeatures:
        """Run ReferenceNet on [reference, motion frames] and lay its features out for the backbone batch.

        reference: (b, 4, h, w) scaled latent; motion: (b, n, 4, h, w) or None; context/uncond_context:
        (b, T, D). With `guidance` the backbone batch is [uncond b; cond b]. `zero_motion` gives that many
        zero motion frames when `motion` is None (EMO's first clip).
        """
        b = reference.shape[0]
        rows = reference.unsqueeze(1) if motion is None else torch.cat([reference.unsqueeze(1), motion], dim=1)
        per_video = rows.shape[1]
        rows = rows.flatten(0, 1).to(self._param().dtype)
        tiled = self.config.reference_rows == "cfg_tiled"
        if tiled:
            bank = self._tiled_reference(rows, context, uncond_context, guidance)
        else:
            bank = record_reference(self.reference_unet, rows, context.repeat_interleave(per_video, 0))
        rows_used = [not guidance or i >= b for i in range(b * (2 if guidance else 1))]
        out = ReferenceFeatures(rows=torch.tensor(rows_used, device=reference.device),
                                frame_major=tiled)
        for key, feats in bank.items():
            feats = rearrange(feats, "(v s) l c -> v s l c", s=per_video)
            if not tiled and guidance:  # one shared pass serves both CFG halves
                feats = torch.cat([feats, feats], dim=0)
            out.tokens[key] = feats[:, 0]
            if per_video > 1:
                out.motion[key] = feats[:, 1:]
            elif zero_motion > 0:
                out.motion[key] = feats.new_zeros(feats.shape[0], zero_motion, *feats.shape[2:])
        return out

    def _tiled_reference(self, rows, context, uncond_context, guidance: bool) -> dict[str, torch.Tensor]:
        # Hallo: rows tiled twice for CFG and the [uncond; cond] token sets tiled over them with
        # `repeat`, so row i cross-attends to token set i mod 2b (see parity README, case d).
        tokens = torch.cat([uncond_context, context]) if guidance else context
        if guidance:
            rows = rows.repeat(2, 1, 1, 1)
        tokens = tokens.repeat(rows.shape[0] // tokens.shape[0], 1, 1)
        return record_reference(self.reference_unet, rows, tokens.to(rows.dtype))

    # -- denoising ------------------------------------------------------------------------------
    def denoise(self, latents: torch.Tensor, timestep, cond: ClipConditions, guidance_scale: float):
        """One prediction with classifier-free guidance in one batched forward.

        latents: (b, 4, F, h, w) scaled. Returns (guided, uncond, cond) each (b, 4, F, h, w); without
        guidance (scale <= 1) all three are the conditional prediction.
        """
        guidance = guidance_scale > 1.0
        unet_cond = self.cfg_conditions(cond) if guidance else UNetConditions(
            audio=cond.audio, context=cond.context, face=cond.face, masks=cond.masks,
            motion_scale=cond.motion_scale, speed=cond.speed, reference=cond.reference)
        model_in = torch.cat([latents, latents]) if guidance else latents
        out = self.denoising_unet(model_in.to(self._param().dtype), timestep, unet_cond)
        if not guidance:
            return out, out, out
        uncond, conditional = out.chunk(2)
        return uncond + guidance_scale * (conditional - uncond), uncond, conditional

    @staticmethod
    def cfg_conditions(cond: ClipConditions) -> UNetConditions:
        """[uncond; cond] batch: the unconditional half gets zero audio and face features and the
        unconditional identity tokens; ReferenceFeatures.rows drops its reference tokens."""
        twice = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
        face = None if cond.face is None else torch.cat([torch.zeros_like(cond.face), cond.face])
        context = None if cond.context is None else torch.cat([cond.uncond_context, cond.context])
        masks = None if cond.masks is None else tuple([twice(m) for m in level] for level in cond.masks)
        return UNetConditions(audio=torch.cat([torch.zeros_like(cond.audio), cond.audio]), context=context,
                              face=face, masks=masks, motion_scale=cond.motion_scale, speed=twice(cond.speed),
                              reference=cond.reference)

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

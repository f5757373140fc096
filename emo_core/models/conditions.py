"""What one backbone forward eats, laid out for its batch rows.

Batch rows under classifier-free guidance are [unconditional videos; conditional videos]; a
"row" inside a block is one frame of one video: rows = batch * frames, frame-minor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange


@dataclass
class ReferenceFeatures:
    """ReferenceNet output for one clip, keyed by transformer-block path (e.g. `up_blocks.1.attentions.0.transformer_blocks.0`)
    and, with `plain_block_motion` (EMO preset), by the resnet paths of the attention-free blocks (`down_blocks.3.resnets.0`:
    that resnet's output as tokens; only their motion entries are read).

    tokens[key]: (batch, h*w, C) reference-image tokens (norm1 output of the paired ReferenceNet block).
    motion[key]: (batch, n_motion, h*w, C) the motion frames' tokens from the same block.
    plain: how many leading batch rows do not attend to the reference tokens (the CFG unconditional half:
        the batch is always [unconditional; conditional]). A Python int, not a mask, so the split is a slice:
        no host sync and nothing data-dependent for torch.compile.
    frame_major: Hallo quirk. Its reader tiles the per-video tokens with `repeat` on a 3-D tensor, so
        backbone row r (of batch*frames) takes the tokens of video r mod batch, not r // frames.
    """
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    motion: dict[str, torch.Tensor] = field(default_factory=dict)
    plain: int = 0
    frame_major: bool = False
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # fastpath, per video

    def _tile(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return x.repeat(frames, 1, 1) if self.frame_major else x.repeat_interleave(frames, dim=0)

    def for_block(self, key: str, frames: int, height: int, width: int):
        """-> (reference, plain rows of the batch*frames, motion (b, C, n, h, w) | None). reference: the tokens
        (batch*frames, L, C), or with the fast path's `kv` of this block their attn1 (key, value) pair, each
        (batch*frames, L, inner); None without ReferenceNet features for this block."""
        ref = self.tokens.get(key)
        if ref is not None:
            pair = self.kv.get(key)
            ref = self._tile(ref, frames) if pair is None else tuple(self._tile(t, frames) for t in pair)
        return ref, self.plain * frames, self.motion_for(key, height, width)

    def motion_for(self, key: str, height: int, width: int) -> torch.Tensor | None:
        """The motion frames' features recorded under `key` as (b, C, n, h, w), or None."""
        motion = self.motion.get(key)
        return None if motion is None else rearrange(motion, "b n (h w) c -> b c n h w", h=height, w=width)

    def to(self, device=None, dtype=None) -> ReferenceFeatures:
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return ReferenceFeatures({k: move(v) for k, v in self.tokens.items()},
                                 {k: move(v) for k, v in self.motion.items()}, self.plain, self.frame_major,
                                 {k: (move(a), move(b)) for k, (a, b) in self.kv.items()})


@dataclass
class UNetConditions:
    """Conditions of one backbone call (batch B, frames F, latent h x w).

    context: (B, T, D) identity tokens for the cross-attention slot, or None.
    audio: (B, F, T, A) audio tokens (zeros for the unconditional half).
    face: face-locator features, or None: (B, C0, F, h, w) added after conv_in (`face_added_to` "features", Hallo) or
        (B, 4, F, h, w) added to the noisy latent before conv_in ("latent", EMO preset).
    masks: Hallo's (full, face, lip), each a list over levels of (B*F, h_l*w_l), or None.
    motion_scale: (3,) weights of the full/face/lip audio branches, or None.
    speed: (B, F, T, S) speed tokens for EMO's speed layers, or None.
    reference: ReferenceNet features, or None.
    audio_kv: the audio modules' keys/values of the videos after the first `audio_plain` (whose audio is all
        zeros), by module path (fastpath; EmoNet.denoise fills them once per clip), or None.
    motion_const: each temporal module's motion-frame part (motion.MotionConst) by module path (fastpath, once
        per clip), or None.
    context_folds: each identity cross-attention's ContextFold of `context` by block path (fastpath, once per
        clip), or None.
    """
    audio: torch.Tensor
    context: torch.Tensor | None = None
    face: torch.Tensor | None = None
    masks: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
    motion_scale: torch.Tensor | None = None
    speed: torch.Tensor | None = None
    reference: ReferenceFeatures | None = None
    audio_kv: dict | None = None
    audio_plain: int = 0
    motion_const: dict | None = None
    context_folds: dict | None = None


@dataclass
class LayerInputs:
    """UNetConditions expanded once per forward to per-frame rows; shared by every block."""
    frames: int
    context: torch.Tensor | None
    audio: torch.Tensor | None
    masks: tuple | None
    motion_scale: torch.Tensor | None
    speed: torch.Tensor | None
    reference: ReferenceFeatures | None
    audio_kv: dict | None = None
    audio_plain: int = 0  # rows (videos x frames)
    motion_const: dict | None = None
    context_folds: dict | None = None

    @classmethod
    def build(cls, cond: UNetConditions, frames: int) -> LayerInputs:
        context = None if cond.context is None else cond.context.repeat_interleave(frames, dim=0)
        audio = None if cond.audio is None else cond.audio.flatten(0, 1)
        return cls(frames, context, audio, cond.masks, cond.motion_scale, cond.speed, cond.reference,
                   cond.audio_kv, cond.audio_plain * frames, cond.motion_const, cond.context_folds)

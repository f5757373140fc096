"""The training loss: epsilon-prediction diffusion MSE on SD 1.5's DDPM schedule (scaled_linear 0.00085-0.012,
1000 steps), with the network conditioned exactly as the sampler conditions it (sampler._clip_conditions), so
trained weights work at inference: CFG dropout reproduces the sampler's unconditional half (zero audio tokens;
no reference tokens and zero face features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..network import ClipConditions, EmoNet
from .batches import TRAIN_TIMESTEPS, StageBatch, hallo_masks_for


def ddpm_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon")


class DiffusionObjective(nn.Module):
    """Wraps EmoNet so that one forward is one loss (DDP wraps this module). forward(batch) -> scalar loss."""

    def __init__(self, net: EmoNet):
        super().__init__()
        self.net = net
        alphas = ddpm_scheduler().alphas_cumprod.to(torch.float32)
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) for clean/noise (b, 4, F, h, w) and timesteps (b,) (DDPMScheduler.add_noise)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        return a.sqrt() * clean + (1 - a).sqrt() * noise

    def forward(self, batch: StageBatch) -> torch.Tensor:
        out, batch = self.predict(batch)
        # The output covers the f current frames only: motion frames enter through ReferenceNet, never the loss.
        return F.mse_loss(out.float(), batch.noise.float())

    def predict(self, batch: StageBatch) -> tuple[torch.Tensor, StageBatch]:
        """(predicted noise (b, 4, F, h, w), the batch in the row order it was computed in: reference-dropped
        samples first, see _dropped_first; `batch.index` names each row's sample)."""
        batch = _dropped_first(batch)
        noisy = self.add_noise(batch.target, batch.noise, batch.timesteps)
        cond = self.conditions(batch)
        return self.net.denoising_unet(noisy, batch.timesteps, EmoNet.plain_conditions(cond)), batch

    def conditions(self, batch: StageBatch) -> ClipConditions:
        net, cfg = self.net, self.net.config
        b, frames = batch.target.shape[0], batch.target.shape[2]
        dropped = int(batch.drop_reference.sum())
        context, uncond = net.identity_tokens(None, batch=b)
        context = torch.cat([uncond[:dropped], context[dropped:]])
        n = 0 if batch.motion is None else batch.motion.shape[1]
        ref = net.reference_features(batch.reference, context, uncond, guidance=False, per_video=1 + n)
        ref.plain = dropped  # rows [0, dropped) attend to no reference tokens, as the sampler's uncond half
        ref = net.with_motion(ref, batch.motion, context, uncond, guidance=False)
        keep_audio = (~batch.drop_audio).to(batch.target.dtype).view(-1, 1, 1, 1)
        audio = net.audio_tokens(batch.audio) * keep_audio
        face = net.face_features(batch.face_mask, frames)
        face = torch.cat([torch.zeros_like(face[:dropped]), face[dropped:]])
        masks = None
        if cfg.audio_attention.form == "hierarchical":
            masks = hallo_masks_for(batch.face_mask, frames, len(cfg.unet.block_out_channels))
        scale = torch.ones(3, device=batch.target.device)
        return ClipConditions(audio=audio, face=face, context=context, uncond_context=uncond, masks=masks,
                              motion_scale=scale, speed=net.speed_tokens(batch.speed), reference=ref)


def _dropped_first(batch: StageBatch) -> StageBatch:
    """The batch reordered so that the reference-dropped samples lead: ReferenceFeatures.plain is a row count
    (a slice, as in the sampler), so they must be the first rows. The loss is a mean, so order is free."""
    order = torch.argsort((~batch.drop_reference).to(torch.int8), stable=True)
    if bool((order == torch.arange(len(order), device=order.device)).all()):
        return batch
    take = {k: (v[order] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    return StageBatch(**take)

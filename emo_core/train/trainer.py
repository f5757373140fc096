"""The training loop on Hugging Face Accelerate: one GPU, many GPUs or nodes (`accelerate launch` or `torchrun`,
DDP, or torch FSDP2 sharding with `sharding = "fsdp"`, see sharding.py; gloo on CPU), bf16/fp16 mixed precision,
gradient accumulation, gradient checkpointing, EMA, checkpoint and exact resume, TensorBoard scalars and periodic
sample clips, a progress bar with ETA.

Exact resume: model, optimiser, LR scheduler, EMA and RNG states go through `accelerator.save_state`; the data
position is the optimizer step (order.py), and every random draw of a sample is seeded by its global position
(batches.py), so a resumed run continues the uninterrupted run's loss curve.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field

import torch

from ..checkpoint import load_network, save_native
from ..errors import InvalidInputError, MissingDependencyError
from ..network import EmoNet
from . import order, sharding, stages
from .batches import SD15_LATENT_SCALE, BatchSpec, Decoder, Encoder, build_batch, pool_encoder
from .config import TrainConfig
from .ema import EMA
from .objective import DiffusionObjective

log = logging.getLogger(__name__)

LOSS_FILE = "loss.jsonl"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """What the loop itself must remember across a resume: the optimizer step done."""
    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


@dataclass
class TrainResult:
    """model: the native EMO file; ema_model: the EMA weights' file or None; losses: {step: loss} of this run."""
    model: str
    ema_model: str | None
    step: int
    losses: dict[int, float] = field(default_factory=dict)


def build_network(cfg: TrainConfig) -> EmoNet:
    """The stage's starting network (see stages.py for the key maps); random parts seeded by `cfg.seed`, so every
    process starts from the same weights."""
    torch.manual_seed(cfg.seed)
    if cfg.stage == "hallo_speed":
        return stages.hallo_speed_network(cfg.init_from)
    if cfg.init_from:
        net = load_network(cfg.init_from)
    else:
        net = EmoNet(stages.network_config(cfg.network))
        stages.zero_new_outputs(net)
        if cfg.stage != "stage1":
            log.warning("stage %s starts from a random network: set init_from to the previous stage's file",
                        cfg.stage)
    if cfg.stage == "stage1" and cfg.sd_unet:
        stages.init_from_sd(net, cfg.sd_unet)
    elif cfg.stage == "stage1":
        log.warning("stage1 without sd_unet: ReferenceNet and the backbone start random, not from SD 1.5")
    if cfg.stage == "stage2" and cfg.animatediff:
        stages.init_from_animatediff(net, cfg.animatediff)
    if cfg.stage != "stage1" and cfg.motion_frames != net.config.motion_frames:
        raise InvalidInputError(f"motion_frames={cfg.motion_frames} differs from the network's "
                                f"{net.config.motion_frames}; set it to the network's value")
    return net.float().train()


def latent_codec(spec: str, device: torch.device) -> tuple[Encoder | None, Decoder | None]:
    """`vae` -> (encode, decode). "": samples must carry latents, nothing to decode with; "none": pool_encoder
    (tests only), previews show the latent view; a diffusers AutoencoderKL folder: both ways through it."""
    if not spec:
        return None, None
    if spec == "none":
        return pool_encoder, None
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(spec).to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(frames: torch.Tensor) -> torch.Tensor:
        # mode(), not sample(): the latent of a frame is then the same in every run and process.
        return vae.encode(frames.to(device, vae.dtype)).latent_dist.mode().float().cpu() * SD15_LATENT_SCALE

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        x = vae.decode(latents.to(device, vae.dtype)).sample.float().cpu()
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return encode, decode


def _accelerator(cfg: TrainConfig, out: str):
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
    except ImportError as err:
        raise MissingDependencyError("training needs Hugging Face Accelerate: pip install 'comfyui-emo[train]'") from err
    trackers = "tensorboard" if _has_tensorboard() else None
    # Sharded runs cast through FSDP's policy and their own autocast (sharding.py); Accelerate's would add a
    # gradient scaler that cannot see their optimizer.
    precision = "no" if cfg.sharding == "fsdp" else cfg.mixed_precision
    # find_unused_parameters: Hallo skips its plain blocks' motion modules, ReferenceNet's last layers feed nothing.
    # cpu: without a GPU, processes started by torchrun / accelerate launch form a gloo group (accelerate only
    # does that when told the run is on the CPU).
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       log_with=trackers, project_config=ProjectConfiguration(project_dir=out, logging_dir=out),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return False


def _batch_spec(cfg: TrainConfig, net: EmoNet) -> BatchSpec:
    return BatchSpec(video=cfg.stage != "stage1", clip_frames=cfg.clip_frames if cfg.stage != "stage1" else 1,
                     motion_frames=cfg.motion_frames if cfg.stage != "stage1" else 0,
                     speed="speed" in cfg.groups() and net.config.speed is not None,
                     drop_audio=cfg.drop_audio, drop_reference=cfg.drop_reference, seed=cfg.seed)


def train(cfg: TrainConfig, dataset, out: str, resume: bool = False) -> TrainResult:
    """Train `cfg.stage` on `dataset` (map-style, items are ClipSample) and write native EMO files into `out`.

    resume: continue from the newest checkpoint in `out/checkpoints` (a fresh start when there is none)."""
    from .loop import run_loop
    from .previews import check_previews, preview_source
    cfg.check_runnable()
    previews = preview_source(cfg, dataset)  # before the network and VAE load: a bad path costs no wait
    net = build_network(cfg)
    check_previews(previews, net.config, has_encoder=bool(cfg.vae))
    accelerator = _accelerator(cfg, out)
    trainable = stages.select_trainable(net, cfg.groups())
    if cfg.gradient_checkpointing:
        stages.enable_gradient_checkpointing(net)
    model = DiffusionObjective(net)
    if cfg.sharding == "fsdp":  # before the optimizer and EMA: sharding replaces the parameters
        model = sharding.shard(model, cfg.mixed_precision, accelerator.num_processes, accelerator.device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                                  fused=_fused_adam(params))
    warmup = cfg.lr_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    if cfg.sharding != "fsdp":  # DDP; a sharded model is never wrapped again (sharding.py)
        model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(params, cfg.ema_decay) if cfg.ema else None
    state = TrainState()
    checkpointed = [scheduler, state]
    if cfg.sharding == "fsdp":  # each rank saves its own shards of model, optimizer and EMA
        sharding.register_checkpointing(accelerator, model, optimizer, ema)
    elif ema is not None:
        checkpointed.append(ema)
    accelerator.register_for_checkpointing(*checkpointed)
    if resume:
        _resume(accelerator, out)
    log.info("training %s: %d trainable tensors (%s), global batch %d on %d process(es), step %d of %d",
             cfg.stage, len(trainable), ", ".join(cfg.groups()), cfg.batch_size, accelerator.num_processes,
             state.step, cfg.max_steps)
    if accelerator.is_main_process:
        os.makedirs(out, exist_ok=True)
        accelerator.init_trackers(f"emo_{cfg.stage}")
    encode, decode = latent_codec(cfg.vae, accelerator.device)
    losses = run_loop(cfg, accelerator, model, optimizer, scheduler, ema, state, dataset, _batch_spec(cfg, net),
                      (encode, decode), previews, out)
    result = _finish(cfg, accelerator, model, ema, state, out, losses)
    for tracker in accelerator.trackers:  # not end_training(): it also destroys the process group
        tracker.finish()
    _forget_accelerator_settings()
    return result


def release_processes() -> None:
    """Destroy the process group a distributed run made (emo-train's exit). train() leaves it so that a process
    can train again (stage 2 then stage 3 in one torchrun script, tests)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _fused_adam(params) -> bool:
    """torch's fused AdamW kernel (one pass over all tensors) where it exists: on the CPU it takes the tiny test
    network's update from 0.111 s to 0.030 s per step (torch's default there loops tensor by tensor)."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)


def _forget_accelerator_settings() -> None:
    """Accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with other settings
    (precision, accumulation); a later train() call in the same process (Python API, tests) needs them gone.
    The process group (PartialState) stays for that call; release_processes() ends it. Private API, as
    accelerate's own tests use it."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state()
    GradientState._reset_state()


def _resume(accelerator, out: str) -> None:
    folder = latest_checkpoint(out)
    if folder is None:
        log.info("no checkpoint in %s: starting at step 0", os.path.join(out, CHECKPOINTS))
        return
    accelerator.load_state(folder)
    log.info("resumed from %s", folder)


def latest_checkpoint(out: str) -> str | None:
    root = os.path.join(out, CHECKPOINTS)
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-")) if os.path.isdir(root) else []
    return os.path.join(root, f"step-{steps[-1]}") if steps else None


def save_checkpoint(cfg: TrainConfig, accelerator, state: TrainState, out: str) -> None:
    """accelerate's full state (model, optimizer, RNG, scheduler, EMA, step); keeps the newest `keep_checkpoints`."""
    folder = os.path.join(out, CHECKPOINTS, f"step-{state.step}")
    accelerator.save_state(folder)
    if accelerator.is_main_process and cfg.keep_checkpoints:
        root = os.path.join(out, CHECKPOINTS)
        old = sorted((int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-")))[:-cfg.keep_checkpoints]
        for step in old:
            shutil.rmtree(os.path.join(root, f"step-{step}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def _finish(cfg: TrainConfig, accelerator, model, ema: EMA | None, state: TrainState, out: str,
            losses: dict[int, float]) -> TrainResult:
    save_checkpoint(cfg, accelerator, state, out)
    path = os.path.join(out, f"emo_{cfg.stage}.safetensors")
    ema_path = os.path.join(out, f"emo_{cfg.stage}_ema.safetensors") if ema is not None else None
    if cfg.sharding == "fsdp":
        sharding.save_native_files(model, ema, path, ema_path)
    elif accelerator.is_main_process:
        net = accelerator.unwrap_model(model).net
        save_native(net.eval(), path)
        if ema is not None:
            with ema.swapped():
                save_native(net, ema_path)
    if accelerator.is_main_process:
        with open(os.path.join(out, "train_config.json"), "w", encoding="utf-8") as f:
            json.dump({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, f, indent=1)
        log.info("wrote %s%s at step %d", path, f" and {ema_path}" if ema_path else "", state.step)
    accelerator.wait_for_everyone()
    return TrainResult(path, ema_path, state.step, losses)

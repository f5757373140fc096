"""The optimisation loop of trainer.train: data order, accumulation, logging, checkpoints and sample clips."""
from __future__ import annotations

import json
import logging
import os
import time

import torch

from .. import fastpath
from . import order, sharding
from .batches import build_batch, preload_picked_frames

log = logging.getLogger(__name__)


def _as_list(items):
    return items


class _Picked(torch.utils.data.Dataset):
    """dataset[(index, position)]: the sample with the frames its step picks already decoded (lazy frames), so the
    workers decode and the training process only indexes."""

    def __init__(self, dataset, spec):
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, position = item
        return preload_picked_frames(self.dataset[index], position, self.spec)


def _loader(dataset, cfg, accelerator, start: int, spec):
    """A DataLoader yielding this process's ClipSamples per micro step from `start` on (workers prefetch)."""
    rank, world, acc = accelerator.process_index, accelerator.num_processes, cfg.gradient_accumulation_steps
    plan = [order.positions(step, micro, cfg.batch_size, acc, rank, world)
            for step in range(start, cfg.max_steps) for micro in range(acc)]
    sampler = [list(zip(order.dataset_indices(p, cfg.seed, len(dataset)), p)) for p in plan]
    loader = torch.utils.data.DataLoader(_Picked(dataset, spec), batch_sampler=sampler, collate_fn=_as_list,
                                         num_workers=cfg.num_workers)
    return plan, loader


def run_loop(cfg, accelerator, model, optimizer, scheduler, ema, state, dataset, spec, codec, previews,
             out) -> dict:
    """Optimizer steps state.step..cfg.max_steps; returns {step: loss averaged over processes and micro steps}.
    codec: the run's (encode, decode) (trainer.latent_codec); previews: a previews.PreviewSource or None."""
    from tqdm.auto import tqdm

    from .trainer import LOSS_FILE, save_checkpoint

    cfg.per_process_batch(accelerator.num_processes)
    encode, decode = codec
    net_cfg = accelerator.unwrap_model(model).net.config
    plan, loader = _loader(dataset, cfg, accelerator, state.step, spec)
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=f"EMO {cfg.stage}", unit="step",
               disable=not accelerator.is_local_main_process)
    losses, running, started = {}, [], time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with fastpath.enabled(False):  # the inference caches (per-clip keys/values) have no place under autograd
        for positions, samples in zip(plan, loader):
            batch = build_batch(samples, positions, spec, net_cfg, encode).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = model(batch)
                accelerator.backward(loss)
                # Guarded here, not by Accelerate's optimizer wrapper: a sharded run's optimizer is not wrapped.
                if accelerator.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        clip = sharding.clip_grad_norm_ if cfg.sharding == "fsdp" else accelerator.clip_grad_norm_
                        clip(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            running.append(accelerator.reduce(loss.detach().float(), reduction="mean"))
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            if ema is not None:
                ema.update()
            state.step += 1
            value = float(torch.stack(running).mean())
            running = []
            losses[state.step] = value
            _report(cfg, accelerator, state.step, value, scheduler, bar, out, LOSS_FILE, time.perf_counter() - started)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps:
                save_checkpoint(cfg, accelerator, state, out)
            if previews is not None and state.step % cfg.sample_every == 0:
                _previews(cfg, accelerator, model, previews, codec, ema, state.step, out)
    bar.close()
    done = len(losses) * cfg.batch_size
    log.info("%d samples in %.1f s (%.2f samples/s)", done, time.perf_counter() - started,
             done / max(time.perf_counter() - started, 1e-9))
    return losses


def _previews(cfg, accelerator, model, previews, codec, ema, step: int, out: str) -> None:
    """Sample clips on the main process. A sharded network is first gathered into a plain copy (every process
    takes part), since the sampler's forward would need every rank at each block."""
    from .previews import write_previews

    net = accelerator.unwrap_model(model).net
    if cfg.sharding == "fsdp":
        net, ema = sharding.gathered_network(model, ema, accelerator.device), None  # the copy holds the EMA weights
    if accelerator.is_main_process:
        write_previews(cfg, accelerator, net, previews, *codec, ema, step, out)


def _report(cfg, accelerator, step: int, loss: float, scheduler, bar, out: str, loss_file: str,
            seconds: float) -> None:
    """Progress bar, the loss file (one JSON line per step: step, loss, seconds since this run's loop began) and
    TensorBoard scalars every `log_every` steps."""
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if not accelerator.is_main_process:
        return
    with open(os.path.join(out, loss_file), "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "loss": loss, "seconds": round(seconds, 4)}) + "\n")
    if cfg.log_every and step % cfg.log_every == 0:
        accelerator.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
        log.debug("step %d loss %.5f", step, loss)

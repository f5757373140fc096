"""Exponential moving average of the trained parameters (fp32 shadow copies), checkpointable by accelerate."""
from __future__ import annotations

import contextlib

import torch


class EMA:
    """shadow = decay * shadow + (1 - decay) * param after each optimizer step, with diffusers' EMAModel
    warm-up (decay limited to (1 + n) / (10 + n) at update n) so early weights are not dominated by the start."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - decay)

    @contextlib.contextmanager
    def swapped(self):
        """The EMA weights inside the block, the trained ones restored after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in zip(saved, self.params):
                    p.copy_(k)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params)]

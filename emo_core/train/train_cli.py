"""`emo-train`: train one EMO stage on prepared shards.

    emo-train --config stage3.toml --data DIR --out DIR [--resume] [key=value ...]
    accelerate launch --num_processes 8 -m emo_core.train.train_cli --config ...   # many GPUs / nodes
    torchrun --nproc_per_node 8 -m emo_core.train.train_cli --config ...

`--config` is a TOML file or the name of a packaged one (stage1, stage2, stage3, hallo_speed); key=value pairs
override its keys (values in TOML syntax: lr=2e-5, trainable='["speed","temporal"]').
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import EmoError
from .config import STAGES, load_config, parse_override
from .console import log_to_stderr

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo-train", description="Train EMO weights (paper stages 1-3, Hallo shortcut).")
    p.add_argument("--config", required=True, help=f"TOML file or packaged name: {', '.join(STAGES)}")
    p.add_argument("--data", required=True, help="folder of prepared shards (emo-prepare)")
    p.add_argument("--out", required=True, help="output folder: checkpoints, logs, samples, .safetensors")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_to_stderr(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s", "emo-train")
    try:
        from .shards import ShardDataset, shard_paths
        from .trainer import release_processes, train

        overrides = dict(parse_override(o) for o in args.overrides)
        if args.config in STAGES and not os.path.exists(args.config):
            cfg = load_config(None, overrides, stage=args.config)
        else:
            cfg = load_config(args.config, overrides)
        paths = shard_paths(args.data)
        try:
            result = train(cfg, ShardDataset(paths, lazy_frames=True), args.out, resume=args.resume)
        finally:
            release_processes()
    except EmoError as err:
        log.error("%s", err)
        return 2
    log.info("done: %s (step %d)", result.model, result.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m emo_core.convert FILE.pth [OUT.safetensors]`: a pickle-based checkpoint as .safetensors.

Run it once where torch >= 2.6 is installed (older torch cannot read pickle files safely; see
`pickle_safety`); the .safetensors file then loads anywhere without unpickling. Nothing is overwritten.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import EmoError, InvalidInputError
from .pickle_safety import PICKLE_SUFFIXES, load_pickle_tensors

log = logging.getLogger(__name__)


def convert(src: str, dst: str | None = None) -> str:
    """Write the tensors of `src` (.pth/.pt/.ckpt/.bin) to `dst` (default: same name, .safetensors)."""
    from safetensors.torch import save_file

    if not src.lower().endswith(PICKLE_SUFFIXES):
        raise InvalidInputError(f"'{src}' is not a pickle-based checkpoint ({', '.join(PICKLE_SUFFIXES)})")
    dst = dst or os.path.splitext(src)[0] + ".safetensors"
    if os.path.exists(dst):
        raise InvalidInputError(f"'{dst}' exists already; remove it or name another output file")
    # safetensors stores neither shared nor strided storage: one contiguous copy per tensor.
    state = {k: v.detach().contiguous().clone() for k, v in load_pickle_tensors(src).items()}
    tmp = dst + ".partial"
    save_file(state, tmp)
    os.replace(tmp, dst)
    log.info("wrote %d tensors from %s to %s", len(state), src, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emo_core.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="the .pth / .pt / .ckpt / .bin file")
    parser.add_argument("dst", nargs="?", help="output .safetensors (default: beside the input)")
    args = parser.parse_args(argv)
    try:
        dst = convert(args.src, args.dst)
    except EmoError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(f"{dst}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

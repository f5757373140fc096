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
    # Mapped from the file, not read into RAM: a 5 GB net.pth converts without 5 (or, copied, 10) GB of RAM.
    state = _own_storage(load_pickle_tensors(src, mmap=True))
    tmp = dst + ".partial"
    try:
        save_file(state, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):  # an error or Ctrl-C while writing: no half file left behind
            os.remove(tmp)
    log.info("wrote %d tensors from %s to %s", len(state), src, dst)
    return dst


def _own_storage(state: dict) -> dict:
    """safetensors stores neither shared nor strided storage: copy a tensor only when it is not contiguous or
    shares its storage with one seen before (tied weights); the rest are written as they are."""
    seen, out = set(), {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or (ptr in seen and tensor.numel()):
            tensor = tensor.contiguous().clone()
        seen.add(ptr)
        out[key] = tensor
    return out


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

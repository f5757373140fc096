"""`emo-models fetch | list | verify`: get a family's model files on purpose, see what is there, check digests.

Exit status: 0 when every file asked about is present and sound; 1 when a file is corrupt, could not be fetched
or (with --family) is missing, each named; 2 for a bad option or folder; 130 when interrupted (nothing
half-placed is left; finished files are kept).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

from ..errors import EmoError, InvalidInputError
from .catalog import FAMILIES, NO_WEIGHTS, family
from .layout import models_root
from .record import Record

log = logging.getLogger("emo_core.model_files")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emo-models", description="Download, list and verify the model files of "
                                "ComfyUI-EMO's checkpoint families. Nothing is downloaded except by 'fetch'.")
    sub = p.add_subparsers(dest="command", required=True)
    names = [*FAMILIES, *NO_WEIGHTS]
    for name, text in (("fetch", "download a family's files and place them where the pack looks"),
                       ("list", "show which files are present, missing or corrupt (by size), with sizes"),
                       ("verify", "check present files against their recorded SHA-256; corrupt ones are set aside")):
        cmd = sub.add_parser(name, help=text, description=text)
        where = cmd.add_mutually_exclusive_group()
        where.add_argument("--comfyui", metavar="PATH", help="a ComfyUI install: files go to PATH/models/...")
        where.add_argument("--dir", metavar="PATH", help="a folder of its own, laid out like ComfyUI's models/ "
                                                         "(default: $EMO_MODELS_DIR, else ./models)")
        cmd.add_argument("--family", choices=names, required=name == "fetch", help="the checkpoint family"
                         + ("" if name == "fetch" else " (default: every family)"))
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    fetch = sub.choices["fetch"]
    fetch.add_argument("--with", dest="extras", action="append", default=[], metavar="EXTRA",
                       help="also fetch an optional group: identity (Hallo's face-identity model), acc (EchoMimic's "
                            "6-step weights); repeatable")
    fetch.add_argument("--force", action="store_true", help="fetch again and replace files already there")
    fetch.add_argument("--mediapipe-wheel", metavar="FILE", help="a local copy of the pinned MediaPipe wheel "
                       "(instead of pip download)")
    sub.choices["verify"].add_argument("--keep", action="store_true",
                                       help="report corrupt files but leave them in place")
    return p


def main(argv: list[str] | None = None, *, stream: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = stream if stream is not None else sys.stdout
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root_log = logging.getLogger("emo_core")
    old = root_log.level, root_log.propagate
    root_log.addHandler(handler)  # the command owns its process; library modules never add handlers
    root_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    root_log.propagate = False
    try:
        return _run(args, out)
    except KeyboardInterrupt:
        out.write("interrupted; finished files are kept, run the command again to go on\n")
        return 130
    except EmoError as err:
        out.write(f"error: {err}\n")
        return 2
    finally:
        root_log.removeHandler(handler)
        root_log.setLevel(old[0])
        root_log.propagate = old[1]


def _run(args, out: TextIO) -> int:
    root = models_root(args.comfyui, args.dir)
    families = [family(args.family)] if args.family else list(FAMILIES.values())
    if args.command == "fetch":
        return _fetch(families[0], root, args, out)
    record = Record.load(root)
    out.write(f"models folder {root}\n")
    bad = 0
    for fam in families:
        if args.command == "list":
            from .status import list_files
            statuses = list_files(fam, root, record)
        else:
            from .status import verify_files
            statuses = verify_files(fam, root, record, quarantine=not args.keep)
        out.write(f"{fam.name}:\n")
        for s in statuses:
            optional = f" [optional: --with {s.file.extra}]" if s.file.extra else ""
            size = "" if s.size is None else f"  {_size(s.size)}"
            detail = f"  ({s.detail})" if s.detail else ""
            out.write(f"  {s.state:<9} {s.file.relpath}{size}{detail}{optional}\n")
            # Without --family every family is shown: only the asked-for family's missing files are a failure.
            bad += s.state == "corrupt" or (s.state == "missing" and s.file.extra is None and bool(args.family))
    if bad:
        hint = f"emo-models fetch --family {args.family or 'FAMILY'} --dir {root}"
        out.write(f"{bad} file(s) missing or corrupt; `{hint}` gets them\n")
    return 1 if bad else 0


def _fetch(fam, root: Path, args, out: TextIO) -> int:
    from .fetch import FetchOptions, fetch_family

    unknown = set(args.extras) - set(fam.extras)
    if unknown:
        has = f"the optional groups {', '.join(fam.extras)}" if fam.extras else "no optional files"
        raise InvalidInputError(f"--with {', '.join(sorted(unknown))}: the {fam.name} family has {has}")
    out.write(f"fetching the {fam.name} family into {root}\n")
    options = FetchOptions(frozenset(args.extras), args.force, args.mediapipe_wheel)

    def report(o) -> None:
        size = "" if o.size is None else f"  {_size(o.size)}"
        detail = f"  ({o.detail})" if o.detail else ""
        out.write(f"  {o.state:<8} {o.relpath}{size}{detail}\n")
        out.flush()

    outcomes = fetch_family(fam, root, options, report=report)
    failed = [o for o in outcomes if o.state == "failed"]
    out.write(f"{len(outcomes) - len(failed)} of {len(outcomes)} files in place"
              + (f"; {len(failed)} failed (named above): run the command again" if failed else "") + "\n")
    return 1 if failed else 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


if __name__ == "__main__":
    sys.exit(main())

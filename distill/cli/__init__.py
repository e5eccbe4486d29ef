"""``distill``: the command line. Each command reads like a sentence: ``distill embed IMAGES --teacher sam_vit_b``.

Errors the user can fix print one line and exit 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sam_distill.core.errors import DistillError

# Command modules, one per verb: each has ``register(subparsers)`` adding its commands with ``func`` defaults.
COMMAND_MODULES = [
    "sam_distill.cli.stages",
    "sam_distill.cli.predict",
    "sam_distill.cli.evaluate",
    "sam_distill.cli.export",
    "sam_distill.cli.demo",
]
# Spellings of the previous release (commands grouped by origin), each answered with what replaced it.
RENAMED = {
    "segment": "`distill predict MODEL IMAGES --out DIR [--box X0 Y0 X1 Y1 | --point X,Y | --text TEXT]`",
    "mask-ap": "`distill eval ap RESULTS --annotations GT.json`",
    "prompter": "`distill run CONFIG` (train), `distill eval ap MODEL --annotations GT.json --images DIR` (eval) "
                "and `distill predict MODEL IMAGES --out DIR` (predict)",
    "sam-cls": "`distill predict MODEL IMAGES --out DIR [--text TEXT]`",
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="distill", description="Distil SAM into small models for phones and Jetson boards.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or bool(os.environ.get("SAM_DISTILL_DEBUG"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        command = next((word for word in argv if not word.startswith("-")), None)
        if command in RENAMED:
            raise DistillError(f"`distill {command}` is now {RENAMED[command]}")
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        result = args.func(args)
        return int(result or 0)
    except DistillError as err:
        if debug:
            raise
        print(f"distill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())

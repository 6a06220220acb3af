"""`e3d2` command line: one subcommand per user-facing task, each implemented by a library module.

A subcommand's module defines `add_arguments(parser)` and `run(args) -> int | None`; modules are
imported only when their subcommand runs, so `e3d2 --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from e3d2_hf import __version__
from e3d2_hf.utils import E3D2Error

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("e3d2_hf.data.prepare", "AIST++ or the embedded synthetic default -> datasets on disk"),
    "metrics": ("e3d2_hf.evaluation.score_dances", "the paper's Table 1 metrics for a folder of dances"),
    "dance": ("e3d2_hf.inference", "make a trained policy dance to a music file"),
    "launch": ("e3d2_hf.launch", "start a stage script as N real processes (gloo ranks on CPU, one per GPU)"),
    "pipeline": ("e3d2_hf.pipeline", "the whole E3D2 pipeline from one recipe: prepare -> ... -> ppo -> eval -> a dance"),
    "publish": ("e3d2_hf.hub", "a trained policy -> a Hub-ready folder with model card and dance GIF, uploaded"),
    "render": ("e3d2_hf.dance_files", "any dance file (ours, BVH, SMPL, AIST++, Bailando, EDGE) -> a skeleton video, several side by side"),
}


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of `e3d2` (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="e3d2", description="E3D2: dance generation with RL from a learned reward.")
    parser.add_argument("--version", action="version", version=f"e3d2-hf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do (e3d2 COMMAND --help for its options)")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if command == name:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except E3D2Error as exc:
        print(f"e3d2 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"e3d2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

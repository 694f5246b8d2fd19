"""The ``zxl`` command: the one composition root. Library code never parses argv.

Each package adds its own subcommands (``zxl.<package>.commands.add_commands``); this module puts
them under one parser and turns the errors a user can fix into one line and an exit code.
``main(argv)`` takes a list so tests call every subcommand in-process.
"""

from __future__ import annotations

import argparse
import sys

from zxl import __version__
from zxl.catalog import commands as catalog_commands
from zxl.config import ConfigError
from zxl.pipeline import commands as pipeline_commands
from zxl.sampler import commands as sampler_commands
from zxl.trainer import commands as trainer_commands

PACKAGES = (pipeline_commands, catalog_commands, sampler_commands, trainer_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zxl",
        description="Curate image URLs into a scored, tagged, captioned Parquet catalog for a ZTSNR "
        "v-prediction SDXL fine-tune, and look at it, query it and export it for training.",
    )
    parser.add_argument("--version", action="version", version=f"zxl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for package in PACKAGES:
        package.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, f"{args.command}_command", "") is None:  # catalog or demo without an action
        parser.parse_args([args.command, "--help"])
        return 2
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"zxl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a failed shard, checkpoint or loss: say so without a traceback
        from zxl.pipeline.executor import ShardFailedError
        from zxl.pipeline.stages import RunFolderBusyError
        from zxl.trainer.checkpoint import CheckpointError

        if not isinstance(e, ShardFailedError | CheckpointError | FloatingPointError | RunFolderBusyError):
            raise
        print(f"zxl {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""What every package's subcommands share: the ``--config``/``--set`` pair.

Each package adds its own subcommands (``add_commands(subparsers)`` in ``zxl.<package>.commands``);
``zxl.cli`` puts them together.
"""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="YAML",
        help="a preset from configs/ (repeatable; later files win)",
    )
    p.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override one key, e.g. --set fetch.timeout=5 (repeatable; wins over --config)",
    )

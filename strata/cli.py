"""The ``strata`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import strata

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata", description="Strata: three-tier data store tools"
    )
    parser.add_argument("--version", action="version", version=f"strata {strata.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0  # pragma: no cover - subcommands arrive with the migrations issue


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `proxyd` console script: `proxyd check FILE` validates a configuration."""

from __future__ import annotations

import argparse
import sys

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="proxyd",
        description="proxyd tools. Run the proxy itself with `twistd proxyd --config FILE`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a configuration file without serving")
    check.add_argument("file")
    args = parser.parse_args(argv)
    try:
        config = load(args.file)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        print(f"{args.file}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(config.pools)} pools, {len(config.tcp)} tcp listeners)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

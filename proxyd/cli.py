"""The `proxyd` console script: `proxyd check FILE` validates a configuration."""

from __future__ import annotations

import argparse
import sys

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads, read
from proxyd.config.warnings import tls_warnings, warnings
from proxyd.relay.http.routing import unreachable

__all__ = ["main", "tls_warnings"]


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
        text = read(args.file)
        config = loads(text, args.file, serving=True)
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        print(f"{args.file}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in warnings(config, text, unreachable):
        print(warning, file=sys.stderr)
    counts = f"{len(config.pools)} pools, {len(config.tcp)} tcp listeners"
    if config.http:
        counts += f", {len(config.http)} http listeners"
    if config.udp:
        counts += f", {len(config.udp)} udp listeners"
    if config.websocket:
        counts += f", {len(config.websocket)} websocket listeners"
    if config.gslb:
        counts += f", {len(config.gslb)} gslb listeners"
    print(f"{args.file}: ok ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `proxyd` console script: `proxyd check FILE` validates a configuration."""

from __future__ import annotations

import argparse
import datetime
import re
import sys

from proxyd.config.errors import ConfigErrors
from proxyd.config.ini import strip_comment
from proxyd.config.load import load
from proxyd.config.model import Certificate, Config, RouteConfig, TlsCheck
from proxyd.relay.http.routing import unreachable

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*\s*=\s*")


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
    for warning in warnings(config):
        print(warning, file=sys.stderr)
    counts = f"{len(config.pools)} pools, {len(config.tcp)} tcp listeners"
    if config.http:
        counts += f", {len(config.http)} http listeners"
    if config.udp:
        counts += f", {len(config.udp)} udp listeners"
    if config.websocket:
        counts += f", {len(config.websocket)} websocket listeners"
    print(f"{args.file}: ok ({counts})")
    return 0


def warnings(config: Config) -> list[str]:
    """One line per problem that does not stop proxyd: expired or expiring certificates,
    upstream TLS that is not verified, routes that can never match."""
    try:
        with open(config.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []

    def text(route: RouteConfig) -> str:
        if not 0 < route.line <= len(lines):
            return route.name
        return _KEY.sub("", strip_comment(lines[route.line - 1].strip()), count=1)

    found = tls_warnings(config)
    for http in config.http:
        for route, shadow in unreachable(http.routes):
            found.append(
                f"{config.path}:{route.line}: [http {http.name}] routes: this route can never "
                f"match: {text(route)!r} is shadowed by line {shadow.line} ({text(shadow)!r})"
            )
    return found


_EXPIRY_WARNING = datetime.timedelta(days=14)


def expiry_warning(certificate: Certificate, now: datetime.datetime | None = None) -> str | None:
    """What to say of a certificate that has expired or expires within 14 days."""
    now = now or datetime.datetime.now(datetime.UTC)
    left = certificate.not_after - now
    when = f"{certificate.not_after:%Y-%m-%d %H:%M} UTC"
    if left <= datetime.timedelta(0):
        return (
            f"{certificate.path} EXPIRED on {when}; clients will refuse it"
            " (expired_certificates = refuse stops proxyd instead)"
        )
    if left < _EXPIRY_WARNING:
        return f"{certificate.path} expires on {when}"
    return None


def tls_warnings(config: Config, now: datetime.datetime | None = None) -> list[str]:
    now = now or datetime.datetime.now(datetime.UTC)
    found = []
    listeners = [(f"tcp {t.name}", t.tls) for t in config.tcp]
    listeners += [(f"{h.kind} {h.name}", h.tls) for h in config.http]
    listeners += [(f"websocket {w.name}", w.tls) for w in config.websocket]
    for name, tls in listeners:
        for certificate in tls.loaded if tls is not None else ():
            warning = expiry_warning(certificate, now)
            if warning is not None:
                found.append(f"{config.path}: [{name}] certificates: {warning}")
    for pool in config.pools.values():
        uses_tls = pool.tls.enabled or isinstance(pool.check, TlsCheck)
        if uses_tls and not pool.tls.verify:
            found.append(
                f"{config.path}: [pool {pool.name}] tls_verify = off: the servers' certificates"
                " are not checked, anyone on the path can pose as them"
            )
    return found


if __name__ == "__main__":
    sys.exit(main())

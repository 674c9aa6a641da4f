"""What `proxyd check`, the start and each reload warn about without refusing the file:
certificates that have expired or expire soon, upstream TLS that is not verified, routes that
can never match, weak password hashes in htpasswd files.

The routes' own text comes from the file's text as the caller read it (the file is never read
again here: by then it may have changed). Which routes are shadowed is the router's to say
(proxyd.relay.http.routing.unreachable): the caller passes it, so that config stays the lowest
layer.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Sequence

from proxyd.config.auth_model import BasicAuthConfig
from proxyd.config.ini import strip_comment
from proxyd.config.model import Certificate, Config, RouteConfig, TlsCheck

Shadowed = Callable[[Sequence[RouteConfig]], Iterable[tuple[RouteConfig, RouteConfig]]]
"""(route, the route that shadows it) for every route of a listener that can never match."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*\s*=\s*")

EXPIRY_WARNING = datetime.timedelta(days=14)


def warnings(config: Config, source: str | None, shadowed: Shadowed) -> list[str]:
    """One line per problem that does not stop proxyd. `source` is the text `config` was
    loaded from (None when the caller does not have it: a route is then named by its name,
    not by its line's text)."""
    lines = source.splitlines() if source is not None else []

    def text(route: RouteConfig) -> str:
        if not 0 < route.line <= len(lines):
            return route.name
        return _KEY.sub("", strip_comment(lines[route.line - 1].strip()), count=1)

    found = tls_warnings(config) + auth_warnings(config)
    for http in config.http:
        for route, shadow in shadowed(http.routes):
            found.append(
                f"{config.path}:{route.line}: [http {http.name}] routes: this route can never "
                f"match: {text(route)!r} is shadowed by line {shadow.line} ({text(shadow)!r})"
            )
    return found


def auth_warnings(config: Config) -> list[str]:
    """Users of htpasswd files whose hashes are weak (APR1-MD5, SHA-1), one line each."""
    found = []
    for auth in config.auth.values():
        method = auth.method
        if isinstance(method, BasicAuthConfig):
            for line, message in method.users.warnings:
                found.append(f"{method.users_file}:{line}: [auth {auth.name}] users: {message}")
    return found


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
    if left < EXPIRY_WARNING:
        return f"{certificate.path} expires on {when}"
    return None


def tls_warnings(config: Config, now: datetime.datetime | None = None) -> list[str]:
    """Certificates expired or expiring soon, and pools whose servers' certificates are not
    verified."""
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

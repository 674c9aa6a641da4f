"""twistd's entry point: `twistd proxyd --config FILE` (loaded lazily by the dropin)."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import load


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run proxyd, a multi-protocol reverse proxy, on the configuration FILE. "
        "`proxyd check FILE` validates a configuration without serving."
    )
    optParameters = [
        ["config", "c", "etc/proxyd.ini", "The configuration file (INI)."],
    ]


def makeService(options: Options) -> Any:
    """Validate the config and bind every listener, or exit with one line per problem."""
    from twisted.internet import reactor

    from proxyd.app import ProxydService, StartupError

    try:
        config = load(options["config"])
    except ConfigErrors as e:
        raise SystemExit(f"{e}\nproxyd: configuration invalid, not starting") from None
    proxy = ProxydService(reactor, config, handle_signals=True)
    try:
        proxy.bind()
    except (StartupError, OSError) as e:
        raise SystemExit(str(e)) from None
    return proxy

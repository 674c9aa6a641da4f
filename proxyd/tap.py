"""twistd's entry point: `twistd proxyd --config FILE` (loaded lazily by the dropin)."""

from __future__ import annotations

import gc
from typing import Any

from twisted.python import usage

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads, read


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
    """Validate the config and bind every listener, or exit with one line per problem.
    With `workers` above 1, the service is the master of that many worker processes."""
    from proxyd.reactor import install

    install()  # unless `twistd -r NAME` chose one
    from twisted.internet import reactor

    from proxyd.app import ProxydService
    from proxyd.listeners import StartupError

    path = options["config"]
    try:
        text = read(path)
        config = loads(text, path, serving=True)
    except ConfigErrors as e:
        raise SystemExit(f"{e}\nproxyd: configuration invalid, not starting") from None
    # What exists once the service has started lives as long as the process: out of the
    # cyclic collector's way, its full passes stop scanning it every few hundred connections.
    reactor.callWhenRunning(gc.freeze)
    workers = config.proxyd.workers
    proxy = ProxydService(reactor, config, handle_signals=workers == 1, source=text)
    try:
        if workers == 1:
            proxy.bind()
            return proxy
        proxy.bind_shared(workers)
    except (StartupError, OSError) as e:
        raise SystemExit(str(e)) from None
    from proxyd.workers.master import Master

    return Master(reactor, proxy, text, workers, handle_signals=True)

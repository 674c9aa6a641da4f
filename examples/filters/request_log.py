"""A request logger to a file of its own: one line per exchange, written in the log phase
(after the response is complete), in JSON or as text.

    [filter audit]
    class = request_log:RequestLog
    python_path = ../examples/filters
    file = /var/log/proxyd/audit.log   ; relative to the config file's directory
    format = json                       ; json | text
"""

from __future__ import annotations

import json
from typing import IO

from proxyd.filters import Exchange, Filter, Options, header


class RequestLog(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.path = options.path("file")
        self.format = options.choice("format", ("json", "text"), "json")
        self._file: IO[str] | None = None

    def _out(self) -> IO[str]:
        # Opened on first use, in the process that serves (not when the config is checked).
        if self._file is None or self._file.closed:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        return self._file

    def log(self, exchange: Exchange) -> None:
        fields = {
            "client": exchange.client_ip,
            "method": exchange.method,
            "path": exchange.path,
            "status": exchange.status,
            "route": exchange.route_name,
            "server": exchange.server,
            "request_id": exchange.request_id,
            "user_agent": header(exchange.request_headers, "user-agent"),
        }
        if self.format == "json":
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={value}" for key, value in fields.items())
        self._out().write(line + "\n")

"""Compression on the fly (docs/compression.md): wrk with `Accept-Encoding: gzip` fetching a
1 MiB JSON document (bench.compress_cost's) that the origin sends uncompressed, each proxy
compressing it with gzip at level 1 (`http-gzip-1`) or 6 (`http-gzip-6`). proxyd with
`compress = on`, `compress_codings = gzip`, `compress_levels = gzip=N`; nginx with `gzip on`,
`gzip_comp_level N`, `gzip_types application/json`; HAProxy with its compression filter and
`tune.comp.maxlevel N`. The unit is MiB of JSON served (before compression). Extras: run only
when named."""

from __future__ import annotations

import zlib

from bench.compress_cost import json_body
from bench.http import (
    NGINX_PROXY_LOCATION,
    HttpScenario,
    MiB,
    fetch,
    haproxy_http,
    nginx_upstream,
    proxyd_pool,
)
from bench.processes import free_port
from bench.scenario import Bench

PATH = "/1m.json"


def start_json_origin(bench: Bench) -> int:
    """An nginx origin serving the 1 MiB JSON document, uncompressed, on the load CPUs."""
    port = free_port()
    www = bench.workdir / "www"
    www.mkdir(exist_ok=True)
    (www / PATH.lstrip("/")).write_bytes(json_body(MiB))
    body = f"""    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = {PATH} {{
            types {{ }}
            default_type application/json;
        }}
    }}
"""
    bench.origin_nginx(bench.nginx_http("origin", body), tcp=(port,))
    return port


class GzipScenario(HttpScenario):
    """The 1 MiB JSON document gzipped by the proxy at `level`."""

    not_applicable = {"direct": "the origin sends the document uncompressed"}

    def __init__(self, level: int) -> None:
        super().__init__(
            f"http-gzip-{level}",
            f"HTTP 1 MiB JSON answers gzipped by the proxy at level {level}, keep-alive",
            PATH,
            MiB,
            headers=("Accept-Encoding: gzip",),
        )
        self.level = level

    def origin(self, bench: Bench) -> int:
        return start_json_origin(bench)

    def check(self, bench: Bench, port: int) -> str | None:
        try:
            status, answer = fetch(port, self.path, self.headers)
            document = zlib.decompress(answer, 16 + zlib.MAX_WBITS)
        except (OSError, RuntimeError, ValueError, zlib.error) as e:
            return f"check: no gzip answer ({e})"
        if status != 200 or document != json_body(MiB):
            return f"check: status {status}, {len(document)} bytes after gunzip, wanted 200, {MiB}"
        return None

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        location = NGINX_PROXY_LOCATION.replace(
            "            proxy_max_temp_file_size 0;\n",
            "            proxy_max_temp_file_size 0;\n"
            "            gzip on;\n"
            f"            gzip_comp_level {self.level};\n"
            "            gzip_types application/json;\n"
            "            gzip_proxied any;\n",
        )
        server = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
        server += f"{location}    }}\n"
        return bench.nginx_http("nginx", nginx_upstream(origin) + server)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        config = haproxy_http(
            bench, f"127.0.0.1:{port}", origin, f"    tune.comp.maxlevel {self.level}\n"
        )
        return config.replace(
            "    default_backend origin\n",
            "    filter compression\n"
            "    compression algo gzip\n"
            "    compression type application/json\n"
            "    default_backend origin\n",
        )

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        listener = f"[http bench]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        listener += "compress = on\ncompress_codings = gzip\n"
        listener += f"compress_levels = gzip={self.level}\n"
        return f"{proxyd_pool(origin)}\n{listener}routes =\n    path / -> pool origin\n"


SCENARIOS = (GzipScenario(1), GzipScenario(6))

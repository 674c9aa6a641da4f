"""The cache (docs/cache.md): wrk fetching one URL that the origin marks
`Cache-Control: max-age=3600`, every request after the first a hit in the proxy's memory,
for a small answer (`http-cache-hit`) and a 1 MiB one (`http-cache-hit-1m`). proxyd with a
`[cache]` of 64 MiB in memory; nginx with `proxy_cache` (its keys zone, its bodies on a
tmpfs-like work directory: nginx keeps cached bodies in files, served from the page cache);
HAProxy with its `cache` (bodies in shared memory). `direct` is the origin itself.
Extras: run only when named."""

from __future__ import annotations

import os

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

SMALL = b"hello from the cache\n"


def start_cacheable_origin(bench: Bench) -> int:
    """An nginx origin whose answers may be cached for an hour: /small and /1m."""
    port = free_port()
    www = bench.workdir / "www-cache"
    www.mkdir(exist_ok=True)
    (www / "small").write_bytes(SMALL)
    (www / "1m").write_bytes(os.urandom(MiB))
    body = f"""    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location / {{
            types {{ }}
            default_type application/octet-stream;
            add_header Cache-Control "max-age=3600";
        }}
    }}
"""
    bench.origin_nginx(bench.nginx_http("origin", body), tcp=(port,))
    return port


class CacheScenario(HttpScenario):
    """Hits on one URL of `size` bytes."""

    def origin(self, bench: Bench) -> int:
        return start_cacheable_origin(bench)

    def check(self, bench: Bench, port: int) -> str | None:
        try:
            fetch(port, self.path, self.headers)
            status, answer = fetch(port, self.path, self.headers)
        except (OSError, RuntimeError, ValueError) as e:
            return f"check request failed: {e}"
        if status != 200 or len(answer) != self.size:
            return f"check: status {status}, {len(answer)} bytes, wanted 200 and {self.size}"
        return None

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        cache_dir = bench.workdir / "nginx-cache"
        cache_dir.mkdir(exist_ok=True)
        location = NGINX_PROXY_LOCATION.replace(
            "            proxy_max_temp_file_size 0;\n",
            "            proxy_cache bench;\n            proxy_cache_lock on;\n",
        )
        zone = (
            f"    proxy_cache_path {cache_dir} levels=1:2 keys_zone=bench:10m"
            " max_size=64m inactive=1h use_temp_path=off;\n"
        )
        server = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
        server += f"{location}    }}\n"
        return bench.nginx_http("nginx", zone + nginx_upstream(origin) + server)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        config = haproxy_http(bench, f"127.0.0.1:{port}", origin)
        config = config.replace(
            "    default_backend origin\n",
            "    http-request cache-use bench\n"
            "    http-response cache-store bench\n"
            "    default_backend origin\n",
        )
        return config + "cache bench\n    total-max-size 64\n    max-object-size 2000000\n"

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        cache = "[cache bench]\nmemory_size = 64MiB\n\n"
        listener = f"[http bench]\nlisten = tcp:{port}:interface=127.0.0.1\ncache = bench\n"
        return f"{proxyd_pool(origin)}\n{cache}{listener}routes =\n    path / -> pool origin\n"


SCENARIOS = (
    CacheScenario(
        "http-cache-hit",
        "HTTP small answers from the proxy's cache, keep-alive",
        "/small",
        len(SMALL),
    ),
    CacheScenario(
        "http-cache-hit-1m", "HTTP 1 MiB answers from the proxy's cache, keep-alive", "/1m", MiB
    ),
)

"""/metrics: the status document (proxyd.admin.status) as Prometheus metrics, rendered by
prometheus-client from a collector made for each scrape. No I/O.

Three sources: the listeners' counters (connections open, requests, ...), the servers' state
(health, admin state, connections open), and the relays' metrics (proxyd.metrics: the
snapshot, summed over the workers, under the document's "metrics"), whose labels are the
listener (`listener`, `kind`), `route`, `pool` and `server` ("" for none), and for some a
status class (`code`) or an error kind (`error`). docs/operations.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from proxyd.admin.feature_metrics import (
    acme_families,
    admin_cluster_families,
    cache_families,
    discovery_families,
    ocsp_families,
    stick_families,
)
from proxyd.gslb.server import RCODES
from proxyd.metrics import cells
from proxyd.relay.http.h2_upstream_metrics import RESET_REASONS

# A listener's counters (ProxydService's names) as metrics: name, help, type, extra labels.
_LISTENER_METRICS: Mapping[str, tuple[str, str, str, dict[str, str]]] = {
    "connections": ("proxyd_connections_open", "Client connections open now.", "gauge", {}),
    "active": ("proxyd_connections_open", "Client connections open now.", "gauge", {}),
    "total": ("proxyd_connections", "Client connections accepted.", "counter", {}),
    "requests": ("proxyd_http_requests", "HTTP requests received.", "counter", {}),
    "tunnels": ("proxyd_http_tunnels_open", "Upgraded (WebSocket) connections open.", "gauge", {}),
    "tunnels_total": ("proxyd_http_tunnels", "Upgraded (WebSocket) connections.", "counter", {}),
    "messages_in": (
        "proxyd_websocket_messages",
        "WebSocket messages relayed.",
        "counter",
        {"direction": "in"},
    ),
    "messages_out": (
        "proxyd_websocket_messages",
        "WebSocket messages relayed.",
        "counter",
        {"direction": "out"},
    ),
    "sessions": ("proxyd_udp_sessions_open", "UDP client sessions open now.", "gauge", {}),
    "dropped_sessions": (
        "proxyd_udp_dropped",
        "Datagrams dropped.",
        "counter",
        {"reason": "max_sessions"},
    ),
    "dropped_oversized": (
        "proxyd_udp_dropped",
        "Datagrams dropped.",
        "counter",
        {"reason": "oversized"},
    ),
    "dropped_no_server": (
        "proxyd_udp_dropped",
        "Datagrams dropped.",
        "counter",
        {"reason": "no_server"},
    ),
    "dropped_denied": (
        "proxyd_udp_dropped",
        "Datagrams dropped.",
        "counter",
        {"reason": "access_denied"},
    ),
    "malformed": ("proxyd_dns_malformed", "DNS messages that could not be parsed.", "counter", {}),
    "unmatched": ("proxyd_dns_unmatched", "DNS answers matching no query.", "counter", {}),
    "failed": ("proxyd_dns_failed", "DNS queries answered SERVFAIL by proxyd.", "counter", {}),
    **{
        f"gslb_{rcode}": (
            "proxyd_gslb_queries",
            "DNS queries a [gslb] listener answered (UDP and TCP), by rcode.",
            "counter",
            {"rcode": rcode},
        )
        for rcode in RCODES
    },
    "gslb_truncated": (
        "proxyd_gslb_truncated",
        "UDP answers a [gslb] listener sent truncated (TC) for the client to ask over TCP.",
        "counter",
        {},
    ),
}


_RELAY_LABELS = ["listener", "kind", "route", "pool", "server"]

# A cell's numbers (proxyd.metrics.Cell) as counters: field, name, help.
_RELAY_COUNTERS = (
    ("bytes_in", "proxyd_bytes_received", "Bytes received from clients (HTTP: request bodies)."),
    ("bytes_out", "proxyd_bytes_sent", "Bytes sent to clients (HTTP: response bodies)."),
    ("retries", "proxyd_retries", "Requests or queries moved on from the server after a failure."),
    ("connections", "proxyd_upstream_connections", "TCP and WebSocket connections to the server."),
    ("sessions", "proxyd_udp_sessions", "UDP sessions attached to the server."),
    ("http2_requests", "proxyd_http2_requests", "HTTP requests that came on HTTP/2 streams."),
    (
        "http2_connections",
        "proxyd_http2_connections",
        "Client connections that spoke HTTP/2 (ALPN h2, or h2c's preface).",
    ),
    ("datagrams_in", "proxyd_datagrams_received", "Datagrams from clients relayed to the server."),
    ("datagrams_out", "proxyd_datagrams_sent", "Datagrams from the server relayed to clients."),
    (
        "password_checks",
        "proxyd_auth_password_checks",
        "Password hashes computed by basic auth (a cached or joined check costs none).",
    ),
)

# A cell's histograms: field, name, help.
_RELAY_HISTOGRAMS = (
    (
        "request_duration",
        "proxyd_http_request_duration_seconds",
        "HTTP requests from their head received to their response's end.",
    ),
    (
        "upstream_duration",
        "proxyd_http_upstream_duration_seconds",
        "HTTP requests from sent to the server to its response head.",
    ),
    (
        "connect_duration",
        "proxyd_upstream_connect_duration_seconds",
        "Connects to servers (with TLS, and WebSocket's opening handshake).",
    ),
    (
        "query_duration",
        "proxyd_dns_query_duration_seconds",
        "DNS queries from received to answered.",
    ),
)

_STATES = ("up", "down", "drain", "maint")


def _relay_families(snapshot: Mapping[str, Any]) -> Iterable[Metric]:
    """The relays' metrics: every cell of the snapshot, one sample per family it counts in."""
    responses = CounterMetricFamily(
        "proxyd_http_responses",
        'HTTP responses by status class (server "": answered by proxyd itself).',
        labels=[*_RELAY_LABELS, "code"],
    )
    errors = CounterMetricFamily(
        "proxyd_errors",
        "Failures by kind: at the server, or of the client's request or connection.",
        labels=[*_RELAY_LABELS, "error"],
    )
    auth_failures = CounterMetricFamily(
        "proxyd_auth_failures",
        "HTTP requests refused by a route's authentication, by method and reason.",
        labels=[*_RELAY_LABELS, "method", "reason"],
    )
    rule_matches = CounterMetricFamily(
        "proxyd_rule_matches",
        "HTTP requests a [rule] matched, by rule and mode (enforce: refused; log_only).",
        labels=[*_RELAY_LABELS, "rule", "mode"],
    )
    coding_labels = [*_RELAY_LABELS, "coding"]
    compressed = CounterMetricFamily(
        "proxyd_compressed_responses",
        "HTTP responses compressed by proxyd to their end, by coding.",
        labels=coding_labels,
    )
    compressed_in = CounterMetricFamily(
        "proxyd_compressed_bytes_in",
        "The servers' bytes of the responses proxyd compressed, by coding.",
        labels=coding_labels,
    )
    compressed_out = CounterMetricFamily(
        "proxyd_compressed_bytes_out",
        "The bytes those responses were compressed to, by coding.",
        labels=coding_labels,
    )
    limit_labels = ["listener", "kind", "limit"]
    limit_requests = CounterMetricFamily(
        "proxyd_ratelimit_requests",
        "HTTP requests judged by a [ratelimit], by outcome (allowed; limited: refused;"
        " dry_run_limited: a dry-run limit would have refused).",
        labels=[*limit_labels, "outcome"],
    )
    limit_keys = GaugeMetricFamily(
        "proxyd_ratelimit_keys", "Keys a [ratelimit] holds now.", labels=limit_labels
    )
    limit_evicted = CounterMetricFamily(
        "proxyd_ratelimit_evicted",
        "Keys a [ratelimit] dropped past its max_keys while they still owed.",
        labels=limit_labels,
    )
    limit_store_errors = CounterMetricFamily(
        "proxyd_ratelimit_store_errors",
        "Calls to a [ratelimit]'s Redis store that failed or timed out.",
        labels=limit_labels,
    )
    limit_unchecked = CounterMetricFamily(
        "proxyd_ratelimit_unchecked",
        "Requests a [ratelimit] with a Redis store decided by its on_store_error (Redis slow"
        " or down).",
        labels=limit_labels,
    )
    route_labels = ["listener", "kind", "route"]
    queue_in_flight = GaugeMetricFamily(
        "proxyd_route_in_flight",
        "Requests of a route with max_in_flight at its servers now.",
        labels=route_labels,
    )
    queue_waiting = GaugeMetricFamily(
        "proxyd_route_queue_waiting",
        "Requests waiting in a route's queue now (max_in_flight reached).",
        labels=route_labels,
    )
    queue_outcomes = CounterMetricFamily(
        "proxyd_route_queue_requests",
        "Requests that found a route at its max_in_flight, by outcome (served_from_queue,"
        " timed_out, cancelled: the client left, refused: the queue was full).",
        labels=[*route_labels, "outcome"],
    )
    queue_wait = CounterMetricFamily(
        "proxyd_route_queue_wait_seconds",
        "The summed waits of the requests a route's queue served.",
        labels=route_labels,
    )
    counters = {
        field: CounterMetricFamily(name, help_text, labels=_RELAY_LABELS)
        for field, name, help_text in _RELAY_COUNTERS
    }
    histograms = {
        field: HistogramMetricFamily(name, help_text, labels=_RELAY_LABELS)
        for field, name, help_text in _RELAY_HISTOGRAMS
    }
    for kind, listener, route, pool, server, fields in cells(snapshot):
        labels = [listener, kind, route, pool, server]
        for code, count in fields.get("responses", {}).items():
            responses.add_metric([*labels, code], count)
        for error, count in fields.get("errors", {}).items():
            errors.add_metric([*labels, error], count)
        for method, reasons in fields.get("auth_failures", {}).items():
            for reason, count in reasons.items():
                auth_failures.add_metric([*labels, method, reason], count)
        for rule, modes in fields.get("rule_matches", {}).items():
            for mode, count in modes.items():
                rule_matches.add_metric([*labels, rule, mode], count)
        for coding, figures in fields.get("compression", {}).items():
            compressed.add_metric([*labels, coding], figures["responses"])
            compressed_in.add_metric([*labels, coding], figures["bytes_in"])
            compressed_out.add_metric([*labels, coding], figures["bytes_out"])
        for limit, figures in fields.get("ratelimits", {}).items():
            for outcome in ("allowed", "limited", "dry_run_limited"):
                if outcome in figures:
                    limit_requests.add_metric([listener, kind, limit, outcome], figures[outcome])
            limit_keys.add_metric([listener, kind, limit], figures.get("tracked", 0))
            limit_evicted.add_metric([listener, kind, limit], figures.get("evicted", 0))
            if "store_errors" in figures:
                limit_store_errors.add_metric([listener, kind, limit], figures["store_errors"])
                limit_unchecked.add_metric([listener, kind, limit], figures["unchecked"])
        queue = fields.get("queue")
        if queue is not None:
            queue_in_flight.add_metric([listener, kind, route], queue["in_flight"])
            queue_waiting.add_metric([listener, kind, route], queue["waiting"])
            for outcome in ("served_from_queue", "timed_out", "cancelled", "refused"):
                queue_outcomes.add_metric([listener, kind, route, outcome], queue[outcome])
            queue_wait.add_metric([listener, kind, route], queue["wait_seconds"])
        for field, family in counters.items():
            if field in fields:
                family.add_metric(labels, fields[field])
        for field, histogram in histograms.items():
            if field in fields:
                shown = fields[field]
                histogram.add_metric(labels, list(shown["buckets"].items()), shown["sum"])
    every: list[Metric] = [
        responses,
        *histograms.values(),
        *counters.values(),
        errors,
        auth_failures,
        rule_matches,
        compressed,
        compressed_in,
        compressed_out,
        limit_requests,
        limit_keys,
        limit_evicted,
        limit_store_errors,
        limit_unchecked,
        queue_in_flight,
        queue_waiting,
        queue_outcomes,
        queue_wait,
    ]
    yield from (metric for metric in every if metric.samples)


class _StatusCollector(Collector):
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def family(
            name: str, help_text: str, kind: str, labels: list[str]
        ) -> CounterMetricFamily | GaugeMetricFamily:
            if name not in families:
                maker = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                families[name] = maker(name, help_text, labels=labels)
            return families[name]

        workers = GaugeMetricFamily("proxyd_workers", "Worker processes serving now.")
        workers.add_metric([], self.document["workers"])
        yield workers
        for listener in self.document["listeners"]:
            for key, value in listener["counters"].items():
                if key not in _LISTENER_METRICS:
                    continue
                name, help_text, kind, extra = _LISTENER_METRICS[key]
                labels = ["listener", "kind", *extra]
                family(name, help_text, kind, labels).add_metric(
                    [listener["name"], listener["kind"], *extra.values()], value
                )
        up = family(
            "proxyd_server_up",
            "1 when the health checks say the server is up.",
            "gauge",
            ["pool", "server"],
        )
        state = family(
            "proxyd_server_state",
            "1 for the server's state (drain and maint win over its health), 0 for the others.",
            "gauge",
            ["pool", "server", "state"],
        )
        weight = family("proxyd_server_weight", "The server's weight.", "gauge", ["pool", "server"])
        active = family(
            "proxyd_server_connections_open",
            "Connections open to the server.",
            "gauge",
            ["pool", "server"],
        )
        for pool in self.document["pools"]:
            for server in pool["servers"]:
                labels = [pool["name"], server["name"]]
                health = server.get("health", server["state"])
                up.add_metric(labels, 1 if health == "up" else 0)
                for name in _STATES:
                    state.add_metric([*labels, name], 1 if server["state"] == name else 0)
                weight.add_metric(labels, server["weight"])
                active.add_metric(labels, server["active"])
                http2 = server.get("http2")
                if http2 is not None:
                    _add_http2(family, labels, http2)
            queue = pool.get("queue")
            if queue is not None:
                family(
                    "proxyd_pool_queue_waiting",
                    "Requests or connections waiting for a server with room now (every server"
                    " up at max_connections).",
                    "gauge",
                    ["pool"],
                ).add_metric([pool["name"]], queue["waiting"])
                outcomes = family(
                    "proxyd_pool_queue_requests",
                    "Requests or connections that met every server up at max_connections, by"
                    " outcome (queued, timed_out, refused: the queue was full).",
                    "counter",
                    ["pool", "outcome"],
                )
                for outcome in ("queued", "timed_out", "refused"):
                    outcomes.add_metric([pool["name"], outcome], queue[outcome])
                family(
                    "proxyd_pool_queue_wait_seconds",
                    "The summed waits of those that left the pool's queue with a server.",
                    "counter",
                    ["pool"],
                ).add_metric([pool["name"]], queue["wait_seconds"])
        yield from families.values()
        yield from _relay_families(self.document.get("metrics", {}))
        yield from cache_families(self.document.get("caches", []))
        yield from ocsp_families(self.document.get("ocsp"))
        yield from stick_families(self.document.get("stick_tables", {}))
        yield from admin_cluster_families(self.document.get("admin_cluster"))
        yield from acme_families(self.document.get("acme", []))
        yield from discovery_families(self.document.get("pools", []))


_Family = Callable[[str, str, str, list[str]], CounterMetricFamily | GaugeMetricFamily]
"""The collector's maker of families: name, help, type ("counter" or "gauge"), labels."""

# A server's HTTP/2 counts (proxyd.relay.http.h2_upstream_metrics): field, name, help, type.
_HTTP2_UPSTREAM = (
    (
        "connections",
        "proxyd_upstream_http2_connections_open",
        "HTTP/2 connections open to the server (pools with protocol = h2 or h2c).",
        "gauge",
    ),
    (
        "streams",
        "proxyd_upstream_http2_streams_open",
        "HTTP/2 streams open to the server: requests sent, not done with yet.",
        "gauge",
    ),
    (
        "streams_total",
        "proxyd_upstream_http2_streams",
        "HTTP/2 streams opened to the server (one per request sent).",
        "counter",
    ),
)


def _add_http2(family: _Family, labels: list[str], http2: Mapping[str, Any]) -> None:
    """A server's HTTP/2 connections and streams (`family` makes or finds a family)."""
    for field, name, help_text, kind in _HTTP2_UPSTREAM:
        family(name, help_text, kind, ["pool", "server"]).add_metric(labels, http2[field])
    resets = family(
        "proxyd_upstream_http2_streams_reset",
        "HTTP/2 streams to the server that ended before their response's end, by reason"
        " (refused: REFUSED_STREAM; goaway: above the server's GOAWAY; server_reset: another"
        " RST_STREAM; cancelled: reset by proxyd; connection_lost).",
        "counter",
        ["pool", "server", "reason"],
    )
    for reason in RESET_REASONS:
        resets.add_metric([*labels, reason], http2["resets"].get(reason, 0))


def metrics_registry(document: Mapping[str, Any]) -> CollectorRegistry:
    """A registry whose one collector shows `document` (status()) as Prometheus metrics;
    the relays' metrics are taken from its "metrics" (counters()["metrics"])."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(document))
    return registry

"""/metrics: the status document (proxyd.admin.status) as Prometheus metrics, rendered by
prometheus-client from a collector made for each scrape. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

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
    "malformed": ("proxyd_dns_malformed", "DNS messages that could not be parsed.", "counter", {}),
    "unmatched": ("proxyd_dns_unmatched", "DNS answers matching no query.", "counter", {}),
    "failed": ("proxyd_dns_failed", "DNS queries answered SERVFAIL by proxyd.", "counter", {}),
}


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
        active = family(
            "proxyd_server_connections_open",
            "Connections open to the server.",
            "gauge",
            ["pool", "server"],
        )
        for pool in self.document["pools"]:
            for server in pool["servers"]:
                labels = [pool["name"], server["name"]]
                up.add_metric(labels, 1 if server["state"] == "up" else 0)
                active.add_metric(labels, server["active"])
        yield from families.values()


def metrics_registry(document: Mapping[str, Any]) -> CollectorRegistry:
    """A registry whose one collector shows `document` (status()) as Prometheus metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(document))
    return registry

"""The relays' metrics (proxyd.metrics): cells, histograms, snapshots that add up across
worker processes, the status document's per-server traffic, and their Prometheus rendering
(proxyd.admin.metrics) parsed back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.metrics import (
    BUCKETS,
    TRAFFIC_FIELDS,
    ErrorKind,
    RelayStats,
    add_counters,
    server_traffic,
)


def test_a_histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    stats = RelayStats("http", "front")
    histogram = stats.cell("*/", "web", "a").request_duration
    for seconds in (0.0005, 0.001, 0.0011, 0.3, 99.0):
        histogram.observe(seconds)
    shown = histogram.snapshot()
    assert shown["count"] == 5
    assert shown["sum"] == pytest.approx(0.0005 + 0.001 + 0.0011 + 0.3 + 99.0)
    buckets = shown["buckets"]
    assert list(buckets) == [*(repr(bound) for bound in BUCKETS), "+Inf"]
    assert buckets["0.001"] == 2  # le is "less than or equal"
    assert buckets["0.0025"] == 3
    assert buckets["0.25"] == 3
    assert buckets["0.5"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5


def test_the_snapshot_nests_one_level_per_label_and_leaves_zeros_out() -> None:
    stats = RelayStats("https", "front")
    cell = stats.cell("*/api/", "api", "127.0.0.1:9001")
    cell.response(200, 0.004)
    cell.response(503, 0.02)
    cell.bytes_out += 120
    cell.error(ErrorKind.CONNECT_FAILED)
    stats.cell("", "", "")  # asked for, never counted: not shown
    snapshot = stats.snapshot()
    assert list(snapshot) == ["https"]
    assert list(snapshot["https"]) == ["front"]
    fields = snapshot["https"]["front"]["*/api/"]["api"]["127.0.0.1:9001"]
    assert fields["responses"] == {"2xx": 1, "5xx": 1}
    assert fields["bytes_out"] == 120
    assert "bytes_in" not in fields and "connect_duration" not in fields
    assert fields["errors"] == {"connect_failed": 1}
    assert fields["request_duration"]["count"] == 2
    assert "" not in snapshot["https"]["front"]
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_a_status_outside_100_to_599_is_timed_but_has_no_class() -> None:
    cell = RelayStats("http", "front").cell("", "", "")
    cell.response(0, 0.1)
    assert "responses" not in cell.snapshot()
    assert cell.snapshot()["request_duration"]["count"] == 1


def _record(stats: RelayStats, events: list[tuple[int, int, float, int]]) -> None:
    servers = ("127.0.0.1:9001", "127.0.0.1:9002")
    for server, status, seconds, size in events:
        cell = stats.cell("*/", "web", servers[server])
        cell.response(status, seconds)
        cell.upstream_duration.observe(seconds / 2)
        cell.bytes_in += size
        cell.retries += status // 500
        if status >= 500:
            cell.error(ErrorKind.UPSTREAM_TIMEOUT)


_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from([101, 200, 204, 301, 404, 499, 502, 504]),
        st.floats(0.0, 20.0),
        st.integers(0, 10**6),
    ),
    max_size=30,
)


@given(_EVENTS, _EVENTS)
def test_two_processes_snapshots_summed_are_the_snapshot_of_both(
    first: list[tuple[int, int, float, int]], second: list[tuple[int, int, float, int]]
) -> None:
    one, two, both = (RelayStats("http", "front") for _ in range(3))
    _record(one, first)
    _record(two, second)
    _record(both, first + second)
    # As the master sums its workers' counters: through JSON, then add_counters.
    total: dict[str, Any] = {}
    add_counters(total, json.loads(json.dumps(one.snapshot())))
    add_counters(total, json.loads(json.dumps(two.snapshot())))
    expected = both.snapshot()
    assert _rounded(total) == _rounded(expected)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, float):
        return round(value, 6)
    return value


def test_listeners_of_every_kind_add_up_into_one_tree() -> None:
    http = RelayStats("http", "front")
    http.cell("*/", "web", "a").response(200, 0.01)
    tcp = RelayStats("tcp", "db")
    tcp.cell("", "web", "a").connections += 1
    total: dict[str, Any] = {}
    add_counters(total, http.snapshot())
    add_counters(total, tcp.snapshot())
    assert set(total) == {"http", "tcp"}
    assert total["tcp"]["db"][""]["web"]["a"] == {"connections": 1}


def test_server_traffic_totals_each_server_over_listeners_routes_and_kinds() -> None:
    http = RelayStats("http", "front")
    a = http.cell("*/", "web", "a")
    a.response(200, 0.010)
    a.response(502, 0.030)
    a.bytes_in, a.bytes_out = 10, 300
    a.error(ErrorKind.UPSTREAM_RESET)
    a.connect_duration.observe(0.5)  # a new upstream connection: no response time
    api = http.cell("*/api/", "web", "a")
    api.response(204, 0.020)
    http.cell("", "", "").response(404, 0.001)  # proxyd's own answer: no server
    tcp = RelayStats("tcp", "db")
    b = tcp.cell("", "web", "b")
    b.connections += 2
    b.connect_duration.observe(0.002)
    b.connect_duration.observe(0.004)
    b.error(ErrorKind.CONNECT_FAILED)
    tcp.cell("", "web", "a").connections += 1
    udp = RelayStats("udp", "dns")
    udp.cell("", "dns", "c").sessions += 3
    total: dict[str, Any] = {}
    for stats in (http, tcp, udp):
        add_counters(total, stats.snapshot())

    traffic = server_traffic(total)
    assert set(traffic) == {"web/a", "web/b", "dns/c"}
    assert all(tuple(fields) == TRAFFIC_FIELDS for fields in traffic.values())
    assert traffic["web/a"] == {
        "requests": 3,
        "connections": 1,
        "bytes_in": 10,
        "bytes_out": 300,
        "errors": 1,
        "response_time_sum": pytest.approx(0.060),
        "response_time_count": 3,
    }
    assert traffic["web/b"]["connections"] == 2
    assert traffic["web/b"]["errors"] == 1
    assert traffic["web/b"]["response_time_sum"] == pytest.approx(0.006)
    assert traffic["web/b"]["response_time_count"] == 2
    assert traffic["dns/c"] == {
        "requests": 0,
        "connections": 3,
        "bytes_in": 0,
        "bytes_out": 0,
        "errors": 0,
        "response_time_sum": 0.0,
        "response_time_count": 0,
    }


def test_server_traffic_of_nothing_is_empty() -> None:
    assert server_traffic({}) == {}


# The Prometheus rendering (proxyd.admin.metrics), parsed back.


def _document() -> dict[str, Any]:
    http = RelayStats("http", "front")
    served = http.cell("*/", "web", "127.0.0.1:9001")
    served.response(200, 0.004)
    served.response(200, 0.3)
    served.response(503, 0.02)
    served.upstream_duration.observe(0.002)
    served.bytes_in, served.bytes_out = 7, 1500
    served.retries += 1
    served.error(ErrorKind.CONNECT_FAILED)
    http.cell("", "", "").response(404, 0.0001)
    http.cell("", "", "").error(ErrorKind.NO_ROUTE)
    tcp = RelayStats("tcp", "db")
    db = tcp.cell("", "web", "127.0.0.1:9002")
    db.connections += 2
    db.connect_duration.observe(0.001)
    udp = RelayStats("udp", "dns")
    resolver = udp.cell("", "dns", "127.0.0.1:5353")
    resolver.datagrams_in, resolver.datagrams_out = 4, 3
    resolver.query_duration.observe(0.0003)
    metrics: dict[str, Any] = {}
    for stats in (http, tcp, udp):
        add_counters(metrics, stats.snapshot())
    server = {"weight": 1, "backup": False, "active": 0, "reason": ""}
    return {
        "workers": 1,
        "listeners": [
            {"name": "front", "kind": "http", "listen": "tcp:0", "counters": {"requests": 4}}
        ],
        "pools": [
            {
                "name": "web",
                "balance": "round_robin",
                "servers": [
                    {**server, "name": "127.0.0.1:9001", "state": "drain", "health": "up"},
                    {**server, "name": "127.0.0.1:9002", "state": "down", "health": "down"},
                ],
            }
        ],
        "metrics": metrics,
    }


def _scrape(document: dict[str, Any]) -> tuple[dict[str, str], dict[Any, float]]:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from proxyd.admin.metrics import metrics_registry

    families = list(
        text_string_to_metric_families(generate_latest(metrics_registry(document)).decode())
    )
    types = {family.name: family.type for family in families}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }
    return types, samples


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


SERVED = {
    "listener": "front",
    "kind": "http",
    "route": "*/",
    "pool": "web",
    "server": "127.0.0.1:9001",
}


def test_the_relays_metrics_are_rendered_with_their_labels_and_types() -> None:
    types, found = _scrape(_document())
    assert types["proxyd_http_responses"] == "counter"
    assert types["proxyd_http_request_duration_seconds"] == "histogram"
    assert types["proxyd_errors"] == "counter"
    assert found[("proxyd_http_responses_total", _labels(**SERVED, code="2xx"))] == 2
    assert found[("proxyd_http_responses_total", _labels(**SERVED, code="5xx"))] == 1
    own = {"listener": "front", "kind": "http", "route": "", "pool": "", "server": ""}
    assert found[("proxyd_http_responses_total", _labels(**own, code="4xx"))] == 1
    assert found[("proxyd_errors_total", _labels(**own, error="no_route"))] == 1
    assert found[("proxyd_errors_total", _labels(**SERVED, error="connect_failed"))] == 1
    assert found[("proxyd_bytes_received_total", _labels(**SERVED))] == 7
    assert found[("proxyd_bytes_sent_total", _labels(**SERVED))] == 1500
    assert found[("proxyd_retries_total", _labels(**SERVED))] == 1
    db = {"listener": "db", "kind": "tcp", "route": "", "pool": "web", "server": "127.0.0.1:9002"}
    assert found[("proxyd_upstream_connections_total", _labels(**db))] == 2
    assert found[("proxyd_upstream_connect_duration_seconds_count", _labels(**db))] == 1
    dns = {"listener": "dns", "kind": "udp", "route": "", "pool": "dns", "server": "127.0.0.1:5353"}
    assert found[("proxyd_datagrams_received_total", _labels(**dns))] == 4
    assert found[("proxyd_datagrams_sent_total", _labels(**dns))] == 3
    assert found[("proxyd_dns_query_duration_seconds_bucket", _labels(**dns, le="0.001"))] == 1


def test_latency_histograms_have_cumulative_buckets_a_sum_and_a_count() -> None:
    _, found = _scrape(_document())
    name = "proxyd_http_request_duration_seconds"
    assert found[(f"{name}_bucket", _labels(**SERVED, le="0.005"))] == 1
    assert found[(f"{name}_bucket", _labels(**SERVED, le="0.025"))] == 2
    assert found[(f"{name}_bucket", _labels(**SERVED, le="0.5"))] == 3
    assert found[(f"{name}_bucket", _labels(**SERVED, le="+Inf"))] == 3
    assert found[(f"{name}_count", _labels(**SERVED))] == 3
    assert found[(f"{name}_sum", _labels(**SERVED))] == pytest.approx(0.324)
    upstream = "proxyd_http_upstream_duration_seconds"
    assert found[(f"{upstream}_bucket", _labels(**SERVED, le="0.0025"))] == 1
    assert found[(f"{upstream}_bucket", _labels(**SERVED, le="0.001"))] == 0


def test_each_server_has_its_health_its_state_as_one_of_four_and_its_weight() -> None:
    _, found = _scrape(_document())
    first = {"pool": "web", "server": "127.0.0.1:9001"}
    second = {"pool": "web", "server": "127.0.0.1:9002"}
    assert found[("proxyd_server_up", _labels(**first))] == 1  # drained, but healthy
    assert found[("proxyd_server_up", _labels(**second))] == 0
    assert {
        state: found[("proxyd_server_state", _labels(**first, state=state))]
        for state in ("up", "down", "drain", "maint")
    } == {"up": 0, "down": 0, "drain": 1, "maint": 0}
    assert found[("proxyd_server_state", _labels(**second, state="down"))] == 1
    assert found[("proxyd_server_weight", _labels(**first))] == 1


def test_families_with_nothing_counted_are_left_out_and_no_metrics_is_fine() -> None:
    document = _document()
    document["metrics"] = {}
    types, found = _scrape(document)
    assert "proxyd_http_responses" not in types and "proxyd_errors" not in types
    assert found[("proxyd_workers", ())] == 1
    del document["metrics"]
    assert _scrape(document)[1] == found


def test_no_label_carries_a_client_address_or_a_path() -> None:
    _, found = _scrape(_document())
    names = {name for (_, labels) in found for name, _value in labels}
    assert names <= {
        "listener",
        "kind",
        "route",
        "pool",
        "server",
        "code",
        "error",
        "le",
        "state",
        "direction",
        "reason",
    }


SERVICE = """
[proxyd]
access_log = off
[pool web]
servers = 127.0.0.1:9001
[pool dns]
servers = 127.0.0.1:5353
[http front]
listen = tcp:0:interface=127.0.0.1
routes =
    path / -> pool web
[tcp db]
listen = tcp:0:interface=127.0.0.1
pool = web
[udp raw]
listen = udp:5300:interface=127.0.0.1
pool = dns
[udp names]
listen = udp:5301:interface=127.0.0.1
pool = dns
protocol = dns
[websocket chat]
listen = tcp:0:interface=127.0.0.1
pool = web
mode = message
[websocket pass]
listen = tcp:0:interface=127.0.0.1
pool = web
mode = passthrough
"""


def test_every_relay_has_stats_under_its_kind_and_name_in_the_services_counters() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from proxyd.app import ProxydService
    from proxyd.config.load import loads

    service = ProxydService(MemoryReactorClock(), loads(SERVICE, "proxyd.ini"))
    try:
        for listener in service.listeners:
            stats = listener.factory.stats
            stats.cell("", "web", "127.0.0.1:9001").bytes_in += 1
        metrics = service.counters()["metrics"]
        assert {(kind, name) for kind in metrics for name in metrics[kind]} == {
            (listener.name.split()[0], listener.name.split()[1]) for listener in service.listeners
        }
        assert set(metrics["udp"]) == {"raw", "names"}
        assert set(metrics["websocket"]) == {"chat", "pass"}
        assert server_traffic(metrics)["web/127.0.0.1:9001"]["bytes_in"] == 6
    finally:
        service.stopService()


def test_add_counters_sums_numbers_key_by_key_at_any_depth() -> None:
    total: dict[str, Any] = {"workers": 1, "listeners": {"tcp db": {"active": 2}}}
    result = add_counters(
        total,
        {
            "workers": 1,
            "listeners": {"tcp db": {"active": 3, "total": 9}, "udp dns": {"sessions": 4}},
            "servers": {"db/10.0.0.1:3306": {"active": 1}},
        },
    )
    assert result is total
    assert total == {
        "workers": 2,
        "listeners": {"tcp db": {"active": 5, "total": 9}, "udp dns": {"sessions": 4}},
        "servers": {"db/10.0.0.1:3306": {"active": 1}},
    }

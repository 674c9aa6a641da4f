"""/metrics of the features beside the relays, from the status document (proxyd.admin.status):
the caches, OCSP stapling and ACME. No I/O; proxyd.admin.metrics gathers them with the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# A cache's counters (proxyd.cache.instance.Counters) as metrics: field, name, help.
_CACHE_COUNTERS = (
    ("hits", "proxyd_cache_hits", "Requests answered from the cache, fresh."),
    ("misses", "proxyd_cache_misses", "Lookups that went to the origin (stale ones included)."),
    (
        "stale",
        "proxyd_cache_stale",
        "Stale responses served (stale-while-revalidate, stale-if-error, use_stale).",
    ),
    ("revalidated", "proxyd_cache_revalidated", "Stored responses the origin confirmed (304)."),
    ("collapsed", "proxyd_cache_collapsed", "Requests answered from another request's fetch."),
    ("bypassed", "proxyd_cache_bypassed", "Requests the bypass conditions sent to the origin."),
    ("stored", "proxyd_cache_stored", "Responses stored."),
    ("purged", "proxyd_cache_purged", "Responses purged (PURGE requests and the admin API)."),
    ("bytes_served", "proxyd_cache_served_bytes", "Body bytes sent from the cache."),
    ("cluster_sent", "proxyd_cache_cluster_sent", "Purges made here sent to the cluster."),
    ("cluster_applied", "proxyd_cache_cluster_applied", "Purges of other nodes applied here."),
    (
        "cluster_gaps",
        "proxyd_cache_cluster_gaps",
        "Times the cluster's purge log had lost purges not applied here (all marked stale).",
    ),
    (
        "cluster_errors",
        "proxyd_cache_cluster_errors",
        "Calls to the cluster's Redis that failed or timed out, purges not sent.",
    ),
)


def cache_families(caches: Iterable[Mapping[str, Any]]) -> Iterable[Metric]:
    """Each cache's counters, and what it holds (the status document's `caches`)."""
    counters = {
        field: CounterMetricFamily(name, help_text, labels=["cache"])
        for field, name, help_text in _CACHE_COUNTERS
    }
    entries = GaugeMetricFamily(
        "proxyd_cache_entries",
        "Responses stored now (the disk tier's when there is one, else the memory tiers').",
        labels=["cache"],
    )
    size = GaugeMetricFamily(
        "proxyd_cache_bytes",
        "Bytes stored now, bodies and fields (the disk tier's when there is one).",
        labels=["cache"],
    )
    for cache in caches:
        name = [cache["name"]]
        for field, family in counters.items():
            family.add_metric(name, cache["counters"].get(field, 0))
        entries.add_metric(name, cache["entries"])
        size.add_metric(name, cache["bytes"])
    every: list[Metric] = [*counters.values(), entries, size]
    yield from (metric for metric in every if metric.samples)


_STICK_COUNTERS = (
    ("lookups", "proxyd_stick_lookups", "Stick table lookups that asked Redis."),
    ("recorded", "proxyd_stick_recorded", "Keys recorded in a stick table (new keys)."),
    ("moved", "proxyd_stick_moved", "Keys moved off a server that was not available."),
    (
        "alone",
        "proxyd_stick_decided_alone",
        "Requests whose server this node picked without Redis (timeout or outage).",
    ),
    ("errors", "proxyd_stick_store_errors", "Stick table Redis calls that failed or timed out."),
)


def stick_families(tables: Mapping[str, Mapping[str, int]]) -> Iterable[Metric]:
    """Each pool's stick table counters (proxyd.filters.stick; summed over the workers)."""
    if not tables:
        return
    for field, name, help_text in _STICK_COUNTERS:
        family = CounterMetricFamily(name, help_text, labels=["pool"])
        for pool, figures in tables.items():
            family.add_metric([pool], figures.get(field, 0))
        yield family


def admin_cluster_families(figures: Mapping[str, int] | None) -> Iterable[Metric]:
    """The shared admin states' figures ([admin] cluster: proxyd.admin.shared_state)."""
    if not figures:
        return
    for field, name, help_text in (
        ("sent", "proxyd_admin_cluster_sent", "Admin state changes made here sent to the cluster."),
        ("applied", "proxyd_admin_cluster_applied", "Other nodes' admin state changes applied."),
        ("errors", "proxyd_admin_cluster_errors", "Calls to the cluster's Redis that failed."),
    ):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], figures.get(field, 0))
        yield counter


def ocsp_families(figures: Mapping[str, int] | None) -> Iterable[Metric]:
    """OCSP stapling's figures (proxyd.ocsp_stapling; summed over the workers)."""
    if not figures:
        return
    for field, name, help_text in (
        ("certificates", "proxyd_ocsp_certificates", "Certificates with an OCSP responder."),
        ("stapled", "proxyd_ocsp_stapled", "Certificates with a valid OCSP response to staple."),
    ):
        gauge = GaugeMetricFamily(name, help_text)
        gauge.add_metric([], figures.get(field, 0))
        yield gauge
    for field, name, help_text in (
        ("fetches", "proxyd_ocsp_fetches", "OCSP responses asked for."),
        ("failed", "proxyd_ocsp_fetch_failures", "OCSP fetches that gave nothing to staple."),
    ):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], figures.get(field, 0))
        yield counter


def acme_families(sections: Iterable[Mapping[str, Any]]) -> Iterable[Metric]:
    """Each [acme] section's certificate and orders (the status document's `acme`)."""
    labels = ["acme"]
    expiry = GaugeMetricFamily(
        "proxyd_acme_certificate_expiry_timestamp_seconds",
        "When the [acme] section's certificate expires (notAfter), in seconds since the epoch.",
        labels=labels,
    )
    orders = CounterMetricFamily(
        "proxyd_acme_orders",
        "Certificate orders that ended, by result (success: a certificate served; failure).",
        labels=[*labels, "result"],
    )
    last = GaugeMetricFamily(
        "proxyd_acme_last_attempt_timestamp_seconds",
        "When the last order began, in seconds since the epoch.",
        labels=labels,
    )
    following = GaugeMetricFamily(
        "proxyd_acme_next_attempt_timestamp_seconds",
        "When the next order is planned (the renewal, or a retry after a failure), in"
        " seconds since the epoch; absent while an order runs.",
        labels=labels,
    )
    failures = GaugeMetricFamily(
        "proxyd_acme_consecutive_failures",
        "Failed orders in a row: above 0, the next order is a retry after a backoff.",
        labels=labels,
    )
    for section in sections:
        name = [section["name"]]
        if section["expiry"] is not None:
            expiry.add_metric(name, section["expiry"])
        for result, count in section["orders"].items():
            orders.add_metric([*name, result], count)
        if section["last_attempt"] is not None:
            last.add_metric(name, section["last_attempt"])
        if section["next_attempt"] is not None:
            following.add_metric(name, section["next_attempt"])
        failures.add_metric(name, section["failures"])
    every: list[Metric] = [expiry, orders, last, following, failures]
    yield from (metric for metric in every if metric.samples)


def discovery_families(pools: Iterable[Mapping[str, Any]]) -> Iterable[Metric]:
    """Each discovering pool's service discovery (the status document's pools' `discovery`,
    proxyd.discovery.service)."""
    servers = GaugeMetricFamily(
        "proxyd_discovery_servers",
        "Servers discovery added to the pool (DNS SRV or etcd), its config's not counted.",
        labels=["pool"],
    )
    updates = CounterMetricFamily(
        "proxyd_discovery_updates",
        "Discovered lists that changed the pool's servers.",
        labels=["pool"],
    )
    failures = CounterMetricFamily(
        "proxyd_discovery_failures",
        "Failed discovery attempts (resolver or etcd unreachable, NXDOMAIN, a broken watch);"
        " the pool keeps its last list.",
        labels=["pool"],
    )
    failing = GaugeMetricFamily(
        "proxyd_discovery_failing",
        "1 while the pool's discovery source is failing (serving its last list), else 0.",
        labels=["pool"],
    )
    for pool in pools:
        found = pool.get("discovery")
        if not found:
            continue
        name = [pool["name"]]
        servers.add_metric(name, found["servers"])
        updates.add_metric(name, found["updates"])
        failures.add_metric(name, found["failures"])
        failing.add_metric(name, 1 if found["failing"] else 0)
    every: list[Metric] = [servers, updates, failures, failing]
    yield from (metric for metric in every if metric.samples)

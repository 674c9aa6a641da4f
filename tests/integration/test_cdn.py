"""A tier of real proxyd caches on loopback addresses (docs/cdn.md): three edge nodes that
share one pool of all three (`hash_key = uri`, each its own `this_server`), a shield in
front of tests/integration/cache_origin.py, and independent caches for comparison.

Run alone: PYTHONPATH=. python -m pytest tests/integration/test_cdn.py -q -s -p no:cacheprovider
(-s shows the hit ratios measured)."""

from __future__ import annotations

import http.client
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from proxyd.config.model import Address, ServerConfig
from proxyd.pool.balance import ConsistentHash
from proxyd.pool.server import Server

from .harness import Backend, ProcessList, Proxyd, free_port, start_proxyd, wait_until

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SITE = "site.test"
"""The Host every client sends, whichever node it asks (as a CDN's clients do)."""
CACHEABLE = "h=Cache-Control:max-age=600"

URLS = 300
REQUESTS = 1800
ZIPF_S = 1.0


class Node:
    def __init__(self, proxyd: Proxyd, host: str, port: int, name: str) -> None:
        self.proxyd = proxyd
        self.host = host
        self.port = port
        self.name = name

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def get(self, target: str, **fields: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", target, headers={"Host": SITE, **fields})
            response = conn.getresponse()
            body = response.read()
            fields: dict[str, str] = {}
            for name, value in response.getheaders():  # field lines of one name joined
                key = name.lower()
                fields[key] = f"{fields[key]}, {value}" if key in fields else value
            return response.status, fields, body
        finally:
            conn.close()

    def upstreams(self) -> dict[str, str]:
        """The server each logged request went to, by its path and query."""
        return {
            record["uri"]: record.get("upstream") or ""
            for record in self.proxyd.access_records()
            if "uri" in record
        }


@pytest.fixture
def origin(processes: ProcessList) -> Backend:
    process = processes.start("cache-origin", [sys.executable, HERE / "cache_origin.py"])
    match = process.wait_for_output(r"PORT (\d+)\n", 15)
    return Backend(process, int(match.group(1)))


def origin_get(origin: Backend, target: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
    try:
        conn.request("GET", target)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def fetched(origin: Backend) -> int:
    """Requests the origin answered since its last reset."""
    return int(origin_get(origin, "/__total"))


def start_node(processes: ProcessList, tmp_path: Path, name: str, config: str) -> Proxyd:
    directory = tmp_path / name
    directory.mkdir()
    return start_proxyd(processes, directory, config)


def edge_config(me: str, host: str, port: int, peers: list[str], shield: str, name: str) -> str:
    return f"""\
[pool edges]
balance = hash
hash_key = uri
this_server = {me}
parent = shield
servers = {" ".join(peers)}
check = http GET /__health
check_interval = 200ms
rise = 1
fall = 1

[pool shield]
servers = {shield}

[cache edge]
memory_size = 16MiB
status_name = {name}

[route health]
respond = 200 "ok"

[route cached]
pool = edges
cache = edge

[http edge]
listen = tcp:{port}:interface={host}
cdn_loop = edge
routes =
    path /__health -> route health
    path /         -> route cached
"""


def cache_config(host: str, port: int, pool: str, name: str, loop: str) -> str:
    return f"""\
[pool origin]
servers = {pool}

[cache main]
memory_size = 16MiB
status_name = {name}

[route cached]
pool = origin
cache = main

[http node]
listen = tcp:{port}:interface={host}
cdn_loop = {loop}
routes =
    path / -> route cached
"""


@pytest.fixture
def tier(processes: ProcessList, tmp_path: Path, origin: Backend) -> tuple[list[Node], Node]:
    """Three edges on 127.0.0.2-4 (one pool of all three, each itself in it), a shield on
    127.0.0.5 in front of the origin."""
    shield_port = free_port("127.0.0.5")
    shield_proxyd = start_node(
        processes,
        tmp_path,
        "shield",
        cache_config("127.0.0.5", shield_port, origin.address, "shield", "shield"),
    )
    shield = Node(shield_proxyd, "127.0.0.5", shield_port, "shield")
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    ports = [free_port(host) for host in hosts]
    peers = [f"{host}:{port}" for host, port in zip(hosts, ports, strict=True)]
    edges = []
    for i, (host, port) in enumerate(zip(hosts, ports, strict=True), 1):
        name = f"edge-{i}"
        config = edge_config(peers[i - 1], host, port, peers, shield.address, name)
        edges.append(Node(start_node(processes, tmp_path, name, config), host, port, name))
    # An edge started before its peers found them down at its first checks: wait until each
    # sees every peer up again (the ring is the same on all only when their views agree).
    wait_until(
        lambda: not any(seen_down(edge, peer) for edge in edges for peer in peers),
        10,
        "every edge to see every peer up",
    )
    return edges, shield


def seen_down(node: Node, peer: str) -> bool:
    """The last state `node` logged for `peer` in pool edges is DOWN."""
    states = re.findall(
        rf"server {re.escape(peer)} in pool edges is (UP|DOWN)\b", node.proxyd.log()
    )
    return bool(states) and states[-1] == "DOWN"


def independent(processes: ProcessList, tmp_path: Path, origin: Backend) -> list[Node]:
    """Three caches on 127.0.0.6-8, each in front of the origin on its own."""
    nodes = []
    for i, host in enumerate(["127.0.0.6", "127.0.0.7", "127.0.0.8"], 1):
        port = free_port(host)
        name = f"solo-{i}"
        config = cache_config(host, port, origin.address, name, name)
        nodes.append(Node(start_node(processes, tmp_path, name, config), host, port, name))
    return nodes


def chain(fields: dict[str, str]) -> list[str]:
    """The Cache-Status members' cache names, in the field's order."""
    value = fields.get("cache-status", "")
    return [member.split(";")[0].strip() for member in value.split(",") if member.strip()]


def owners(peers: list[str], targets: list[str]) -> dict[str, str]:
    """Where proxyd's own ring puts each target among `peers` (the key: host, path, query)."""
    servers = [Server(config=ServerConfig(_address(peer)), pool="edges") for peer in peers]
    ring = ConsistentHash(servers)
    return {
        target: str(ring.pick(servers, (SITE + target).encode()).name)  # type: ignore[union-attr]
        for target in targets
    }


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host, int(port))


def test_each_url_is_fetched_from_the_origin_once_across_the_tier(
    tier: tuple[list[Node], Node], origin: Backend
) -> None:
    edges, _ = tier
    targets = [f"/once/{i}?{CACHEABLE}" for i in range(30)]
    by_owner: Counter[str] = Counter()
    for i, target in enumerate(targets):
        order = edges[i % 3 :] + edges[: i % 3]
        first = order[0]
        status, fields, _ = first.get(target)
        assert status == 200
        names = chain(fields)
        # Origin side first (RFC 9211 2): the shield, the peer that owns the URL when it is
        # not the node asked, the node asked.
        assert names[0] == "shield" and names[-1] == first.name, names
        owner = names[1] if len(names) == 3 else first.name
        assert len(names) in (2, 3) and owner.startswith("edge-"), names
        by_owner[owner] += 1
        for other in order[1:]:
            status, fields, _ = other.get(target)
            assert status == 200
            names = chain(fields)
            assert names[0] == "shield" and names[-1] == other.name, names
            if other.name != owner:
                assert names == ["shield", owner, other.name], names
                assert "; hit" in fields["cache-status"].split(",")[1]
    assert set(by_owner) == {edge.name for edge in edges}
    assert fetched(origin) == len(targets)
    assert all(origin_get(origin, f"/__count?of={target}") == "1" for target in targets)


def test_independent_caches_fetch_each_url_once_per_node(
    processes: ProcessList, tmp_path: Path, origin: Backend
) -> None:
    nodes = independent(processes, tmp_path, origin)
    targets = [f"/solo/{i}?{CACHEABLE}" for i in range(20)]
    for target in targets:
        for node in nodes:
            status, fields, _ = node.get(target)
            assert status == 200 and chain(fields) == [node.name]
    assert fetched(origin) == len(targets) * len(nodes)


def test_a_killed_peers_share_moves_to_the_others_and_clients_still_get_answers(
    tier: tuple[list[Node], Node], origin: Backend
) -> None:
    edges, shield = tier
    peers = [edge.address for edge in edges]
    asked, killed, other = edges[2], edges[1], edges[0]
    before = [f"/before/{i}?{CACHEABLE}" for i in range(120)]
    placed = owners(peers, before)
    for target in before:
        assert asked.get(target)[0] == 200
    wait_until(
        lambda: all(t in asked.upstreams() for t in before), 10, "the requests in the access log"
    )
    upstream = asked.upstreams()
    for target in before:
        expected = shield.address if placed[target] == asked.address else placed[target]
        assert upstream[target] == expected, target

    offset = asked.proxyd.log_offset()
    killed.proxyd.stopped_by_test = True
    killed.proxyd.process.kill()
    # At once, before any check has seen it: a refused connect goes on to another server.
    during = [f"/during/{i}?{CACHEABLE}" for i in range(30)]
    for target in during:
        status, _, body = asked.get(target)
        assert status == 200, body
    asked.proxyd.wait_for_state(killed.address, "edges", "DOWN", timeout=10, start=offset)

    after = [f"/after/{i}?{CACHEABLE}" for i in range(300)]
    with_all = owners(peers, after)
    without = owners([other.address, asked.address], after)
    for target in after:
        assert asked.get(target)[0] == 200
    wait_until(
        lambda: all(t in asked.upstreams() for t in after), 10, "the requests in the access log"
    )
    upstream = asked.upstreams()
    moved = 0
    for target in after:
        expected = shield.address if without[target] == asked.address else without[target]
        assert upstream[target] == expected, target
        assert upstream[target] != killed.address
        if with_all[target] != without[target]:
            assert with_all[target] == killed.address  # only the killed peer's keys move
            moved += 1
    # About a third of the keys were the killed peer's; only those moved.
    assert 0.2 < moved / len(after) < 0.45, moved
    print(f"\nkilled peer: {moved}/{len(after)} keys moved ({moved / len(after):.0%})")


def test_cdn_loop_stops_a_node_that_proxies_to_itself(
    processes: ProcessList, tmp_path: Path, origin: Backend
) -> None:
    port = free_port("127.0.0.2")
    # Misconfigured: the node's pool is itself, without this_server.
    config = cache_config("127.0.0.2", port, f"127.0.0.2:{port}", "loop", "edge")
    node = Node(start_node(processes, tmp_path, "loop", config), "127.0.0.2", port, "loop")
    status, _, body = node.get("/looping")
    assert status == 508, body
    records = node.proxyd.wait_access_records(3)
    assert [record["status"] for record in records] == [508, 508, 508]
    assert "CDN-Loop" in str(records[-1].get("error") or records[0].get("error"))
    assert fetched(origin) == 0


def zipf_mix(seed: int = 25) -> list[tuple[int, str]]:
    """REQUESTS requests over URLS URLs, Zipf-like (the r-th most asked URL weighted
    1/r**ZIPF_S), each to one of three nodes chosen uniformly: (node index, target)."""
    rng = random.Random(seed)
    weights = [1 / (rank**ZIPF_S) for rank in range(1, URLS + 1)]
    picks = rng.choices(range(URLS), weights=weights, k=REQUESTS)
    return [(rng.randrange(3), f"/mix/{url}?{CACHEABLE}") for url in picks]


def run_mix(nodes: list[Node], mix: list[tuple[int, str]]) -> dict[str, Any]:
    local_hits = 0
    for index, target in mix:
        node = nodes[index]
        status, fields, _ = node.get(target)
        assert status == 200
        last = fields["cache-status"].split(",")[-1]
        local_hits += "; hit" in last
    return {"local_hits": local_hits}


def test_tier_hit_ratio_against_independent_caches(
    tier: tuple[list[Node], Node], processes: ProcessList, tmp_path: Path, origin: Backend
) -> None:
    edges, _ = tier
    solo = independent(processes, tmp_path, origin)
    mix = zipf_mix()
    distinct = len({target for _, target in mix})
    per_node = sum(len({t for i, t in mix if i == node}) for node in range(3))

    origin_get(origin, "/__reset")
    tier_run = run_mix(edges, mix)
    tier_fetches = fetched(origin)
    origin_get(origin, "/__reset")
    solo_run = run_mix(solo, mix)
    solo_fetches = fetched(origin)

    assert tier_fetches == distinct  # each URL from the origin once across the tier
    assert solo_fetches == per_node  # once per node that was asked for it
    tier_ratio = 1 - tier_fetches / REQUESTS
    solo_ratio = 1 - solo_fetches / REQUESTS
    print(
        f"\n{REQUESTS} requests, {URLS} URLs (Zipf s={ZIPF_S}, {distinct} asked), 3 nodes:"
        f"\n  tier (3 edges by uri + shield): {tier_fetches} origin fetches,"
        f" hit ratio {tier_ratio:.1%}, served by the node asked {tier_run['local_hits']}"
        f"\n  3 independent caches:          {solo_fetches} origin fetches,"
        f" hit ratio {solo_ratio:.1%}, served by the node asked {solo_run['local_hits']}"
    )
    assert tier_ratio > solo_ratio

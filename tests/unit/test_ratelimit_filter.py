"""Rate limits on the HTTP relay (proxyd.filters.ratelimit), driven through the relay on
StringTransports and a MemoryReactorClock: the burst, the 429 and its fields, the steady
rate, the keys (client, header, identity, route), dry run, several limits at once, the
response fields, the metrics, the sweep's lifetime and a reload's take-over."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import pytest
from twisted.logger import capturedLogs

from proxyd.admin.metrics import metrics_registry
from proxyd.auth.api_keys import parse_api_keys
from proxyd.config.auth_model import ApiKeyAuthConfig, AuthConfig
from proxyd.config.model import OFF
from proxyd.config.ratelimit_model import RateLimitConfig, RedisStore
from proxyd.ratelimit import rates
from proxyd.ratelimit.gcra import Gcra
from proxyd.resources import ProcessResources
from tests.unit.test_http_relay import Relay, field
from tests.unit.test_ratelimit_redis import FakeRedis
from tests.unit.test_security_filters import errors, get, proxied, secured, status


def limit(name: str = "per-client", rate: str = "3/s", **settings: Any) -> RateLimitConfig:
    parsed = rates.rate(rate)
    settings.setdefault("burst", parsed.count)
    return RateLimitConfig(name=name, rate=parsed, **settings)


def code(relay: Relay, request: bytes, client: Any = None) -> int:
    """The status the client gets for `request` (the server answers 200 when asked)."""
    relay.send(request, client)
    answer = relay.received() if client is None else b""
    if client is not None:
        return -1
    if answer:
        return status(answer)
    return status(proxied(relay)[1])


def test_a_burst_passes_the_next_is_refused_429_and_one_passes_after_the_interval() -> None:
    relay = Relay(ratelimits=(limit(),))
    for remaining in (2, 1, 0):
        relay.send(get())
        _, answer = proxied(relay)
        assert status(answer) == 200
        assert field(answer, "RateLimit-Policy") == [b'"per-client";q=3;w=1']
        assert field(answer, "RateLimit") == [b'"per-client";r=%d;t=1' % remaining]
    relay.send(get())
    answer = relay.received()
    assert status(answer) == 429 and answer.endswith(b"429 Too Many Requests\n")
    assert field(answer, "Retry-After") == [b"1"]
    assert field(answer, "RateLimit") == [b'"per-client";r=0;t=1']
    assert field(answer, "RateLimit-Policy") == [b'"per-client";q=3;w=1']
    assert relay.pending_connects() == []
    assert relay.log.records[-1]["error"] == "rate limited by per-client"
    assert errors(relay) == {"rate_limited": 1}
    relay.reactor.advance(1 / 3)
    relay.send(get())
    assert status(proxied(relay)[1]) == 200
    relay.send(get())
    assert status(relay.received()) == 429


def test_the_refusal_status_is_the_limits() -> None:
    relay = Relay(ratelimits=(limit(rate="1/s", status=503),))
    relay.send(get())
    proxied(relay)
    relay.send(get())
    answer = relay.received()
    assert status(answer) == 503 and field(answer, "Retry-After") == [b"1"]


def test_clients_are_counted_apart_by_their_real_address() -> None:
    relay = Relay(
        ratelimits=(limit(rate="1/s"),), trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)
    )
    relay.send(get("/", "X-Forwarded-For: 192.0.2.1"))  # from 10.0.0.7, a trusted proxy
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-Forwarded-For: 192.0.2.2"))
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-Forwarded-For: 192.0.2.1"))
    assert status(relay.received()) == 429
    other, transport = relay.connect_client("192.0.2.9")  # not trusted: its own address
    other.dataReceived(get("/", "X-Forwarded-For: 192.0.2.2"))
    assert transport.value() == b""  # at the server


def test_a_header_key_counts_by_its_value_and_its_absence_by_the_client() -> None:
    relay = Relay(ratelimits=(limit(rate="1/s", key=(("header", "x-tenant"),)),))
    relay.send(get("/", "X-Tenant: a"))
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-Tenant: b"))
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-Tenant: a"))
    assert status(relay.received()) == 429
    relay.send(get("/"))  # no header: the client's address, counted apart
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/"))
    assert status(relay.received()) == 429
    long = "x" * 1000
    relay.send(get("/", f"X-Tenant: {long}"))
    assert status(proxied(relay)[1]) == 200
    tables = relay.factory.ratelimits.limits["per-client"].table
    assert hashlib.blake2b(long.encode(), digest_size=16).hexdigest() in tables._keys


KEY, OTHER = b"k-123", b"k-456"


def api_keys() -> AuthConfig:
    lines = "".join(
        f"{name} {hashlib.sha256(key).hexdigest()}\n" for name, key in (("ci", KEY), ("ops", OTHER))
    )
    method = ApiKeyAuthConfig(keys_file="keys", keys=parse_api_keys(lines.encode(), "keys"))
    return AuthConfig(name="api", type="api_key", realm="api", method=method)


def test_an_auth_key_counts_by_identity_and_anonymous_requests_by_client() -> None:
    public = secured("/public/", auth=OFF)
    relay = Relay(
        routes=(public, secured("/")),
        auth=api_keys(),
        ratelimits=(limit(rate="1/s", key=(("auth", None),)),),
    )
    assert relay.factory.chains["*/"].names[-3:] == ("auth", "ratelimit", "forwarding")
    relay.send(get("/", "X-API-Key: k-123"))
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-API-Key: k-456"))  # another identity, the same client
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/", "X-API-Key: k-123"))
    assert status(relay.received()) == 429
    relay.send(get("/public/"))  # no identity: the client's address
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/public/"))
    assert status(relay.received()) == 429


def test_a_limit_is_the_listeners_across_routes_unless_keyed_by_route() -> None:
    routes = (secured("/a", name="a"), secured("/b", name="b"))
    shared = Relay(routes=routes, ratelimits=(limit(rate="1/s"),))
    shared.send(get("/a"))
    assert status(proxied(shared)[1]) == 200
    shared.send(get("/b"))
    assert status(shared.received()) == 429  # one table for the listener
    by_route = Relay(routes=routes, ratelimits=(limit(rate="1/s", key=(("route", None),)),))
    by_route.send(get("/a"))
    assert status(proxied(by_route)[1]) == 200
    by_route.send(get("/b"))
    assert status(proxied(by_route)[1]) == 200
    by_route.send(get("/a"))
    assert status(by_route.received()) == 429


def test_a_routes_limits_add_to_the_listeners_and_off_drops_them() -> None:
    strict = limit("strict", rate="1/s")
    routes = (
        secured("/strict", name="strict", ratelimits=(strict,)),
        secured("/free", name="free", ratelimits=OFF),
        secured("/", name="rest"),
    )
    relay = Relay(routes=routes, ratelimits=(limit(rate="2/s"),))
    chains = relay.factory.chains
    assert "ratelimit" not in chains["free"].names

    relay.send(get("/strict"))
    _, answer = proxied(relay)
    assert field(answer, "RateLimit-Policy") == [b'"per-client";q=2;w=1, "strict";q=1;w=1']
    relay.send(get("/strict"))
    answer = relay.received()
    assert status(answer) == 429
    # The limit that allowed shows what it would have left had it been charged.
    assert field(answer, "RateLimit") == [b'"strict";r=0;t=1, "per-client";r=0;t=1']
    for _ in range(3):
        relay.send(get("/free"))
        assert status(proxied(relay)[1]) == 200
    relay.send(get("/"))  # the listener's limit: one left (the refused request cost nothing)
    assert status(proxied(relay)[1]) == 200
    relay.send(get("/"))
    assert status(relay.received()) == 429


def test_dry_run_never_refuses_never_shows_and_counts_what_it_would_refuse() -> None:
    relay = Relay(ratelimits=(limit("trial", rate="1/s", dry_run=True),))
    for _ in range(3):
        relay.send(get())
        _, answer = proxied(relay)
        assert status(answer) == 200 and field(answer, "RateLimit") == []
    figures = relay.factory.ratelimits.snapshot()["trial"]
    assert figures == {"allowed": 1, "dry_run_limited": 2, "tracked": 1, "evicted": 0}


def test_two_limits_charge_both_or_neither() -> None:
    wide, narrow = limit("wide", rate="10/s"), limit("narrow", rate="1/s")
    relay = Relay(ratelimits=(wide, narrow))
    relay.send(get())
    assert status(proxied(relay)[1]) == 200
    relay.send(get())
    answer = relay.received()
    assert status(answer) == 429
    assert relay.log.records[-1]["error"] == "rate limited by narrow"
    limits = relay.factory.ratelimits.limits
    assert limits["wide"].table.allowed == 1 and limits["narrow"].table.allowed == 1
    assert limits["wide"].table.peek("10.0.0.7").remaining == 9  # not charged by the refusal


def test_the_limits_are_metrics() -> None:
    relay = Relay(ratelimits=(limit(rate="1/s"),))
    relay.send(get())
    proxied(relay)
    relay.send(get())
    relay.received()
    document = {
        "workers": 1,
        "listeners": [],
        "pools": [],
        "metrics": relay.factory.stats.snapshot(),
    }
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in metrics_registry(document).collect()
        if metric.name.startswith("proxyd_ratelimit")
        for sample in metric.samples
    }
    labels = (("kind", "http"), ("limit", "per-client"), ("listener", "front"))
    assert samples == {
        ("proxyd_ratelimit_requests_total", (*labels, ("outcome", "allowed"))): 1,
        ("proxyd_ratelimit_requests_total", (*labels, ("outcome", "limited"))): 1,
        ("proxyd_ratelimit_keys", labels): 1,
        ("proxyd_ratelimit_evicted_total", labels): 0,
    }


def test_the_sweep_runs_with_the_listener_and_stops_with_its_last_connection() -> None:
    relay = Relay(ratelimits=(limit(rate="1/s"),))
    context = relay.factory.ratelimits
    others = set(relay.reactor.getDelayedCalls())  # the client connection's timer
    assert not context.sweeping
    relay.factory.startFactory()
    assert context.sweeping
    (sweep,) = set(relay.reactor.getDelayedCalls()) - others
    relay.send(get())
    proxied(relay)
    assert context.limits["per-client"].table.tracked == 1
    relay.reactor.advance(1.0)  # the key owes nothing after 1s: swept
    assert context.limits["per-client"].table.tracked == 0
    relay.client.connectionLost(None)
    done: list[object] = []
    relay.factory.retire().addCallback(done.append)
    assert done and not context.sweeping
    assert not any(call.func == sweep.func for call in relay.reactor.getDelayedCalls())


def test_a_listener_without_limits_has_no_filter_and_no_timer() -> None:
    relay = Relay()
    relay.factory.startFactory()
    assert "ratelimit" not in relay.factory.chains["*/"].names
    assert not relay.factory.ratelimits.sweeping


def test_a_reload_keeps_the_tables_of_unchanged_limits() -> None:
    before = Relay(ratelimits=(limit(rate="1/s"), limit("other", rate="5/s")))
    before.send(get())
    proxied(before)
    after = Relay(ratelimits=(limit(rate="1/s"), limit("other", rate="6/s")))
    after.factory.take_over(before.factory)
    kept = after.factory.ratelimits.limits
    assert kept["per-client"].table is before.factory.ratelimits.limits["per-client"].table
    assert kept["other"].table is not before.factory.ratelimits.limits["other"].table
    after.send(get())
    assert status(after.received()) == 429  # no fresh burst from the reload


# Limits counted in Redis (proxyd.ratelimit.redis_limit), with the fake store of
# test_ratelimit_redis


def redis_relay(*limits: RateLimitConfig, auto: bool = False) -> tuple[Relay, list[FakeRedis]]:
    stores: list[FakeRedis] = []
    holder: list[Relay] = []

    remote = [config for config in limits if config.store is not None]

    def call(store: RedisStore) -> Any:
        config = remote[len(stores)]
        fake = FakeRedis(Gcra(config.rate, config.burst), holder[0].reactor, auto)
        stores.append(fake)
        return fake

    relay = Relay.__new__(Relay)
    holder.append(relay)
    Relay.__init__(relay, ratelimits=limits, resources=ProcessResources(redis=call))
    return relay, stores


STORE = RedisStore("127.0.0.1")


def test_a_redis_limit_holds_the_request_until_redis_answers() -> None:
    relay, [redis] = redis_relay(limit(rate="2/s", store=STORE))
    relay.send(get())
    assert relay.pending_connects() == [] and relay.received() == b""
    redis.answer()
    _, answer = proxied(relay)
    assert status(answer) == 200
    assert field(answer, "RateLimit") == [b'"per-client";r=1;t=1']
    relay.send(get())
    redis.answer()
    proxied(relay)
    relay.send(get())
    redis.answer()
    refused = relay.received()
    assert status(refused) == 429 and field(refused, "Retry-After") == [b"1"]
    assert relay.log.records[-1]["error"] == "rate limited by per-client"


def test_a_redis_limit_down_with_deny_answers_503_and_with_allow_lets_through() -> None:
    relay, [_redis] = redis_relay(limit(rate="2/s", store=STORE, on_store_error="deny"))
    with capturedLogs():
        relay.send(get())
        relay.reactor.advance(0.1)
    answer = relay.received()
    assert status(answer) == 503 and field(answer, "Retry-After") == [b"1"]
    assert relay.log.records[-1]["error"] == "rate limit store unavailable for per-client"
    assert errors(relay) == {"ratelimit_store": 1}

    relay, [_redis] = redis_relay(limit(rate="2/s", store=STORE))
    with capturedLogs():
        relay.send(get())
        relay.reactor.advance(0.1)
    _, answer = proxied(relay)
    assert status(answer) == 200
    assert field(answer, "RateLimit") == []  # nothing to say: Redis did not judge it


def test_local_limits_refuse_before_redis_is_asked() -> None:
    relay, [redis] = redis_relay(
        limit("local", rate="1/s"), limit("shared", rate="5/s", store=STORE), auto=True
    )
    relay.send(get())
    assert status(proxied(relay)[1]) == 200
    relay.send(get())
    assert status(relay.received()) == 429
    assert redis.tats == {'proxyd:rl:shared:"10.0.0.7"': pytest.approx(1 / 5)}


def test_a_dry_run_redis_limit_delays_nothing() -> None:
    relay, [redis] = redis_relay(limit(rate="1/s", store=STORE, dry_run=True))
    relay.send(get())
    assert status(proxied(relay)[1]) == 200
    redis.answer()
    relay.send(get())
    assert status(proxied(relay)[1]) == 200
    redis.answer()
    assert relay.factory.ratelimits.limits["per-client"].table.limited == 1

"""`[ratelimit NAME]` sections and the `ratelimits` key of listeners and routes
(docs/ratelimits.md): the values as loaded, and every bad value refused with the file's line."""

from __future__ import annotations

import textwrap

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import OFF, Config
from proxyd.config.ratelimit_model import RedisStore
from proxyd.ratelimit.rates import Rate

POOL = "[pool web]\nservers = 127.0.0.1:9001\n"
"""Lines 1-2."""


def load(text: str) -> Config:
    return loads(POOL + textwrap.dedent(text), "proxyd.ini")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(text)
    return [str(e) for e in info.value.errors]


def test_a_limit_with_its_defaults_and_with_every_key() -> None:
    config = load(
        """\
        [ratelimit plain]
        rate = 100/s

        [ratelimit api]
        rate = 6000/m
        burst = 20
        key = route header X-API-Key
        dry_run = on
        max_keys = 5000
        status = 503

        [route api]
        pool = web
        ratelimits = api

        [route free]
        pool = web
        ratelimits = off

        [http h]
        listen = tcp:8080
        ratelimits = plain
        routes =
            path /api/  -> route api
            path /free/ -> route free
            path /      -> pool web
        """
    )
    listener = config.http[0]
    (plain,) = listener.ratelimits
    assert (plain.rate, plain.burst, plain.key) == (Rate(100, 1), 100, (("client", None),))
    assert (plain.dry_run, plain.max_keys, plain.status) == (False, 100_000, 429)
    api, free, rest = listener.routes
    (limit,) = api.security.ratelimits
    assert (limit.rate, limit.burst, limit.dry_run) == (Rate(6000, 60), 20, True)
    assert limit.key == (("route", None), ("header", "x-api-key"))
    assert (limit.max_keys, limit.status, limit.key_text) == (5000, 503, "route header x-api-key")
    assert free.security.ratelimits == OFF and rest.security.ratelimits is None


def test_ratelimits_off_on_a_listener_is_none() -> None:
    config = load(
        "[http h]\nlisten = tcp:8080\nratelimits = off\nroutes =\n    path / -> pool web\n"
    )
    assert config.http[0].ratelimits == ()


def test_bad_values_are_refused_with_their_line() -> None:
    found = errors(
        """\
        [ratelimit a]
        rate = 100/parsec

        [ratelimit b]
        rate = 10/s
        key = cookie x

        [ratelimit c]
        rate = 10/s
        max_keys = 0

        [ratelimit d]
        burst = 5

        [ratelimit e]
        rate = 1/s
        key = header

        [http h]
        listen = tcp:8080
        ratelimits = a, per-clinet
        routes =
            path / -> pool web
        """
    )
    assert found[0].startswith("proxyd.ini:4: [ratelimit a] rate: expected a rate like 100/s")
    assert found[1].startswith("proxyd.ini:8: [ratelimit b] key: expected one or more of")
    assert "found 'cookie'" in found[1]
    assert found[2].startswith("proxyd.ini:12: [ratelimit c] max_keys: expected a whole number")
    assert found[3].startswith("proxyd.ini:14: [ratelimit d] rate: expected a 'rate' key")
    assert found[4].startswith("proxyd.ini:19: [ratelimit e] key: expected 'header NAME'")
    assert found[5].startswith("proxyd.ini:23: [http h] ratelimits: expected the name of a")
    assert "found 'per-clinet'" in found[5] and "did you mean" not in found[5]
    assert len(found) == 6


def test_an_unknown_name_gets_a_did_you_mean() -> None:
    (found,) = errors(
        """\
        [ratelimit per-client]
        rate = 10/s

        [http h]
        listen = tcp:8080
        ratelimits = per-clinet
        routes =
            path / -> pool web
        """
    )
    assert found.startswith("proxyd.ini:8: [http h] ratelimits: expected the name of a [ratelimit]")
    assert found.endswith("(did you mean 'per-client'?)")


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("key = client client", "'client' twice"),
        ("key = header X-A header x-a", "'header x-a' twice"),
        ("key = clients", "did you mean 'client'?"),
        ("burst = 0", "a burst from 1"),
        ("status = 200", "a status from 400 to 599"),
        ("dry_run = maybe", "'maybe'"),
        ("rate = 10/ms", "periods are whole seconds"),
    ],
)
def test_each_bad_value(value: str, found: str) -> None:
    (error,) = errors(
        f"[ratelimit a]\nrate = 1/s\n{value}\n"
        if "rate" not in value
        else f"[ratelimit a]\n{value}\n"
    )
    assert found in error


def test_a_redis_store_with_its_keys() -> None:
    config = load(
        """\
        [ratelimit plain]
        rate = 100/s
        store = redis://cache.internal

        [ratelimit shared]
        rate = 100/s
        burst = 20
        store = rediss://proxyd:p%40ss@[::1]:6380/3
        store_ca = /etc/ssl/certs/ca-certificates.crt
        store_timeout = 50ms
        on_store_error = deny
        local_allowance = 20

        [http h]
        listen = tcp:8080
        ratelimits = plain shared
        routes =
            path / -> pool web
        """
    )
    plain, shared = config.http[0].ratelimits
    assert plain.store == RedisStore("cache.internal", 6379, 0)
    assert (plain.store_timeout, plain.on_store_error, plain.local_allowance) == (0.1, "allow", 0)
    assert shared.store == RedisStore(
        "::1", 6380, 3, "proxyd", "p@ss", True, "/etc/ssl/certs/ca-certificates.crt"
    )
    assert (shared.store_timeout, shared.on_store_error, shared.local_allowance) == (
        0.05,
        "deny",
        20,
    )
    assert shared.store.display == "rediss://[::1]:6380/3"
    assert "p@ss" not in repr(shared)
    local = load(
        "[ratelimit a]\nrate = 1/s\nstore = local\n"
        "[http h]\nlisten = tcp:8080\nratelimits = a\nroutes =\n    path / -> pool web\n"
    )
    assert local.http[0].ratelimits[0].store is None


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("store = redis://127.0.0.1:99999/0", "expected a port from 1 to 65535"),
        ("store = redis://127.0.0.1:0", "expected a port from 1 to 65535"),
        ("store = redis://:secret@127.0.0.1:6x79", "found 'redis://***@127.0.0.1:6x79'"),
        ("store = http://127.0.0.1/", "expected 'local' or a URL redis://"),
        ("store = redis:///0", "expected 'local' or a URL redis://"),
        ("store = redis://h/db1", "a database number from 0 to 1000000"),
        ("store = redis://h/0?timeout=1", "no query nor fragment"),
        ("store = redis://h\nstore_timeout = 0s", "a duration above zero"),
        ("store = redis://h\non_store_error = maybe", "expected 'allow', 'deny'"),
        ("store = redis://h\nlocal_allowance = 2", "at most the burst (1)"),
        ("store = redis://h\nstore_ca = /etc/ssl/certs/ca-certificates.crt", "rediss://"),
        ("store_timeout = 1s", "store = redis://...; found no Redis store"),
        ("on_store_error = deny", "store = redis://...; found no Redis store"),
        ("local_allowance = 1", "store = redis://...; found no Redis store"),
    ],
)
def test_each_bad_store_value(value: str, found: str) -> None:
    (error,) = errors(f"[ratelimit a]\nrate = 1/s\nburst = 1\n{value}\n")
    assert found in error
    assert "secret" not in error

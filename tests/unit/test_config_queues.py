"""The queue keys of `[pool]` (max_queued, queue_timeout) and of a proxied `[route]`
(max_in_flight, max_queued, queue_timeout): values as loaded, the bounds, and the keys that
only go with `pool`."""

from __future__ import annotations

import textwrap

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Config, ProxyAction


def load(text: str) -> Config:
    return loads(textwrap.dedent(text), "proxyd.ini")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(text)
    return [str(e) for e in info.value.errors]


LISTENER = """\
[http h]
listen = tcp:8080
routes =
    path / -> route r
"""


def test_the_keys_as_loaded_and_their_defaults() -> None:
    config = load(
        "[pool web]\nservers = 127.0.0.1:9001 max_connections=2\nmax_queued = 1000000\n"
        "queue_timeout = 2s\n\n[route r]\npool = web\nmax_in_flight = 1000000\n"
        "max_queued = 7\nqueue_timeout = 250ms\n\n" + LISTENER
    )
    pool = config.pools["web"]
    assert (pool.max_queued, pool.queue_timeout) == (1_000_000, 2.0)
    action = config.http[0].routes[0].action
    assert isinstance(action, ProxyAction)
    assert (action.max_in_flight, action.max_queued, action.queue_timeout) == (1_000_000, 7, 0.25)
    plain = load("[pool web]\nservers = 127.0.0.1:9001\n\n[route r]\npool = web\n\n" + LISTENER)
    assert (plain.pools["web"].max_queued, plain.pools["web"].queue_timeout) == (0, 5.0)
    default = plain.http[0].routes[0].action
    assert isinstance(default, ProxyAction)
    assert (default.max_in_flight, default.max_queued, default.queue_timeout) == (0, 0, 5.0)


@pytest.mark.parametrize(
    ("section", "value", "found"),
    [
        ("pool", "max_queued = 1000001", "expected a whole number from 0 to 1000000"),
        ("pool", "max_queued = -1", "expected a whole number from 0 to 1000000"),
        ("pool", "queue_timeout = 0s", "a duration above zero"),
        ("route", "max_in_flight = 1000001", "expected a whole number from 0 to 1000000"),
        ("route", "max_queued = 1000001", "expected a whole number from 0 to 1000000"),
        ("route", "queue_timeout = soon", "a duration such as"),
    ],
)
def test_values_past_the_bounds_are_refused(section: str, value: str, found: str) -> None:
    pool = "[pool web]\nservers = 127.0.0.1:9001\n"
    route = "[route r]\npool = web\n"
    text = (
        (pool + value + "\n\n" + route)
        if section == "pool"
        else (pool + "\n" + route + value + "\n")
    )
    (error,) = errors(text + "\n" + LISTENER)
    assert found in error, error


def test_queue_keys_go_with_pool_only() -> None:
    (error,) = errors(
        "[pool web]\nservers = 127.0.0.1:9001\n\n[route r]\nrespond = 200 ok\nmax_in_flight = 2\n\n"
        + LISTENER
    )
    assert "max_in_flight" in error and "pool" in error

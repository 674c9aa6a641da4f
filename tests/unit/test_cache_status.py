"""proxyd.cache.status: the Cache-Status member of proxyd's cache (RFC 9211)."""

from __future__ import annotations

import pytest

from proxyd.cache.status import cache_status


@pytest.mark.parametrize(
    ("arguments", "member"),
    [
        ({"hit": True, "ttl": 42.7}, b"proxyd; hit; ttl=42"),
        ({"hit": True, "ttl": -2.5}, b"proxyd; hit; ttl=-3"),
        ({"fwd": "miss", "stored": True}, b"proxyd; fwd=miss; stored"),
        (
            {"fwd": "stale", "fwd_status": 304, "ttl": 60},
            b"proxyd; fwd=stale; fwd-status=304; ttl=60",
        ),
        ({"fwd": "uri-miss", "collapsed": True}, b"proxyd; fwd=uri-miss; collapsed"),
        ({"fwd": "bypass", "detail": "no-store"}, b"proxyd; fwd=bypass; detail=no-store"),
        ({"fwd": "bypass", "detail": "a b"}, b'proxyd; fwd=bypass; detail="a b"'),
    ],
)
def test_members(arguments: dict, member: bytes) -> None:
    assert cache_status("proxyd", **arguments) == member


def test_a_name_that_is_not_a_token_is_a_string_and_bad_arguments_are_errors() -> None:
    assert cache_status('edge "1"', hit=True) == b'"edge \\"1\\""; hit'
    with pytest.raises(ValueError):
        cache_status("proxyd")
    with pytest.raises(ValueError):
        cache_status("proxyd", hit=True, fwd="miss")
    with pytest.raises(ValueError):
        cache_status("proxyd", fwd="nope")
    with pytest.raises(ValueError):
        cache_status("caf\u00e9", hit=True)

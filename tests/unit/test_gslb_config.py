"""The configuration of `[gslb NAME]`: its keys, defaults, records and the errors that name
file, line, section and key."""

from __future__ import annotations

import ipaddress

import pytest

from proxyd.config.errors import ConfigErrors
from proxyd.config.gslb_model import GslbConfig, GslbRecord
from proxyd.config.load import loads

POOLS = """\
[pool web]
servers = 127.0.0.1:9101 [::1]:9102
[pool eu]
servers = 127.0.0.2:9101
"""


def gslb_of(body: str) -> GslbConfig:
    config = loads(POOLS + "[gslb demo]\n" + body, "proxyd.ini", serving=True)
    (gslb,) = config.gslb
    return gslb


def errors_of(body: str, pools: str = POOLS) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(pools + "[gslb demo]\n" + body, "proxyd.ini", serving=True)
    return [str(e) for e in info.value.errors]


MINIMAL = "listen = udp:5353:interface=127.0.0.1\nzone = Demo.Test.\nrecords = www -> pool web\n"


def test_a_minimal_section_takes_the_defaults() -> None:
    gslb = gslb_of(MINIMAL)
    assert gslb == GslbConfig(
        name="demo",
        listen="udp:5353:interface=127.0.0.1",
        zone="demo.test",
        records=(GslbRecord("www", "web"),),
    )
    assert (gslb.ttl, gslb.max_answers, gslb.edns_client_subnet) == (30, 0, True)
    assert (gslb.max_connections, gslb.idle_timeout, gslb.max_queries_per_connection) == (
        100,
        10.0,
        100,
    )
    assert gslb.ns_names == ("ns.demo.test",)
    assert gslb.tcp_listen == "tcp:5353:interface=127.0.0.1"


def test_a_gslb_section_alone_is_a_listener() -> None:
    assert gslb_of(MINIMAL).port == 5353


def test_every_key_is_read() -> None:
    gslb = gslb_of(
        "listen = udp:5353:interface=::1\n"
        "zone = demo.test\n"
        "records =\n"
        "    @ -> pool web\n"
        "    www -> pool web\n"
        "    www -> pool eu from 10.0.0.0/8 2001:db8::/32\n"
        "    api.demo.test. -> pool eu\n"
        "ttl = 1m\n"
        "nameservers = ns1.demo.test NS2.demo.test.\n"
        "max_answers = 1\n"
        "edns_client_subnet = off\n"
        "max_connections = 5\n"
        "idle_timeout = 2s\n"
        "max_queries_per_connection = 7\n"
    )
    assert gslb.records == (
        GslbRecord("", "web", (), 0),
        GslbRecord("www", "web", (), 1),
        GslbRecord(
            "www",
            "eu",
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
            2,
        ),
        GslbRecord("api", "eu", (), 3),
    )
    assert gslb.ttl == 60
    assert gslb.nameservers == ("ns1.demo.test", "ns2.demo.test")
    assert (gslb.max_answers, gslb.edns_client_subnet) == (1, False)
    assert (gslb.max_connections, gslb.idle_timeout, gslb.max_queries_per_connection) == (5, 2, 7)
    assert gslb.tcp_listen == "tcp6:5353:interface=\\:\\:1"
    assert gslb.pools() == ("web", "eu")


def test_missing_keys_are_named() -> None:
    assert errors_of("listen = udp:5353\n") == [
        "proxyd.ini:5: [gslb demo] zone: expected a 'zone' key; found none",
        "proxyd.ini:5: [gslb demo] records: expected a 'records' key; found none",
    ]


def test_a_record_naming_an_unknown_pool_is_an_error_on_its_line() -> None:
    assert errors_of(
        "listen = udp:5353\nzone = demo.test\nrecords =\n    www -> pool web\n    api -> pool wbe\n"
    ) == [
        "proxyd.ini:10: [gslb demo] records: expected the name of a [pool] ('eu', 'web');"
        " found 'wbe' (did you mean 'web'?)"
    ]


def test_bad_record_lines_are_each_reported() -> None:
    assert errors_of(
        "listen = udp:5353\nzone = demo.test\nrecords =\n    www pool web\n"
        "    api -> pool web from 10.0.0.1/8\n"
    ) == [
        "proxyd.ini:9: [gslb demo] records: expected NAME -> pool POOL [from NETWORK ...], NAME"
        " relative to the zone or @ for its apex; found 'www pool web'",
        "proxyd.ini:10: [gslb demo] records: expected an IP address or network such as"
        " 10.0.0.0/8; found '10.0.0.1/8' (10.0.0.1/8 has host bits set)",
    ]


def test_a_name_needs_one_default_line() -> None:
    assert errors_of(
        "listen = udp:5353\nzone = demo.test\nrecords =\n    www -> pool web\n"
        "    api -> pool eu from 10.0.0.0/8\n"
    ) == [
        "proxyd.ini:10: [gslb demo] records: expected one line for 'api' without 'from' (its"
        " default pool); found 0"
    ]


def test_an_absolute_name_outside_the_zone_is_an_error() -> None:
    assert errors_of(
        "listen = udp:5353\nzone = demo.test\nrecords =\n    www.other.test. -> pool web\n"
    ) == [
        "proxyd.ini:9: [gslb demo] records: expected a name in the zone demo.test;"
        " found 'www.other.test.'"
    ]


def test_a_pool_of_host_names_cannot_answer_a_and_aaaa() -> None:
    pools = "[pool named]\nservers = web.internal:80\n"
    assert errors_of(
        "listen = udp:5353\nzone = demo.test\nrecords = www -> pool named\n", pools
    ) == [
        "proxyd.ini:6: [gslb demo] records: expected a pool whose servers are IP addresses"
        " (pool named answers A and AAAA queries); found 'web.internal:80'"
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("listen = tcp:5353", "listen: expected udp:PORT or udp:PORT:interface=ADDRESS"),
        ("zone = localhost", "zone: expected a DNS zone such as gslb.example.com"),
        ("ttl = 1.5s", "ttl: expected a duration in whole seconds from 1s to 1d"),
        ("ttl = 2d", "ttl: expected a duration in whole seconds from 1s to 1d"),
        ("max_answers = 65", "max_answers: expected a whole number from 0 to 64"),
        ("max_connections = 0", "max_connections: expected a whole number from 1"),
        ("idle_timeout = 0", "idle_timeout: expected a duration above zero"),
        ("edns_client_subnet = maybe", "edns_client_subnet: expected on or off"),
        ("tll = 30s", "tll: expected a key of gslb sections; found 'tll' (did you mean 'ttl'?)"),
    ],
)
def test_bad_values_name_the_file_line_section_and_key(line: str, error: str) -> None:
    keys = {"listen": "udp:5353", "zone": "demo.test", "records": "www -> pool web"}
    key = line.split(" = ")[0]
    keys.pop(key, None)
    body = "".join(f"{k} = {value}\n" for k, value in keys.items()) + line + "\n"
    (found,) = errors_of(body)
    assert found.startswith(f"proxyd.ini:{6 + len(keys)}: [gslb demo] {error}"), found

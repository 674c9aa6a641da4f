"""The configuration layer: INI text to frozen values, and every class of error it reports."""

from __future__ import annotations

import os
import re

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.cli import main
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import load, loads
from proxyd.config.model import (
    BALANCE_ALGORITHMS,
    Address,
    MysqlCheck,
    ServerConfig,
    SmtpCheck,
    TcpCheck,
)
from proxyd.config.reload import reload_config
from proxyd.config.values import duration
from proxyd.pool.balance import ALGORITHMS
from tests.certs import TestCA

GOOD = """\
; a comment
[proxyd]
access_log = off

[pool db]
servers =
    127.0.0.1:3306 weight=2 max_connections=100
    127.0.0.1:3307 backup
    [::1]:3308 down   ; trailing comment
balance = least_conn
check = mysql
check_interval = 500ms
check_timeout = 250ms
rise = 1
fall = 2
max_fails = 5
eject_time = 1m
eject_time_max = 1h

[pool mail]
servers = 127.0.0.1:25 127.0.0.1:2525
check = tcp send "EHLO x\\r\\n" expect "220"

[tcp mysql]
listen = tcp:13306:interface=127.0.0.1
pool = db
idle_timeout = 1h
retries = 0
max_connections = 10
on_max_connections = close
send_proxy = v2
accept_proxy = on
access_log = /var/log/proxyd/mysql.log

[tcp smtp]
listen = tcp:2500
pool = mail
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(text, "proxyd.ini")
    return [str(e) for e in info.value.errors]


def test_a_full_file_becomes_frozen_values_with_the_written_settings() -> None:
    config = loads(GOOD, "proxyd.ini")
    db = config.pools["db"]
    assert db.servers == (
        ServerConfig(Address("127.0.0.1", 3306), weight=2, max_connections=100),
        ServerConfig(Address("127.0.0.1", 3307), backup=True),
        ServerConfig(Address("::1", 3308), down=True),
    )
    assert (db.balance, db.check, db.check_interval, db.check_timeout) == (
        "least_conn",
        MysqlCheck(),
        0.5,
        0.25,
    )
    assert (db.rise, db.fall, db.max_fails, db.eject_time, db.eject_time_max) == (
        1,
        2,
        5,
        60.0,
        3600.0,
    )
    assert config.pools["mail"].check == TcpCheck(send=b"EHLO x\r\n", expect=b"220")
    mysql, smtp = config.tcp
    assert (mysql.idle_timeout, mysql.retries, mysql.max_connections) == (3600.0, 0, 10)
    assert (mysql.on_max_connections, mysql.send_proxy, mysql.accept_proxy) == ("close", "v2", True)
    assert mysql.access_log == "/var/log/proxyd/mysql.log"
    assert smtp.access_log == "off", "a listener inherits [proxyd] access_log"
    assert (smtp.connect_timeout, smtp.idle_timeout, smtp.retries) == (5.0, 600.0, 2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        mysql.pool = "other"  # type: ignore[misc]


def test_the_bundled_demo_config_is_valid() -> None:
    here = os.path.dirname(__file__)
    config = load(os.path.join(here, "..", "..", "etc", "proxyd.ini"))
    assert config.tcp and config.pools


def test_every_error_in_a_file_is_reported_at_once_in_line_order() -> None:
    found = errors_of(
        "[pool a]\nservers = 127.0.0.1:x\nbalence = rr\n"
        "[tcp t]\nlisten = tcp:abc\npool = a\n[tpc x]\n"
    )
    assert [re.match(r"proxyd.ini:(\d+):", e).group(1) for e in found] == ["2", "3", "5", "7"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[pool a]\nservers = 127.0.0.1:1\nbalence = first\n",
            "proxyd.ini:3: [pool a] balence: expected a key of pool sections; found 'balence' "
            "(did you mean 'balance'?)",
        ),
        (
            "[pol a]\n",
            "proxyd.ini:1: [pol a]: expected a section kind ('proxyd', 'admin', 'pool', 'tcp', "
            "'udp', 'websocket', 'http', 'https', 'route', 'rule', 'cors', 'auth', 'ratelimit',"
            " 'cache', 'acme', 'gslb', 'filter');"
            " found [pol]"
            " (did you mean 'pool'?)",
        ),
        (
            "[pool a]\nservers = 127.0.0.1:1\ncheck = htp\n",
            "proxyd.ini:3: [pool a] check: expected a check kind ('tcp', 'smtp', 'mysql', 'http', "
            "'tls', 'dns', 'sip', 'websocket', 'grpc', 'none'); found 'htp' (did you mean 'http'?)",
        ),
        (
            "[pool a]\nservers = 127.0.0.1:1\nbalance = least_con\n",
            "proxyd.ini:3: [pool a] balance: expected 'round_robin', 'least_conn', 'random_two', "
            "'hash', 'first'; found 'least_con' (did you mean 'least_conn'?)",
        ),
    ],
)
def test_unknown_names_get_a_did_you_mean(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_a_missing_file_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigErrors) as info:
        load("/nonexistent/proxyd.ini")
    assert str(info.value) == (
        "/nonexistent/proxyd.ini: expected a readable file; found No such file or directory"
    )


def test_an_unreadable_file_is_an_error(tmp_path) -> None:
    (tmp_path / "dir.ini").mkdir()
    with pytest.raises(ConfigErrors) as info:
        load(str(tmp_path / "dir.ini"))
    assert "expected a readable file; found Is a directory" in str(info.value)


def test_a_file_that_is_not_utf8_is_an_error(tmp_path) -> None:
    path = tmp_path / "latin.ini"
    path.write_bytes(b"[proxyd]\naccess_log = caf\xe9\n")
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert "expected UTF-8 text" in str(info.value)


def test_duplicate_sections_and_keys_are_errors_naming_the_first() -> None:
    assert errors_of(
        "[pool a]\nservers = 127.0.0.1:1\nservers = 127.0.0.1:2\n[pool a]\nservers = 127.0.0.1:3\n"
    ) == [
        "proxyd.ini:3: [pool a] servers: expected each key once per section; "
        "found a second 'servers' (first on line 2)",
        "proxyd.ini:4: [pool a]: expected each section once; found a second [pool a] "
        "(first on line 1)",
    ]


@pytest.mark.parametrize("value", ["2 s", "-1s", "1w", "s", "1.5.2s", "0s", ""])
def test_bad_durations_are_errors(value: str) -> None:
    (error,) = errors_of(f"[pool a]\nservers = 127.0.0.1:1\ncheck_interval = {value}\n")
    assert error.startswith("proxyd.ini:3: [pool a] check_interval: expected a duration")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1.5h", 5400.0), ("1d", 86400.0), ("3", 3.0)],
)
def test_durations_read_in_seconds(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("64KiB", 65536), ("64k", 65536), ("1MiB", 1 << 20), ("2m", 2 << 20)],
)
def test_sizes_read_in_bytes(text: str, size: int) -> None:
    config = loads(
        f"[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:1\npool = a\n"
        f"buffer_size = {text}\n"
    )
    assert config.tcp[0].buffer_size == size


@pytest.mark.parametrize(("text", "on"), [(None, True), ("off", False), ("on", True)])
def test_tcp_nodelay_is_on_unless_turned_off(text: str | None, on: bool) -> None:
    line = "" if text is None else f"tcp_nodelay = {text}\n"
    config = loads(f"[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:1\npool = a\n{line}")
    assert config.tcp[0].tcp_nodelay is on


@pytest.mark.parametrize("text", ["64 KB", "1.5MiB", "KiB", "-1k", "512", "1GiB", "big"])
def test_bad_sizes_are_errors(text: str) -> None:
    (error,) = errors_of(
        f"[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:1\npool = a\n"
        f"buffer_size = {text}\n"
    )
    assert error.startswith(
        "proxyd.ini:6: [tcp t] buffer_size: expected a size from 1KiB to 16MiB such as 64KiB"
    )


@pytest.mark.parametrize(
    ("servers", "found"),
    [
        ("127.0.0.1", "'127.0.0.1'"),
        ("127.0.0.1:0", "'127.0.0.1:0'"),
        ("127.0.0.1:70000", "'127.0.0.1:70000'"),
        ("::1:80", "'::1:80'"),
        ("[nothost]:80", "'[nothost]:80'"),
        ("weight=2 127.0.0.1:1", "'weight=2'"),
        ("127.0.0.1:1 weight=0", "'0'"),
        ("127.0.0.1:1 wieght=2", "'wieght=2'"),
        ("127.0.0.1:1 127.0.0.1:1", "127.0.0.1:1 twice"),
    ],
)
def test_bad_server_lines_are_errors(servers: str, found: str) -> None:
    (error,) = errors_of(f"[pool a]\nservers = {servers}\n")
    assert error.startswith("proxyd.ini:2: [pool a] servers: expected")
    assert f"found {found}" in error


def test_an_error_on_a_continuation_line_names_that_line() -> None:
    (error,) = errors_of("[pool a]\nservers =\n    127.0.0.1:1\n\n    127.0.0.1:2 bakcup\n")
    assert error.startswith("proxyd.ini:5: [pool a] servers:")
    assert "did you mean 'backup'?" in error


@pytest.mark.parametrize("listen", ["tcp:abc", "tpc:80", "tcp:80:interfase=1.2.3.4", ""])
def test_bad_endpoint_strings_are_errors(listen: str) -> None:
    (error,) = errors_of(f"[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = {listen}\npool = a\n")
    assert error.startswith("proxyd.ini:4: [tcp t] listen: expected a Twisted endpoint")


def test_a_pool_referenced_but_not_defined_is_an_error() -> None:
    assert errors_of(
        "[pool web]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:1\npool = wbe\n"
    ) == [
        "proxyd.ini:5: [tcp t] pool: expected the name of a [pool] ('web'); found 'wbe' "
        "(did you mean 'web'?)"
    ]


def test_a_listener_with_no_pool_is_an_error() -> None:
    assert errors_of("[tcp t]\nlisten = tcp:1\n") == [
        "proxyd.ini:1: [tcp t] pool: expected a 'pool' key; found none"
    ]


def test_a_pool_with_no_servers_is_an_error() -> None:
    assert errors_of("[pool a]\nbalance = first\n") == [
        "proxyd.ini:1: [pool a] servers: expected a 'servers' key or a 'discovery' key; found none"
    ]


def test_a_bad_reference_is_reported_beside_other_errors_of_its_section() -> None:
    found = errors_of("[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:x\npool = b\n")
    assert [e.split(": expected")[0] for e in found] == [
        "proxyd.ini:4: [tcp t] listen",
        "proxyd.ini:5: [tcp t] pool",
    ]


def test_a_reference_to_a_pool_with_errors_is_not_reported_twice() -> None:
    found = errors_of("[pool a]\nservers = nope\n[tcp t]\nlisten = tcp:1\npool = a\n")
    assert len(found) == 1 and "servers" in found[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[pool]\n", "[pool]: expected [pool NAME]"),
        ("[proxyd x]\n", "[proxyd x]: expected [proxyd] with no name"),
        ("[a b c]\n", "expected [KIND] or [KIND NAME]"),
        ("key = value\n", "key: expected a [section] first"),
        ("[proxyd]\njust words\n", "expected 'key = value' or a [section]"),
    ],
)
def test_malformed_lines_and_sections_are_errors(text: str, fragment: str) -> None:
    (error,) = errors_of(text)
    assert fragment in error


@pytest.mark.parametrize(
    ("check", "value"),
    [
        ("tcp", TcpCheck()),
        ('tcp expect "220"', TcpCheck(expect=b"220")),
        (
            'tcp send "PING\\r\\n" expect_regex "^\\+PONG"',
            TcpCheck(send=b"PING\r\n", expect_regex=re.compile(rb"^\+PONG")),
        ),
        ("smtp", SmtpCheck()),
        ("smtp mx.example.test", SmtpCheck("mx.example.test")),
        ("mysql", MysqlCheck()),
        ("none", None),
    ],
)
def test_check_specs_parse(check: str, value: object) -> None:
    assert loads(f"[pool a]\nservers = 127.0.0.1:1\ncheck = {check}\n").pools["a"].check == value


def test_a_backslash_in_a_check_string_is_read_once() -> None:
    config = loads(
        "[pool a]\nservers = 127.0.0.1:1\ncheck = tcp send \"a\\\\b\\r\\n\" expect 'x ;y'\n"
    )
    assert config.pools["a"].check == TcpCheck(send=b"a\\b\r\n", expect=b"x ;y")


def test_a_section_header_may_carry_a_comment() -> None:
    assert loads("[pool a]  ; the databases\nservers = 127.0.0.1:1\n").pools["a"].servers


@pytest.mark.parametrize(
    "check",
    [
        'tcp send "unterminated',
        "tcp expect",
        'tcp expect "a" expect_regex "b"',
        'tcp expect_regex "("',
        "tcp sned x",
        "mysql extra",
        "smtp a b",
    ],
)
def test_bad_check_specs_are_errors(check: str) -> None:
    (error,) = errors_of(f"[pool a]\nservers = 127.0.0.1:1\ncheck = {check}\n")
    assert error.startswith("proxyd.ini:3: [pool a] check: expected")


def test_the_config_names_exactly_the_balancers_the_pool_layer_implements() -> None:
    assert BALANCE_ALGORITHMS == ALGORITHMS


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_any_text_either_loads_or_raises_config_errors(text: str) -> None:
    try:
        loads(text)
    except ConfigErrors as e:
        assert all(str(err) for err in e.errors)


def test_workers_default_to_one_and_take_a_number_or_auto() -> None:
    assert loads("[pool a]\nservers = 127.0.0.1:1\n").proxyd.workers == 1
    assert loads("[proxyd]\nworkers = 8\n").proxyd.workers == 8
    assert loads("[proxyd]\nworkers = auto\n").proxyd.workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "257", "-1", "two", "1.5", "Auto "])
def test_bad_worker_counts_are_errors(value: str) -> None:
    assert errors_of(f"[proxyd]\nworkers = {value}\n") == [
        "proxyd.ini:2: [proxyd] workers: expected 'auto' or a whole number from 1 to 256;"
        f" found {value.strip()!r}"
    ]


def test_with_workers_a_listener_must_be_one_whose_socket_can_be_passed_on(tmp_path) -> None:
    config = (
        "[proxyd]\nworkers = {workers}\n"
        "[pool a]\nservers = 127.0.0.1:1\n"
        "[tcp fine]\nlisten = unix:{path}\npool = a\n"
        "[tcp other]\nlisten = tcp6:0:interface=\\:\\:1\npool = a\n"
        "[tcp tls]\nlisten = ssl:0:privateKey={pem}\npool = a\n"
    )
    pem = TestCA().issue("site.test").write(tmp_path / "site.pem")
    one = config.format(workers=1, path=tmp_path / "s", pem=pem)
    assert loads(one).tcp[2].listen == f"ssl:0:privateKey={pem}"
    assert errors_of(config.format(workers=2, path=tmp_path / "s", pem=pem)) == [
        "proxyd.ini:12: [tcp tls] listen: expected a tcp:, tcp6: or unix: endpoint when"
        " [proxyd] workers is above 1 (its sockets are passed to the worker processes);"
        f" found 'ssl:0:privateKey={pem}'"
    ]


def test_an_admin_section_takes_a_listen_endpoint_and_an_optional_token() -> None:
    assert loads("[pool a]\nservers = 127.0.0.1:1\n").admin is None
    admin = loads("[admin]\nlisten = tcp:9901:interface=127.0.0.1\n").admin
    assert admin is not None and (admin.listen, admin.token) == (
        "tcp:9901:interface=127.0.0.1",
        None,
    )
    token = "s3cr3t-t0ken-of-32-characters.xx"
    public = loads(f"[admin]\nlisten = tcp:9901\ntoken = {token}\n").admin
    assert public is not None and public.token == token


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:9901:interface=127.0.0.1",
        "tcp:9901:127.0.0.2",
        "tcp6:9901:interface=\\:\\:1",
        "unix:/run/a",
    ],
)
def test_an_admin_listener_on_loopback_or_a_unix_socket_needs_no_token(listen: str) -> None:
    assert loads(f"[admin]\nlisten = {listen}\n").admin is not None


@pytest.mark.parametrize("listen", ["tcp:9901", "tcp:9901:interface=0.0.0.0", "tcp6:9901"])
def test_an_admin_listener_others_can_reach_needs_a_token(listen: str) -> None:
    assert errors_of(f"[admin]\nlisten = {listen}\n") == [
        "proxyd.ini:1: [admin] token: expected a 'token' when 'listen' is not a loopback"
        " address or a unix: socket; found none"
    ]


@pytest.mark.parametrize(
    ("token", "found"),
    [("short", "5 characters"), ("with spaces in the token!", "other characters")],
)
def test_an_admin_token_is_a_long_bearer_token(token: str, found: str) -> None:
    assert errors_of(f"[admin]\nlisten = tcp:9901:interface=127.0.0.1\ntoken = {token}\n") == [
        "proxyd.ini:3: [admin] token: expected a token of at least 16 characters (letters,"
        f" digits and -._~+/, then any '='); found {found}"
    ]


NO_LISTENER = (
    "proxyd.ini:1: expected at least one listener section ([http NAME], [https NAME],"
    " [tcp NAME], [udp NAME], [websocket NAME] or [gslb NAME]); found none"
)
ADMIN = "[admin]\nlisten = tcp:9901:interface=127.0.0.1\n"


def serving_errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads(text, "proxyd.ini", serving=True)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "the file is empty"),
        ("\n  \n", "the file is empty"),
        ("; proxyd.ini, cut short\n\n  # by a full disk\n", "the file holds only comments"),
        (
            "[proxyd]\naccess_log = off\n\n[pool web]\nservers = 127.0.0.1:9001\n"
            "[pool db]\nservers = 127.0.0.1:3306\n",
            "the file's sections: [proxyd], [pool]",
        ),
        (ADMIN, "the file's sections: [admin]; the admin listener serves no traffic"),
        (
            ADMIN + "[pool web]\nservers = 127.0.0.1:9001\n",
            "the file's sections: [admin], [pool]; the admin listener serves no traffic",
        ),
    ],
    ids=["empty", "blank", "comments", "proxyd-and-pools", "admin", "admin-and-pool"],
)
def test_a_file_to_serve_without_a_listener_section_is_an_error_on_line_1(
    text: str, hint: str
) -> None:
    assert serving_errors_of(text) == [f"{NO_LISTENER} ({hint})"]
    with pytest.raises(ConfigErrors) as info:
        loads(text, "proxyd.ini", serving=True)
    [error] = info.value.errors
    assert (error.path, error.line, error.section, error.key) == ("proxyd.ini", 1, None, None)


@given(st.lists(st.sampled_from(["", "  ", "; a comment", "# another", "\t; [tcp x]"])))
def test_any_file_of_blank_and_comment_lines_serves_nothing_and_is_refused(
    lines: list[str],
) -> None:
    [error] = serving_errors_of("\n".join(lines))
    assert error.startswith(NO_LISTENER)


def test_a_listener_section_with_errors_of_its_own_is_not_also_reported_missing() -> None:
    text = "[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:abc\npool = a\n"
    [error] = serving_errors_of(text)
    assert error.startswith("proxyd.ini:4: [tcp t] listen:")


def test_the_missing_listener_is_reported_beside_the_other_errors() -> None:
    first, *others = serving_errors_of("[pool a]\nservers = 127.0.0.1:x\n[tpc t]\nlisten = tcp:1\n")
    assert first == f"{NO_LISTENER} (the file's sections: [pool], [tpc])"
    assert [error.split(": ", 2)[:2] for error in others] == [
        ["proxyd.ini:2", "[pool a] servers"],
        ["proxyd.ini:3", "[tpc t]"],
    ]
    assert others[1].endswith("(did you mean 'tcp'?)")


@pytest.mark.parametrize(
    "listener",
    [
        "[http web]\nlisten = tcp:8080\nroutes = path / -> pool a\n",
        "[tcp t]\nlisten = tcp:3306\npool = a\n",
        "[udp u]\nlisten = udp:5300\npool = a\n",
        "[websocket w]\nlisten = tcp:8090\npool = a\n",
    ],
    ids=["http", "tcp", "udp", "websocket"],
)
def test_one_listener_of_any_kind_is_enough_to_serve(listener: str) -> None:
    config = loads(f"{ADMIN}[pool a]\nservers = 127.0.0.1:1\n{listener}", serving=True)
    assert len(config.http + config.tcp + config.udp + config.websocket) == 1


def test_an_https_listener_counts_too(tmp_path) -> None:
    pem = TestCA().issue("site.test").write(tmp_path / "site.pem")
    text = f"[pool a]\nservers = 127.0.0.1:1\n[https s]\nlisten = tcp:8443\ncertificates = {pem}\n"
    config = loads(text + "routes = path / -> pool a\n", str(tmp_path / "p.ini"), serving=True)
    assert [listener.kind for listener in config.http] == ["https"]


def test_load_reads_a_file_to_serve(tmp_path) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_bytes(b"")
    with pytest.raises(ConfigErrors) as info:
        load(str(path))
    assert (
        str(info.value) == f"{path}:1: {NO_LISTENER.split(':', 2)[2].strip()} (the file is empty)"
    )


@pytest.mark.parametrize("text", ["", "; nothing\n", "[pool a]\nservers = 127.0.0.1:1\n", ADMIN])
def test_proxyd_check_refuses_a_file_with_no_listener(tmp_path, capsys, text: str) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    first, last = err.splitlines()
    assert first.startswith(f"{path}:1: expected at least one listener section")
    assert last == f"{path}: 1 error(s)"


RUNNING = ADMIN + "[pool a]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:3306\npool = a\n"
WITHOUT_ADMIN = RUNNING.replace(ADMIN, "")


def test_a_reload_that_would_remove_the_admin_listener_is_refused_unless_forced() -> None:
    running = loads(RUNNING, "proxyd.ini", serving=True)
    with pytest.raises(ConfigErrors) as info:
        reload_config(running, WITHOUT_ADMIN)
    assert str(info.value) == (
        "proxyd.ini: [admin]: expected an [admin] section: without one this reload would close"
        " the admin listener on tcp:9901:interface=127.0.0.1, which only a forced reload does;"
        ' found none (to remove it, POST /api/v1/reload with {"force": true}, or restart'
        " proxyd; SIGHUP cannot force it)"
    )
    assert reload_config(running, WITHOUT_ADMIN, force=True).admin is None


def test_a_reload_may_keep_move_or_add_the_admin_listener_unforced() -> None:
    running = loads(RUNNING, "proxyd.ini", serving=True)
    assert reload_config(running, RUNNING).admin == running.admin
    moved = reload_config(running, RUNNING.replace("9901", "9902")).admin
    assert moved is not None and moved.listen == "tcp:9902:interface=127.0.0.1"
    without = loads(WITHOUT_ADMIN, "proxyd.ini", serving=True)
    assert reload_config(without, WITHOUT_ADMIN).admin is None
    assert reload_config(without, RUNNING).admin is not None


@pytest.mark.parametrize("force", [False, True])
def test_even_a_forced_reload_refuses_a_file_with_no_listener(force: bool) -> None:
    running = loads(RUNNING, "proxyd.ini", serving=True)
    for text in ("", ADMIN):
        with pytest.raises(ConfigErrors) as info:
            reload_config(running, text, force=force)
        assert str(info.value).startswith(NO_LISTENER)

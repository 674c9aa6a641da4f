"""MariaDB through the `[tcp]` relay, and `check = mysql` following a server down and up."""

from __future__ import annotations

import os
import time

import pymysql
import pytest

from .harness import free_port, wait_until
from .mariadb import connect_through, server_port

pytestmark = pytest.mark.integration

CHECK = "check = mysql\ncheck_interval = 200ms\ncheck_timeout = 1s\nrise = 2\nfall = 2"


@pytest.mark.timeout(90)
def test_queries_round_trip_through_the_relay(mariadb, proxyd):
    db = mariadb("a")
    port = free_port()
    relay = proxyd(
        f"[pool db]\nservers = {db.address}\n{CHECK}\n\n"
        f"[tcp mysql]\nlisten = tcp:{port}:interface=127.0.0.1\npool = db\n"
    )
    # A few MiB: the INSERT and the result set each span many relay reads.
    blob = os.urandom(3 * 1024 * 1024)

    with connect_through(port) as conn, conn.cursor() as cursor:
        assert server_port(conn) == db.port
        cursor.execute("CREATE TABLE notes (id INT PRIMARY KEY, title VARCHAR(64), body LONGBLOB)")
        cursor.executemany(
            "INSERT INTO notes VALUES (%s, %s, %s)",
            [(1, "small", b"x"), (2, "büg ünïcode", b"\x00\xff" * 10), (3, "large", blob)],
        )
        conn.commit()

    with connect_through(port) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT id, title, body FROM notes ORDER BY id")
        rows = cursor.fetchall()
    assert rows == ((1, "small", b"x"), (2, "büg ünïcode", b"\x00\xff" * 10), (3, "large", blob))

    records = [r for r in relay.wait_access_records(2) if r["listener"] == "mysql"]
    assert [r["backend"] for r in records] == [db.address, db.address]
    assert max(r["bytes_in"] for r in records) > len(blob)
    assert max(r["bytes_out"] for r in records) > len(blob)


@pytest.mark.timeout(120)
def test_mysql_check_takes_a_stopped_server_out_and_back_in(mariadb, proxyd):
    primary = mariadb("primary")
    spare = mariadb("spare")
    db_port = free_port()
    solo_port = free_port()
    relay = proxyd(
        f"[pool db]\nservers =\n    {primary.address}\n    {spare.address}\n"
        f"balance = first\n{CHECK}\n\n"
        f"[pool solo]\nservers = {primary.address}\n{CHECK}\n\n"
        f"[tcp db]\nlisten = tcp:{db_port}:interface=127.0.0.1\npool = db\nretries = 0\n\n"
        f"[tcp solo]\nlisten = tcp:{solo_port}:interface=127.0.0.1\npool = solo\nretries = 0\n"
    )

    with connect_through(db_port) as conn:
        assert server_port(conn) == primary.port  # `first` prefers the first one up

    offset = relay.log_offset()
    primary.stop()
    relay.wait_for_state(primary.address, "db", "DOWN", timeout=10, start=offset)
    relay.wait_for_state(primary.address, "solo", "DOWN", timeout=10, start=offset)
    assert f"server {spare.address} in pool db is DOWN" not in relay.log()[offset:]

    # With retries = 0 only the health check can keep clients off the stopped server.
    for _ in range(3):
        with connect_through(db_port) as conn:
            assert server_port(conn) == spare.port
    # The only server is down: the client is turned away at once, not left hanging.
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError):
        connect_through(solo_port, timeout=5)
    assert time.monotonic() - started < 4
    solo_records = wait_until(
        lambda: [r for r in relay.access_records() if r["listener"] == "solo"],
        5,
        "the access-log record of the turned-away client",
    )
    assert solo_records[-1]["close"] == "no_server"

    offset = relay.log_offset()
    primary.start()
    relay.wait_for_state(primary.address, "db", "UP", timeout=10, start=offset)
    relay.wait_for_state(primary.address, "solo", "UP", timeout=10, start=offset)
    with connect_through(db_port) as conn:
        assert server_port(conn) == primary.port
    with connect_through(solo_port) as conn:
        assert server_port(conn) == primary.port

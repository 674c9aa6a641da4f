"""Service discovery in the real proxyd: pools whose servers come from DNS SRV records
(a real dnsmasq, restarted with new records) and from keys in a real etcd (Debian's
etcd-server, put and deleted through its JSON gateway, killed and started again). Traffic
goes through a [tcp] listener to `echo` peers that say their name first."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Process, ProcessList, Proxyd, free_port, wait_until
from .test_dns_relay import _user, free_udp_and_tcp_port

pytestmark = [pytest.mark.integration]

DNSMASQ = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin")
ETCD = shutil.which("etcd", path="/usr/bin:/usr/local/bin")
SERVICE = "_echo._tcp.svc.demo.test"


def name_of(port: int) -> str:
    """The name of the echo peer a new connection through proxyd on `port` reaches."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return _line(sock)


def _line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


def names_of(port: int, count: int = 8) -> set[str]:
    return {name_of(port) for _ in range(count)}


def pool_config(listen: int, discovery: str) -> str:
    return (
        f"[pool svc]\n{discovery}\ncheck = tcp\ncheck_interval = 200ms\ncheck_timeout = 1s\n"
        "rise = 1\nfall = 1\n\n"
        f"[tcp svc]\nlisten = tcp:{listen}:interface=127.0.0.1\npool = svc\nretries = 0\n"
    )


class Dnsmasq:
    """A dnsmasq on one port serving SRV records, started again with new ones."""

    def __init__(self, processes: ProcessList, directory: Path) -> None:
        self.processes = processes
        self.directory = directory
        self.port = free_udp_and_tcp_port()
        self.process: Process | None = None
        self.starts = 0

    def serve(self, records: list[tuple[int, int, int]]) -> None:
        """SRV records (port, priority, weight) of SERVICE, each on target a.demo.test."""
        self.stop()
        self.starts += 1
        config = self.directory / f"dnsmasq-{self.starts}.conf"
        lines = ["no-resolv", "no-hosts", "bind-interfaces", "listen-address=127.0.0.1"]
        lines += ["local-ttl=1", "address=/a.demo.test/127.0.0.1"]
        lines += [f"srv-host={SERVICE},a.demo.test,{p},{pri},{w}" for p, pri, w in records]
        config.write_text("\n".join(lines) + "\n")
        assert DNSMASQ is not None
        argv = [DNSMASQ, "-k", "-C", str(config), "-p", str(self.port), "--pid-file="]
        argv += ["--log-facility=-", "--user=" + _user()]
        self.process = self.processes.start(f"dnsmasq-{self.starts}", argv)
        self.process.wait_for_output(r"started, version", 15)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def test_srv_records_choose_the_servers_and_a_change_is_followed_within_the_ttl(
    processes: ProcessList, tmp_path: Path, backend, proxyd
) -> None:
    one, two, three = (backend("echo", name=n) for n in ("one", "two", "three"))
    dnsmasq = Dnsmasq(processes, tmp_path)
    # Priority 10 is primary; 20 is the backup, unused while `one` is up.
    dnsmasq.serve([(one.port, 10, 1), (two.port, 20, 1)])
    listen = free_port()
    relay: Proxyd = proxyd(
        pool_config(listen, f"discovery = srv {SERVICE}\nresolver = 127.0.0.1:{dnsmasq.port}")
    )
    relay.wait_for_log(r"discovery \(SRV .*\) added", 10)
    wait_until(lambda: names_of(listen) == {"one"}, 10, "traffic on the primary alone")
    one.kill()
    wait_until(lambda: names_of(listen) == {"two"}, 10, "the backup priority takes over")

    # New records: `three` alone. Traffic follows within the TTL (1 s) and a check.
    dnsmasq.serve([(three.port, 10, 1)])
    wait_until(lambda: names_of(listen) == {"three"}, 10, "traffic on the new record's server")

    # The resolver stops: the last list stays, the failure is logged once.
    start = relay.log_offset()
    dnsmasq.stop()
    relay.wait_for_log(r"discovery \(SRV .*\) failed", 15, start)
    assert names_of(listen) == {"three"}
    dnsmasq.serve([(three.port, 10, 1), (two.port, 10, 1)])
    relay.wait_for_log(r"discovery \(SRV .*\) recovered", 15, start)
    assert relay.log()[start:].count("discovery (SRV") >= 2
    assert relay.log()[start:].count(") failed:") == 1
    wait_until(lambda: names_of(listen, 12) == {"two", "three"}, 10, "both records served")


class Etcd:
    """A one-member etcd on ephemeral loopback ports with a temporary data directory;
    stopped and started again on the same ports and data."""

    def __init__(self, processes: ProcessList, directory: Path) -> None:
        self.processes = processes
        self.data = directory / "etcd-data"
        self.client = free_port()
        self.peer = free_port()
        self.process: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client}"

    def start(self) -> None:
        assert ETCD is not None
        self.starts += 1
        peer = f"http://127.0.0.1:{self.peer}"
        argv = [ETCD, "--name", "test", "--data-dir", str(self.data)]
        argv += ["--listen-client-urls", self.url, "--advertise-client-urls", self.url]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"test={peer}", "--log-level", "warn"]
        self.process = self.processes.start(f"etcd-{self.starts}", argv)
        self.process.wait_listening([self.client], 30)
        wait_until(self._healthy, 30, "etcd answering")

    def _healthy(self) -> bool:
        try:
            self._post("/v3/kv/range", {"key": _b64("health")})
        except OSError:
            return False
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def _post(self, path: str, body: dict[str, str]) -> dict[str, object]:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def etcd(processes: ProcessList, tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd (Debian's etcd-server; `make test` installs it), started."""
    if ETCD is None:
        pytest.fail("etcd missing: apt-get install etcd-server (make test does)")
    server = Etcd(processes, tmp_path)
    server.start()
    yield server


def test_etcd_keys_are_followed_and_an_etcd_outage_keeps_the_last_list(
    etcd: Etcd, backend, proxyd
) -> None:
    one, two, three = (backend("echo", name=n) for n in ("one", "two", "three"))
    etcd.put("/proxyd/svc/one", f"{one.address}")
    listen = free_port()
    relay: Proxyd = proxyd(pool_config(listen, f"discovery = etcd {etcd.url} /proxyd/svc/"))
    wait_until(lambda: names_of(listen) == {"one"}, 10, "the server of the key")

    etcd.put("/proxyd/svc/two", f"{two.address} weight=2")
    wait_until(lambda: names_of(listen, 12) == {"one", "two"}, 10, "a new key's server")

    # A connection open on `one` when its key goes: it goes on; new ones go to `two`.
    held = socket.create_connection(("127.0.0.1", listen), timeout=5)
    while _line(held) != "one":
        held.close()
        held = socket.create_connection(("127.0.0.1", listen), timeout=5)
    etcd.delete("/proxyd/svc/one")
    wait_until(lambda: names_of(listen) == {"two"}, 10, "the deleted key's server drained")
    held.sendall(b"still here\n")
    assert _line(held) == "still here"
    held.close()

    # etcd down: proxyd keeps serving the last list and says so once.
    start = relay.log_offset()
    etcd.kill()
    relay.wait_for_log(r"discovery \(etcd .*\) failed", 10, start)
    assert names_of(listen) == {"two"}

    # etcd back: the watch resumes from its revision and follows new keys.
    etcd.start()
    relay.wait_for_log(r"discovery \(etcd .*\) recovered", 40, start)
    etcd.put("/proxyd/svc/three", three.address)
    wait_until(lambda: names_of(listen, 12) == {"two", "three"}, 10, "a key put after the outage")
    assert relay.log()[start:].count(") failed:") == 1


def test_with_workers_the_master_discovers_and_every_worker_follows(
    etcd: Etcd, backend, proxyd, tmp_path: Path
) -> None:
    one, two = (backend("echo", name=n) for n in ("one", "two"))
    etcd.put("/proxyd/w/one", one.address)
    listen = free_port()
    config = f"[proxyd]\nworkers = 2\naccess_log = {tmp_path / 'access.log'}\n\n"
    relay: Proxyd = proxyd(config + pool_config(listen, f"discovery = etcd {etcd.url} /proxyd/w/"))
    wait_until(lambda: names_of(listen, 16) == {"one"}, 15, "every worker on the key's server")
    etcd.put("/proxyd/w/two", two.address)
    wait_until(lambda: names_of(listen, 24) == {"one", "two"}, 15, "a new key reaches the workers")
    etcd.delete("/proxyd/w/one")
    wait_until(lambda: names_of(listen, 16) == {"two"}, 15, "a deleted key leaves every worker")
    # Three changes, each applied by the master's discovery alone (the workers run none).
    assert relay.log().count(") added ") == 3


def test_a_reload_keeps_the_discovered_servers_and_their_source(
    etcd: Etcd, backend, proxyd
) -> None:
    one, two = (backend("echo", name=n) for n in ("one", "two"))
    etcd.put("/proxyd/r/one", one.address)
    listen = free_port()
    relay: Proxyd = proxyd(pool_config(listen, f"discovery = etcd {etcd.url} /proxyd/r/"))
    wait_until(lambda: names_of(listen) == {"one"}, 10, "the key's server")
    start = relay.log_offset()
    text = relay.config_path.read_text().replace("check_interval = 200ms", "check_interval = 300ms")
    relay.config_path.write_text(text)
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(r"reloaded .*: generation 2", 10, start)
    assert names_of(listen) == {"one"}  # no gap: the pool carried its discovered server
    assert ") added " not in relay.log()[start:]
    etcd.put("/proxyd/r/two", two.address)  # the watch goes on, feeding the new pool
    wait_until(lambda: names_of(listen, 12) == {"one", "two"}, 10, "a key put after the reload")


def _status_servers(admin: int) -> set[str]:
    """The names of pool svc's discovered servers in the admin API's status document."""
    url = f"http://127.0.0.1:{admin}/api/v1/status"
    with urllib.request.urlopen(url, timeout=5) as answer:
        status = json.load(answer)
    pool = next(p for p in status["pools"] if p["name"] == "svc")
    return {str(s["name"]) for s in pool["servers"] if s.get("discovered")}


def _seconds_until(predicate, timeout: float, began: float) -> float:
    """Seconds from `began` until `predicate` holds, polling every 5 ms (an upper bound)."""
    wait_until(predicate, timeout, "the admin API shows the change", interval=0.005)
    return time.monotonic() - began


def test_discovery_reaction_time_in_the_admin_api(
    processes: ProcessList, tmp_path: Path, etcd: Etcd, backend, proxyd
) -> None:
    """How long after an etcd put or delete, and after dnsmasq restarted with a changed
    SRV record (TTL 1 s), the status document shows the change: 5 rounds each, printed
    (median, max) and bounded. docs/cluster.md quotes the figures."""
    one, two, three = (backend("echo", name=n) for n in ("one", "two", "three"))
    dnsmasq = Dnsmasq(processes, tmp_path)
    dnsmasq.serve([(one.port, 10, 1)])
    etcd.put("/proxyd/t/one", one.address)
    listen_e, listen_s, admin_e, admin_s = free_port(), free_port(), free_port(), free_port()
    admin = "[admin]\nlisten = tcp:{}:interface=127.0.0.1\n"
    proxyd(pool_config(listen_e, f"discovery = etcd {etcd.url} /proxyd/t/") + admin.format(admin_e))
    proxyd(
        pool_config(listen_s, f"discovery = srv {SERVICE}\nresolver = 127.0.0.1:{dnsmasq.port}")
        + admin.format(admin_s)
    )
    wait_until(lambda: len(_status_servers(admin_e)) == 1, 10, "etcd's first key")
    wait_until(lambda: len(_status_servers(admin_s)) == 1, 10, "the first SRV record")
    etcd_names = _status_servers(admin_e)

    put, delete, srv = [], [], []
    for _ in range(5):
        began = time.monotonic()  # before the put's own request to etcd
        etcd.put("/proxyd/t/two", two.address)
        put.append(_seconds_until(lambda: len(_status_servers(admin_e)) == 2, 10, began))
        began = time.monotonic()
        etcd.delete("/proxyd/t/two")
        delete.append(_seconds_until(lambda: _status_servers(admin_e) == etcd_names, 10, began))
    for port in (three.port, one.port) * 2 + (three.port,):
        before = _status_servers(admin_s)
        dnsmasq.serve([(port, 10, 1)])  # returns once dnsmasq says "started"
        began = time.monotonic()
        srv.append(
            _seconds_until(lambda b=before: _status_servers(admin_s) not in (b, set()), 15, began)
        )
    for what, figures in (("etcd put", put), ("etcd delete", delete), ("SRV change", srv)):
        print(
            f"{what}: median {statistics.median(figures) * 1000:.0f} ms, "
            f"max {max(figures) * 1000:.0f} ms, all {[round(f * 1000) for f in figures]}"
        )
    assert max(put) < 2 and max(delete) < 2
    assert max(srv) < 5  # TTL 1 s, a query resent after 1 s if it met the restart

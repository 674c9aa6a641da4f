"""`[proxyd] workers = N` without processes: the shared sockets, the AMP commands, a worker's
agent, and the master over a fake reactor whose spawnProcess records and whose AMP connections
are iosim pumps to worker agents over fake proxies."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import twisted.internet
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import unix
from twisted.internet.error import (
    CannotListenError,
    ConnectionDone,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
    ReactorNotRunning,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    capturedLogs,
    formatEvent,
    jsonFileLogObserver,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

import proxyd
from proxyd.app import ProxydService, ReloadOutcome
from proxyd.config.load import loads
from proxyd.config.values import split_endpoint
from proxyd.listen_sockets import (
    DEFAULT_BACKLOG,
    NotShareable,
    SharedPort,
    adopt_stream,
    bind_datagram,
    bind_stream,
)
from proxyd.workers import master as master_module
from proxyd.workers import worker as worker_module
from proxyd.workers.commands import (
    Agent,
    AgentFactory,
    CloseNow,
    Counters,
    Json,
    Reload,
    ReopenLogs,
    Serve,
    SetHealth,
    SetServer,
)
from proxyd.workers.master import (
    RESTART_DELAY,
    RESTART_DELAY_MAX,
    STOP_GRACE,
    YOUNG,
    Master,
    WorkerProcess,
    relay_log,
)
from proxyd.workers.worker import MASTER_FD, WorkerAgent

# Sockets


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", ("tcp", ["8080"], {})),
        ("tcp:0:127.0.0.1:7", ("tcp", ["0", "127.0.0.1", "7"], {})),
        (
            "tcp:8080:interface=127.0.0.1:backlog=20",
            ("tcp", ["8080"], {"interface": "127.0.0.1", "backlog": "20"}),
        ),
        ("tcp6:0:interface=\\:\\:1", ("tcp6", ["0"], {"interface": "::1"})),
        ("unix:/run/a\\:b.sock:mode=660", ("unix", ["/run/a:b.sock"], {"mode": "660"})),
        (
            "unix:/run/p.sock:lockfile=0:x=a=b",
            ("unix", ["/run/p.sock"], {"lockfile": "0", "x": "a=b"}),
        ),
        ("tcp:80:interface=a\\\\b", ("tcp", ["80"], {"interface": "a\\b"})),
        ("tcp\\", ("tcp", [], {})),
        ("unix:/a\\=b:mode=600", ("unix", ["/a=b"], {"mode": "600"})),
    ],
)
def test_split_endpoint_unescapes_colons_and_parts_positional_and_keyword_arguments(
    description: str, expected: tuple[str, list[str], dict[str, str]]
) -> None:
    assert split_endpoint(description) == expected


def reuseport(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


def listen_backlog(sock: socket.socket) -> int:
    """The backlog a TCP socket listens with: for a listening socket Linux reports its
    sk_max_ack_backlog as tcpi_sacked in TCP_INFO (after the 8 one-byte fields and the
    u32 rto, ato, snd_mss, rcv_mss and unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 28)[0])


def accepting(port: SharedPort) -> socket.socket:
    """The socket of `port` a new connection to it reached (waiting at most 5 s)."""
    readable, _, _ = select.select(list(port.sockets), [], [], 5)
    assert len(readable) == 1
    return readable[0]


@pytest.fixture
def ports() -> Iterator[list[SharedPort]]:
    """SharedPorts a test made, closed when it ends."""
    made: list[SharedPort] = []
    yield made
    for port in made:
        port.close()


def test_bind_stream_tcp_gives_each_worker_a_reuseport_socket_on_one_resolved_port(
    ports: list[SharedPort],
) -> None:
    port = bind_stream(None, "tcp:0:interface=127.0.0.1", 3)
    ports.append(port)

    assert (port.family, port.kind, len(port.sockets)) == (socket.AF_INET, "stream", 3)
    names = {sock.getsockname() for sock in port.sockets}
    assert len(names) == 1
    host, number = names.pop()
    assert host == "127.0.0.1" and number != 0
    for sock in port.sockets:
        assert sock.type == socket.SOCK_STREAM
        assert reuseport(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.getblocking()
        assert listen_backlog(sock) == DEFAULT_BACKLOG
    with socket.create_connection(("127.0.0.1", number), timeout=5):
        connection, _ = accepting(port).accept()
        connection.close()


@pytest.mark.parametrize(
    "description", ["tcp:0:interface=127.0.0.1:backlog=7", "tcp:0:127.0.0.1:7"]
)
def test_bind_stream_listens_with_the_endpoints_backlog(
    ports: list[SharedPort], description: str
) -> None:
    port = bind_stream(None, description, 2)
    ports.append(port)
    assert [sock.getsockname()[0] for sock in port.sockets] == ["127.0.0.1", "127.0.0.1"]
    assert [listen_backlog(sock) for sock in port.sockets] == [7, 7]


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_bind_stream_tcp6_binds_ipv6_sockets_on_the_escaped_interface(
    ports: list[SharedPort],
) -> None:
    port = bind_stream(None, "tcp6:0:interface=\\:\\:1", 2)
    ports.append(port)

    assert port.family == socket.AF_INET6
    addresses = {sock.getsockname()[:2] for sock in port.sockets}
    assert len(addresses) == 1
    host, number = addresses.pop()
    assert host == "::1" and number != 0
    assert all(reuseport(sock) and sock.family == socket.AF_INET6 for sock in port.sockets)
    with socket.create_connection(("::1", number), timeout=5):
        connection, _ = accepting(port).accept()
        connection.close()


class UnixReactor(MemoryReactorClock):
    """listenUNIX makes a real Twisted unix Port, which reads through this reactor's
    `readers`."""

    def __init__(self) -> None:
        super().__init__()
        self.unix_ports: list[unix.Port] = []

    def listenUNIX(  # type: ignore[override]
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> unix.Port:
        port = unix.Port(address, factory, backlog, mode, self, wantPID)
        port.startListening()
        self.unix_ports.append(port)
        return port


def test_bind_stream_unix_shares_one_socket_that_the_master_never_accepts_on(
    tmp_path: Any,
) -> None:
    reactor = UnixReactor()
    path = str(tmp_path / "proxyd.sock")
    port = bind_stream(reactor, f"unix:{path}:lockfile=0", 4)
    [twisted_port] = reactor.unix_ports
    try:
        assert (port.family, port.kind, len(port.sockets)) == (socket.AF_UNIX, "stream", 1)
        assert port.owner is twisted_port
        assert twisted_port not in reactor.getReaders()
        [sock] = port.sockets
        assert port.for_worker(0) is sock and port.for_worker(3) is sock
        assert sock.fileno() != twisted_port.fileno()  # a duplicate for the workers
        assert sock.getsockname() == path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            connection, _ = sock.accept()
            connection.close()
    finally:
        port.close()
    assert sock.fileno() == -1
    assert not twisted_port.connected


@pytest.mark.parametrize("lockfile", ["0", "1"])
def test_closing_a_unix_shared_port_removes_its_socket_file_so_it_can_be_bound_again(
    tmp_path: Any, lockfile: str
) -> None:
    path = tmp_path / "proxyd.sock"
    description = f"unix:{path}:lockfile={lockfile}"
    port = bind_stream(UnixReactor(), description, 2)
    assert path.exists()
    port.close()
    port.close()  # twice is harmless
    assert list(tmp_path.iterdir()) == []  # neither the socket file nor its lock
    again = bind_stream(UnixReactor(), description, 2)
    again.close()


def test_closing_a_unix_shared_port_locked_before_twistd_forked_removes_its_socket_file(
    tmp_path: Any,
) -> None:
    path = tmp_path / "proxyd.sock"
    port = bind_stream(UnixReactor(), f"unix:{path}", 2)
    lock = tmp_path / "proxyd.sock.lock"
    lock.unlink()
    lock.symlink_to("1")  # the pid before the fork
    port.close()
    assert list(tmp_path.iterdir()) == [lock]
    assert port.sockets[0].fileno() == -1


def test_a_worker_adopting_a_unix_socket_leaves_its_file_and_the_other_workers_alone(
    tmp_path: Any,
) -> None:
    path = tmp_path / "proxyd.sock"
    shared = bind_stream(UnixReactor(), f"unix:{path}:mode=600:lockfile=0", 2)
    try:
        worker = MemoryReactorClock()
        fd = os.dup(shared.for_worker(0).fileno())
        port = adopt_stream(worker, fd, socket.AF_UNIX, Factory.forProtocol(Protocol))
        os.close(fd)
        assert port in worker.getReaders()
        assert os.stat(path).st_mode & 0o777 == 0o600, "no chmod to Twisted's default 666"
        port.connectionLost(Failure(ConnectionDone()))  # the worker stops
        assert path.exists(), "the master's file stays"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # not shut down: still listening for the next worker
            connection, _ = shared.for_worker(1).accept()
            connection.close()
    finally:
        shared.close()


def test_bind_stream_refuses_kinds_whose_sockets_cannot_be_passed_on() -> None:
    with pytest.raises(NotShareable) as raised:
        bind_stream(None, "ssl:0:privateKey=k.pem", 2)
    assert str(raised.value) == (
        "'ssl:0:privateKey=k.pem': with workers above 1, listeners must be tcp:, tcp6: or unix:"
        " endpoints (their sockets are passed to the worker processes)"
    )


class RecordingSocket(socket.socket):
    """socket.socket, remembering every socket made and failing the `fail_at`th bind."""

    made: list[socket.socket] = []
    binds = 0
    fail_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingSocket.made.append(self)

    def bind(self, address: Any) -> None:
        RecordingSocket.binds += 1
        if RecordingSocket.binds == RecordingSocket.fail_at:
            raise OSError(98, "Address already in use")
        super().bind(address)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingSocket]:
    monkeypatch.setattr(RecordingSocket, "made", [])
    monkeypatch.setattr(RecordingSocket, "binds", 0)
    monkeypatch.setattr(RecordingSocket, "fail_at", 0)
    monkeypatch.setattr(socket, "socket", RecordingSocket)
    return RecordingSocket


def test_bind_stream_on_a_port_in_use_raises_cannot_listen_and_closes_its_socket(
    recording: type[RecordingSocket],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        number = taken.getsockname()[1]
        recording.made.clear()
        with pytest.raises(CannotListenError) as raised:
            bind_stream(None, f"tcp:{number}:interface=127.0.0.1", 3)
    assert raised.value.port == number
    assert raised.value.socketError.errno == 98  # EADDRINUSE
    assert len(recording.made) == 1
    assert recording.made[0].fileno() == -1


def test_bind_stream_failing_on_a_later_socket_closes_every_socket_it_opened(
    recording: type[RecordingSocket],
) -> None:
    recording.fail_at = 3
    with pytest.raises(CannotListenError) as raised:
        bind_stream(None, "tcp:0:interface=127.0.0.1", 4)
    assert raised.value.port != 0  # the port the first bind resolved
    assert len(recording.made) == 3
    assert [sock.fileno() for sock in recording.made] == [-1, -1, -1]


def test_bind_datagram_gives_each_worker_a_reuseport_socket_on_one_port(
    ports: list[SharedPort],
) -> None:
    port = bind_datagram("127.0.0.1", 0, 3)
    ports.append(port)

    assert (port.family, port.kind, len(port.sockets)) == (socket.AF_INET, "datagram", 3)
    assert len({sock.getsockname() for sock in port.sockets}) == 1
    assert port.sockets[0].getsockname()[1] != 0
    for sock in port.sockets:
        assert sock.type == socket.SOCK_DGRAM
        assert reuseport(sock)
        assert not sock.getblocking()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_bind_datagram_on_an_ipv6_interface_binds_ipv6_sockets(
    ports: list[SharedPort],
) -> None:
    port = bind_datagram("::1", 0, 2)
    ports.append(port)
    assert port.family == socket.AF_INET6
    assert {sock.getsockname()[0] for sock in port.sockets} == {"::1"}


def test_a_shared_port_gives_worker_n_its_own_socket_and_closes_them_all(
    ports: list[SharedPort],
) -> None:
    port = bind_datagram("127.0.0.1", 0, 3)
    ports.append(port)
    assert [port.for_worker(i) for i in range(5)] == [
        port.sockets[0],
        port.sockets[1],
        port.sockets[2],
        port.sockets[0],
        port.sockets[1],
    ]
    port.close()
    assert [sock.fileno() for sock in port.sockets] == [-1, -1, -1]


# Commands


BIG = {f"listener {i}": {"connections": i, "active": i % 7} for i in range(3000)}


class CountingAgent(Agent):
    """A worker's end answering Counters with `counters`."""

    counters_value: Any = BIG

    @Counters.responder
    def counters(self) -> dict[str, Any]:
        return {"counters": self.counters_value}


def test_counters_larger_than_an_amp_value_cross_amp_in_chunks() -> None:
    assert len(json.dumps(BIG)) > 2 * 65535
    master, worker, pump = iosim.connectedServerAndClient(CountingAgent, Agent)
    assert isinstance(worker, CountingAgent)
    answers: list[Any] = []
    master.callRemote(Counters).addBoth(answers.append)
    pump.flush()
    assert answers == [{"counters": BIG}]


def test_json_spreads_a_value_over_chunks_each_fitting_an_amp_value() -> None:
    strings: dict[bytes, bytes] = {}
    Json().toBox(b"counters", strings, {"counters": BIG}, None)
    count = int(strings[b"counters"])
    assert count == len(strings) - 1 >= 3
    assert all(len(value) <= 0xFFFF for value in strings.values())
    objects: dict[str, Any] = {}
    Json().fromBox(b"counters", strings, objects, None)
    assert objects == {"counters": BIG}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_any_json_value_round_trips_through_json_boxes(value: Any) -> None:
    strings: dict[bytes, bytes] = {}
    Json().toBox(b"v", strings, {"v": value}, None)
    objects: dict[str, Any] = {}
    Json().fromBox(b"v", strings, objects, None)
    assert objects == {"v": value}


def test_agents_log_nothing_when_connected_and_disconnected() -> None:
    with capturedLogs() as events:
        worker, master, pump = iosim.connectedServerAndClient(Agent, Agent)
        master.transport.loseConnection()
        pump.flush()
    assert events == []
    assert master.transport is None and worker.transport is None


def test_agent_factory_builds_its_one_agent() -> None:
    agent = Agent()
    factory = AgentFactory(agent)
    factory.doStart()
    assert factory.buildProtocol(None) is agent
    assert factory.buildProtocol(None) is agent
    factory.doStop()


# Worker


class FakeProxy:
    """The ProxydService API a worker's agent uses, recording every call in order."""

    def __init__(self, counters: Any = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.counters_value: Any = counters if counters is not None else {}

    def set_health(self, pool: str, server: str, up: bool, reason: str) -> None:
        self.calls.append(("set_health", pool, server, up, reason))

    def adopt(self, sockets: Mapping[str, tuple[int, int]]) -> None:
        self.calls.append(("adopt", dict(sockets)))

    def set_server(self, pool: str, server: str, admin: str, weight: int, who: str) -> None:
        self.calls.append(("set_server", pool, server, admin, weight, who))

    def apply(self, config: Any, sockets: dict[str, tuple[int, int]]) -> ReloadOutcome:
        self.calls.append(("reload", config.path, dict(sockets)))
        sockets.clear()  # adopted
        return ReloadOutcome(True, 2)

    def refused(self, errors: list[str]) -> ReloadOutcome:
        self.calls.append(("refused", errors))
        return ReloadOutcome(False, 1, tuple(errors))

    def close_now(self) -> None:
        self.calls.append(("close_now",))

    def reopen_logs(self) -> None:
        self.calls.append(("reopen_logs",))

    def counters(self) -> Any:
        if isinstance(self.counters_value, Exception):
            raise self.counters_value
        return self.counters_value


class WorkerSide:
    """A WorkerAgent over a fake proxy, connected to a master Agent by iosim."""

    def __init__(self) -> None:
        self.proxy = FakeProxy({"listeners": {"tcp db": {"active": 4}}})
        self.lost = 0
        self.sockets = {"tcp db": (4, int(socket.AF_INET)), "unix api": (5, int(socket.AF_UNIX))}
        self.agent = WorkerAgent(self.proxy, self.sockets, self.on_lost)  # type: ignore[arg-type]
        self.master = Agent()
        self.pump = iosim.connect(
            self.agent,
            iosim.makeFakeServer(self.agent),
            self.master,
            iosim.makeFakeClient(self.master),
        )

    def on_lost(self) -> None:
        self.lost += 1

    def call(self, command: type[amp.Command], **arguments: Any) -> list[Any]:
        answers: list[Any] = []
        self.master.callRemote(command, **arguments).addBoth(answers.append)
        self.pump.flush()
        return answers


def test_worker_set_health_applies_the_masters_verdict() -> None:
    side = WorkerSide()
    answers = side.call(SetHealth, pool="db", server="10.0.0.1:3306", up=False, reason="refused")
    assert answers == [{}]
    assert side.proxy.calls == [("set_health", "db", "10.0.0.1:3306", False, "refused")]


def test_worker_serve_adopts_the_sockets_once_even_when_asked_twice() -> None:
    side = WorkerSide()
    assert side.call(Serve) == [{}]
    assert side.call(Serve) == [{}]
    assert side.proxy.calls == [("adopt", side.sockets)]
    assert side.agent.serving


def test_worker_reload_applies_the_config_with_the_sockets_passed_before() -> None:
    side = WorkerSide()
    spare = socket.socket()
    side.agent.pass_socket("tcp new", int(socket.AF_INET), os.dup(spare.fileno()))
    answers = side.call(Reload, path=PATH, config=CONFIG)
    spare.close()
    assert answers == [{"reloaded": True, "errors": []}]
    [(kind, path, sockets)] = side.proxy.calls
    assert (kind, path, list(sockets)) == ("reload", PATH, ["tcp new"])


def test_worker_reload_of_a_config_it_cannot_load_answers_the_errors() -> None:
    side = WorkerSide()
    [answer] = side.call(Reload, path=PATH, config="[pool web]\n")
    assert answer["reloaded"] is False and PATH in answer["errors"][0]
    assert side.proxy.calls[0][0] == "refused"


def test_worker_set_server_applies_the_admin_state_and_weight() -> None:
    side = WorkerSide()
    answers = side.call(
        SetServer, pool="web", server="127.0.0.1:9001", admin="drain", weight=3, who="x"
    )
    assert answers == [{}]
    assert side.proxy.calls == [("set_server", "web", "127.0.0.1:9001", "drain", 3, "x")]


def test_worker_reopen_logs_reopens_its_proxys_access_logs() -> None:
    side = WorkerSide()
    assert side.call(ReopenLogs) == [{}]
    assert side.proxy.calls == [("reopen_logs",)]


def test_worker_close_now_closes_its_proxys_connections() -> None:
    side = WorkerSide()
    assert side.call(CloseNow) == [{}]
    assert side.proxy.calls == [("close_now",)]


def test_worker_counters_are_its_proxys() -> None:
    side = WorkerSide()
    assert side.call(Counters) == [{"counters": {"listeners": {"tcp db": {"active": 4}}}}]


def test_worker_losing_its_master_connection_calls_lost_once() -> None:
    side = WorkerSide()
    assert side.lost == 0
    side.master.transport.loseConnection()
    side.pump.flush()
    assert side.lost == 1
    assert side.agent.transport is None


# Master


CONFIG = """\
[pool web]
servers =
    127.0.0.1:9001
    127.0.0.1:9002

[pool db]
servers = 127.0.0.1:3306

[tcp db]
listen = tcp:0:interface=127.0.0.1
pool = db

[tcp web]
listen = tcp:0:interface=127.0.0.1
pool = web
"""
PATH = "/etc/proxyd/proxyd.ini"
SERVERS = [("web", "127.0.0.1:9001"), ("web", "127.0.0.1:9002"), ("db", "127.0.0.1:3306")]


class FakeProcess:
    """The process transport spawnProcess returns: records what the master writes to the
    worker's stdin and the signals it sends; exit() ends the process as Twisted reports it."""

    def __init__(self, protocol: WorkerProcess, pid: int, sockets: dict[str, Any]) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []
        self._sockets = sockets

    def write(self, data: bytes) -> None:
        assert not self.stdin_closed
        self.stdin += data

    def closeStdin(self) -> None:
        """The setup is complete: the worker reads its listeners' descriptors from it."""
        self.stdin_closed = True
        for name, (fd, family) in self.setup()["listeners"].items():
            self._sockets[name] = (fd, family)

    def setup(self) -> Any:
        return json.loads(self.stdin)

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def loseConnection(self) -> None:
        """Nothing: the master never closes a worker's pipes itself."""

    def exit(self, status: int | None = 0, by: int | None = None) -> None:
        """The process ends with exit `status` or killed by signal `by`."""
        assert self.pid is not None, "the process has already ended"
        self.pid = None
        if by is None and status == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(status, by))
        self.protocol.processEnded(reason)


class Spawned:
    """One spawnProcess call, and the worker end of the AMP connection it led to."""

    def __init__(
        self, executable: str, args: list[str], env: dict[str, str], child_fds: dict[int, Any]
    ) -> None:
        self.executable = executable
        self.args = args
        self.env = env
        self.child_fds = child_fds
        # A duplicate of the descriptor passed as the worker's MASTER_FD, which the master
        # closes once the process is spawned.
        self.amp_end = socket.socket(fileno=os.dup(child_fds[MASTER_FD]))
        self.sockets: dict[str, Any] = {}
        self.proxy = FakeProxy()
        self.lost = 0
        self.agent = WorkerAgent(self.proxy, self.sockets, self.on_lost)  # type: ignore[arg-type]
        self.master_end: socket.socket | None = None
        self.master_family: int | None = None
        self.pump: iosim.IOPump | None = None
        self.process: FakeProcess | None = None

    def on_lost(self) -> None:
        self.lost += 1

    def close(self) -> None:
        self.amp_end.close()
        if self.master_end is not None:
            self.master_end.close()


class FakeReactor(MemoryReactorClock):
    """A MemoryReactorClock that spawns no process: spawnProcess records its arguments and
    returns a FakeProcess; adoptStreamConnection connects the master's Agent to that
    process's WorkerAgent by an iosim pump."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []

    def spawnProcess(  # type: ignore[override]
        self,
        processProtocol: WorkerProcess,
        executable: str,
        args: list[str],
        env: dict[str, str],
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, Any] | None = None,
    ) -> FakeProcess:
        assert childFDs is not None
        spawned = Spawned(executable, list(args), dict(env), dict(childFDs))
        self.spawned.append(spawned)
        process = FakeProcess(processProtocol, 1000 + len(self.spawned) - 1, spawned.sockets)
        spawned.process = process
        processProtocol.makeConnection(process)
        return process

    def adoptStreamConnection(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> None:
        spawned = self.spawned[-1]
        spawned.master_end = socket.socket(fileno=os.dup(fileDescriptor))
        spawned.master_family = addressFamily
        master_agent = factory.buildProtocol(None)
        spawned.pump = iosim.connect(
            spawned.agent,
            iosim.makeFakeServer(spawned.agent),
            master_agent,
            iosim.makeFakeClient(master_agent),
            greet=False,
        )

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        """Run `f` on the next turn, as the real reactor runs what a signal handler hands it."""
        self.callLater(0, f, *args, **kwargs)

    def flush(self) -> None:
        """Deliver every AMP message in both directions."""
        for spawned in list(self.spawned):
            assert spawned.pump is not None
            spawned.pump.flush()

    def later(self) -> list[float]:
        """The delays of the calls pending on the clock."""
        return [call.getTime() - self.seconds() for call in self.getDelayedCalls()]


class Harness:
    """A Master of `count` workers over a real ProxydService (no health checks: the test
    sets health itself) with its listeners bound for real on loopback."""

    def __init__(self, count: int = 2, config: str = CONFIG) -> None:
        self.reactor = FakeReactor()
        self.proxy = ProxydService(self.reactor, loads(config, PATH))
        self.shared = self.proxy.bind_shared(count)
        self.master = Master(self.reactor, self.proxy, config, count)

    def start(self) -> None:
        self.master.startService()

    def worker(self, n: int) -> Spawned:
        """The `n`th process spawned."""
        return self.reactor.spawned[n]

    def process(self, n: int) -> FakeProcess:
        process = self.worker(n).process
        assert process is not None
        return process

    def set_health(self, pool: str, server: str, up: bool, reason: str) -> None:
        """The master's health checks' verdict."""
        [found] = [s for s in self.proxy.pools[pool].servers if s.name == server]
        self.proxy.pools[pool].set_health(found, up, reason)

    def close(self) -> None:
        for spawned in self.reactor.spawned:
            spawned.close()
        for shared in self.shared.values():
            shared.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


def messages(events: Sequence[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [
        formatEvent(event)
        for event in events
        if event.get("log_namespace") == master_module.__name__
        and (level is None or event["log_level"] is level)
    ]


def test_master_starts_count_workers_with_the_setup_on_stdin(harness: Harness) -> None:
    harness.start()
    assert len(harness.reactor.spawned) == 2
    for index in (0, 1):
        process = harness.process(index)
        assert process.stdin_closed
        assert process.setup() == {
            "index": index,
            "path": PATH,
            "config": CONFIG,
            "listeners": {
                "tcp db": [MASTER_FD + 1, socket.AF_INET],
                "tcp web": [MASTER_FD + 2, socket.AF_INET],
            },
        }


def test_master_runs_the_worker_module_with_proxyd_importable(
    monkeypatch: pytest.MonkeyPatch, harness: Harness
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("PROXYD_TEST_MARK", "kept")
    harness.start()
    spawned = harness.worker(0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(proxyd.__file__)))
    assert spawned.executable == sys.executable
    assert spawned.args == [sys.executable, "-m", "proxyd.workers.worker"]
    assert spawned.env["PYTHONPATH"] == f"{root}{os.pathsep}/elsewhere"
    assert spawned.env["PROXYD_TEST_MARK"] == "kept"


def test_master_passes_stdin_stdout_stderr_amp_and_the_workers_own_listener_sockets(
    harness: Harness,
) -> None:
    harness.start()
    for index in (0, 1):
        spawned = harness.worker(index)
        fds = spawned.child_fds
        assert sorted(fds) == [0, 1, 2, 3, 4, 5]
        assert (fds[0], fds[1], fds[2]) == ("w", 1, "r")
        assert fds[4] == harness.shared["tcp db"].for_worker(index).fileno()
        assert fds[5] == harness.shared["tcp web"].for_worker(index).fileno()
    assert harness.worker(0).child_fds[4] != harness.worker(1).child_fds[4]


def test_a_workers_descriptor_3_is_the_other_end_of_the_masters_amp_connection(
    harness: Harness,
) -> None:
    harness.start()
    for spawned in harness.reactor.spawned:
        assert spawned.master_family == socket.AF_UNIX
        assert spawned.master_end is not None
        assert spawned.amp_end.family == socket.AF_UNIX
        spawned.master_end.sendall(b"ping")
        assert spawned.amp_end.recv(16) == b"ping"
        spawned.amp_end.sendall(b"pong")
        assert spawned.master_end.recv(16) == b"pong"


def test_a_new_worker_learns_every_servers_health_before_it_serves(harness: Harness) -> None:
    harness.set_health("web", "127.0.0.1:9002", False, "connection refused")
    harness.start()
    assert not harness.master.workers[0].serving
    harness.reactor.flush()
    for spawned in harness.reactor.spawned:
        assert spawned.proxy.calls == [
            ("set_health", "web", "127.0.0.1:9001", True, ""),
            ("set_health", "web", "127.0.0.1:9002", False, "connection refused"),
            ("set_health", "db", "127.0.0.1:3306", True, ""),
            ("adopt", {"tcp db": (4, socket.AF_INET), "tcp web": (5, socket.AF_INET)}),
        ]
    assert [worker.serving for worker in harness.master.workers.values()] == [True, True]


def test_master_logs_each_worker_serving(harness: Harness) -> None:
    with capturedLogs() as events:
        harness.start()
        harness.reactor.flush()
    assert messages(events, LogLevel.info) == [
        f"master (pid {os.getpid()}) starting 2 workers",
        "worker 0 (pid 1000) serving",
        "worker 1 (pid 1001) serving",
    ]


def test_a_pool_health_change_reaches_every_worker(harness: Harness) -> None:
    harness.start()
    harness.reactor.flush()
    for spawned in harness.reactor.spawned:
        spawned.proxy.calls.clear()
    harness.set_health("db", "127.0.0.1:3306", False, "timeout after 2s")
    harness.set_health("db", "127.0.0.1:3306", False, "timeout after 2s")  # no change
    harness.reactor.flush()
    for spawned in harness.reactor.spawned:
        assert spawned.proxy.calls == [
            ("set_health", "db", "127.0.0.1:3306", False, "timeout after 2s")
        ]


def test_a_worker_that_lived_long_is_restarted_at_once_on_the_same_sockets(
    harness: Harness,
) -> None:
    harness.start()
    harness.reactor.flush()
    harness.reactor.advance(YOUNG + 1)
    with capturedLogs() as events:
        harness.process(0).exit(1)
    assert messages(events, LogLevel.error) == [
        "worker 0 (pid 1000) exited with status 1 after 11.0s; its connections are lost;"
        " starting it again in 0s"
    ]
    assert harness.worker(0).lost == 0  # until the pump tells the worker end
    harness.reactor.flush()
    assert harness.worker(0).lost == 1
    assert 0 not in harness.master.workers
    assert harness.reactor.later() == [0.0]

    harness.reactor.advance(0)
    assert len(harness.reactor.spawned) == 3
    again = harness.worker(2)
    assert again.process.setup()["index"] == 0  # type: ignore[union-attr]
    assert again.child_fds[4] == harness.worker(0).child_fds[4]
    assert again.child_fds[5] == harness.worker(0).child_fds[5]
    harness.reactor.flush()
    assert again.proxy.calls[-1][0] == "adopt"
    assert harness.master.workers[0].pid == 1002 and harness.master.workers[0].serving
    assert harness.process(1).signals == []  # the other worker is left alone


def test_a_worker_that_keeps_dying_young_waits_longer_each_time_up_to_the_maximum(
    harness: Harness,
) -> None:
    harness.start()
    delays = []
    # Worker 1 stays up; worker 0 dies right after each start.
    latest = 0
    with capturedLogs() as events:
        for _ in range(9):
            harness.process(latest).exit(70)
            [delay] = harness.reactor.later()
            delays.append(delay)
            harness.reactor.advance(delay)
            latest = len(harness.reactor.spawned) - 1
            assert harness.process(latest).setup()["index"] == 0
    expected = [RESTART_DELAY * 2**n for n in range(6)] + [RESTART_DELAY_MAX] * 3
    assert expected[:7] == [0.5, 1, 2, 4, 8, 16, 30]
    assert delays == expected
    assert messages(events, LogLevel.error)[-1].endswith("starting it again in 30s")

    harness.reactor.advance(YOUNG)
    harness.process(latest).exit(by=signal.SIGKILL)
    assert harness.reactor.later() == [0.0]


def test_master_logs_how_a_worker_ended(harness: Harness) -> None:
    harness.start()
    with capturedLogs() as events:
        harness.process(0).exit(by=signal.SIGKILL)
        harness.process(1).exit(0)
    assert messages(events, LogLevel.error) == [
        "worker 0 (pid 1000) was killed by SIGKILL after 0.0s; its connections are lost;"
        " starting it again in 0.5s",
        "worker 1 (pid 1001) exited with status 0 after 0.0s; its connections are lost;"
        " starting it again in 0.5s",
    ]


def test_a_restarted_worker_learns_the_health_changes_made_while_it_was_down(
    harness: Harness,
) -> None:
    harness.start()
    harness.reactor.flush()
    harness.reactor.advance(YOUNG)
    harness.process(1).exit(1)
    harness.set_health("web", "127.0.0.1:9001", False, "HTTP 503")
    harness.reactor.advance(0)
    harness.reactor.flush()
    assert harness.worker(2).proxy.calls[:2] == [
        ("set_health", "web", "127.0.0.1:9001", False, "HTTP 503"),
        ("set_health", "web", "127.0.0.1:9002", True, ""),
    ]
    assert harness.worker(1).proxy.calls[-1][0] == "adopt"  # the dead one was told nothing


def test_reload_applies_the_file_here_and_asks_every_worker_to_follow(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxyd.workers.master.read", lambda path: CONFIG)
    harness.start()
    harness.reactor.flush()
    outcomes: list[Any] = []
    with capturedLogs() as events:
        harness.master.reload().addCallback(outcomes.append)
        harness.reactor.flush()
    assert [
        [call for call in spawned.proxy.calls if call[0] == "reload"]
        for spawned in harness.reactor.spawned
    ] == [[("reload", PATH, {})]] * 2
    # ... and then the servers' state as the master has it, for servers new in the file.
    assert harness.reactor.spawned[0].proxy.calls[-1][0] == "set_health"
    assert outcomes == [ReloadOutcome(True, 2)]
    assert "reload: asking 2 workers" in messages(events)


def test_a_reload_the_master_refuses_reaches_no_worker(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxyd.workers.master.read", lambda path: "[pool web]\n")
    harness.start()
    harness.reactor.flush()
    outcomes: list[Any] = []
    harness.master.reload().addCallback(outcomes.append)
    harness.reactor.flush()
    assert all(spawned.proxy.calls[-1][0] != "reload" for spawned in harness.reactor.spawned)
    [outcome] = outcomes
    assert not outcome.reloaded and outcome.generation == 1 and PATH in outcome.errors[0]


def reloads_asked(harness: Harness) -> list[int]:
    """How many reloads each worker was asked for."""
    return [
        len([call for call in spawned.proxy.calls if call[0] == "reload"])
        for spawned in harness.reactor.spawned
    ]


@pytest.mark.parametrize("text", ["", "; cut short\n", "[pool web]\nservers = 127.0.0.1:9001\n"])
def test_the_master_refuses_a_file_with_no_listener_and_asks_no_worker(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setattr("proxyd.workers.master.read", lambda path: text)
    harness.start()
    harness.reactor.flush()
    listeners = list(harness.proxy.listeners)
    outcomes: list[Any] = []
    harness.master.reload().addCallback(outcomes.append)
    harness.reactor.flush()
    assert reloads_asked(harness) == [0, 0]
    [outcome] = outcomes
    assert not outcome.reloaded and outcome.generation == 1
    assert outcome.errors[0].startswith(f"{PATH}:1: expected at least one listener section")
    assert harness.proxy.listeners == listeners and harness.master.config_text == CONFIG


def test_the_master_keeps_its_admin_listener_at_a_sighup_and_removes_it_when_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(config=CONFIG + "\n[admin]\nlisten = tcp:0:interface=127.0.0.1\n")
    try:
        monkeypatch.setattr("proxyd.workers.master.read", lambda path: CONFIG)
        harness.start()
        harness.reactor.flush()
        admin = harness.proxy.admin
        assert admin is not None
        outcomes: list[Any] = []
        with capturedLogs() as events:
            harness.master._on_sighup(signal.SIGHUP, None)
            harness.reactor.advance(0)
            harness.reactor.flush()
        assert "reload asked by SIGHUP" in [formatEvent(e) for e in events]
        assert reloads_asked(harness) == [0, 0]
        assert harness.proxy.admin is admin and harness.proxy.generation == 1
        [refused] = [e["error"] for e in events if e.get("error")]
        assert refused.startswith(f"{PATH}: [admin]: expected an [admin] section")
        assert "SIGHUP cannot force it" in refused

        harness.proxy.reload_source(True).addCallback(outcomes.append)
        harness.reactor.flush()
        assert outcomes == [ReloadOutcome(True, 2)]
        assert reloads_asked(harness) == [1, 1]
        assert harness.proxy.admin is None and admin.parent is None
        assert harness.master.config_text == CONFIG
    finally:
        harness.close()


def test_a_server_changed_through_the_api_is_set_in_every_worker(harness: Harness) -> None:
    harness.start()
    harness.reactor.flush()
    harness.proxy.change_server("web", "127.0.0.1:9002", "maint", 5, "admin API, 127.0.0.1")
    harness.reactor.flush()
    assert [spawned.proxy.calls[-1] for spawned in harness.reactor.spawned] == [
        ("set_server", "web", "127.0.0.1:9002", "maint", 5, "admin API, 127.0.0.1"),
    ] * 2


def test_a_second_stop_signal_has_every_worker_close_what_it_still_has(
    harness: Harness,
) -> None:
    harness.start()
    harness.reactor.flush()
    harness.master._stop_now()
    harness.reactor.flush()
    assert [spawned.proxy.calls[-1] for spawned in harness.reactor.spawned] == [
        ("close_now",),
        ("close_now",),
    ]


def test_sighup_reaches_every_worker_as_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxyd.workers.master.read", lambda path: CONFIG)
    harness = Harness()
    harness.master = Master(harness.reactor, harness.proxy, CONFIG, 2, handle_signals=True)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        harness.start()
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
    finally:
        signal.signal(signal.SIGHUP, previous)
        harness.close()
    harness.reactor.flush()
    reload = ("reload", PATH, {})
    assert all(reload not in spawned.proxy.calls for spawned in harness.reactor.spawned)
    harness.reactor.advance(0)
    harness.reactor.flush()
    assert [spawned.proxy.calls.count(reload) for spawned in harness.reactor.spawned] == [1, 1]


def test_stopping_terminates_every_worker_and_ends_when_all_have_ended(harness: Harness) -> None:
    harness.start()
    harness.reactor.flush()
    stopped: list[Any] = []
    with capturedLogs() as events:
        harness.master.stopService().addBoth(stopped.append)
        assert [harness.process(n).signals for n in (0, 1)] == [["TERM"], ["TERM"]]
        harness.process(1).exit(0)
        assert stopped == []
        harness.process(0).exit(by=signal.SIGTERM)
    assert len(stopped) == 1 and not isinstance(stopped[0], Failure)
    assert messages(events) == [
        "stopping 2 workers",
        "worker 1 (pid 1001) exited with status 0",
        "worker 0 (pid 1000) was killed by SIGTERM",
    ]
    assert len(harness.reactor.spawned) == 2
    assert harness.reactor.getDelayedCalls() == []  # no restart, no kill pending
    assert all(sock.fileno() == -1 for sock in harness.shared["tcp db"].sockets)


def test_the_master_closes_its_sockets_as_the_stop_begins(harness: Harness) -> None:
    harness.start()
    harness.master.stopService()
    # New connections are refused once the workers drain: no queue that nobody reads.
    assert all(sock.fileno() == -1 for sock in harness.shared["tcp web"].sockets)
    assert [harness.process(i).signals for i in (0, 1)] == [["TERM"], ["TERM"]]


def test_workers_still_running_after_the_stop_timeout_are_killed(harness: Harness) -> None:
    harness.start()
    stopped: list[Any] = []
    harness.master.stopService().addBoth(stopped.append)
    harness.process(0).exit(0)
    harness.reactor.advance(30 + STOP_GRACE - 0.5)  # drain_timeout's default, and the grace
    assert harness.process(1).signals == ["TERM"]
    with capturedLogs() as events:
        harness.reactor.advance(0.5)
    assert harness.process(0).signals == ["TERM"]
    assert harness.process(1).signals == ["TERM", "KILL"]
    assert messages(events, LogLevel.warn) == [
        "worker 1 (pid 1001) still running after 40s, killing it"
    ]
    assert stopped == []
    harness.process(1).exit(by=signal.SIGKILL)
    assert len(stopped) == 1 and not isinstance(stopped[0], Failure)
    assert len(harness.reactor.spawned) == 2


def test_stopping_cancels_a_pending_restart_and_health_stops_reaching_workers(
    harness: Harness,
) -> None:
    harness.start()
    harness.reactor.flush()
    harness.process(0).exit(1)
    assert harness.reactor.later() == [RESTART_DELAY]
    stopped: list[Any] = []
    harness.master.stopService().addBoth(stopped.append)
    assert harness.process(1).signals == ["TERM"]
    calls = list(harness.worker(1).proxy.calls)
    harness.set_health("db", "127.0.0.1:3306", False, "refused")
    harness.reactor.flush()
    assert harness.worker(1).proxy.calls == calls
    harness.process(1).exit(0)
    assert len(stopped) == 1
    harness.reactor.advance(RESTART_DELAY_MAX)
    assert len(harness.reactor.spawned) == 2


def test_stopping_with_no_worker_running_ends_at_once(harness: Harness) -> None:
    harness.start()
    harness.process(0).exit(1)
    harness.process(1).exit(1)
    stopped: list[Any] = []
    harness.master.stopService().addBoth(stopped.append)
    assert len(stopped) == 1 and not isinstance(stopped[0], Failure)
    assert harness.reactor.getDelayedCalls() == []


def test_a_signal_to_a_worker_that_already_exited_is_ignored(harness: Harness) -> None:
    harness.start()
    process = harness.process(0)
    worker = harness.master.workers[0]
    process.pid = None  # exited, its end not reported yet
    worker.signal("TERM")
    assert process.signals == []


def counters_of(n: int) -> dict[str, Any]:
    return {
        "listeners": {"tcp db": {"active": n, "total": 10 * n}, "tcp web": {"active": 1}},
        "servers": {"db/127.0.0.1:3306": {"active": n}},
    }


def test_counters_are_summed_over_the_serving_workers(harness: Harness) -> None:
    harness.start()
    harness.reactor.flush()
    harness.worker(0).proxy.counters_value = counters_of(2)
    harness.worker(1).proxy.counters_value = counters_of(3)
    answers: list[Any] = []
    harness.master.counters().addBoth(answers.append)
    assert answers == []
    harness.reactor.flush()
    assert answers == [
        {
            "workers": 2,
            "listeners": {"tcp db": {"active": 5, "total": 50}, "tcp web": {"active": 2}},
            "servers": {"db/127.0.0.1:3306": {"active": 5}},
        }
    ]


def test_counters_leave_out_workers_not_serving_or_not_answering(harness: Harness) -> None:
    harness.start()
    harness.reactor.flush()
    harness.worker(0).proxy.counters_value = counters_of(2)
    harness.worker(1).proxy.counters_value = RuntimeError("counting failed")
    answers: list[Any] = []
    with capturedLogs():
        harness.master.counters().addBoth(answers.append)
        harness.reactor.flush()
    assert answers == [{"workers": 1, **counters_of(2)}]

    harness.reactor.advance(YOUNG)
    harness.process(0).exit(1)
    harness.reactor.advance(0)  # worker 0 again, not serving until its Serve is answered
    harness.worker(2).proxy.counters_value = counters_of(7)
    assert not harness.master.workers[0].serving
    answers.clear()
    with capturedLogs():
        harness.master.counters().addBoth(answers.append)
        harness.reactor.flush()
    assert harness.master.workers[0].serving
    assert answers == [{"workers": 0}]


def test_counters_with_no_worker_serving_count_none() -> None:
    harness = Harness()
    try:
        answers: list[Any] = []
        harness.master.counters().addBoth(answers.append)
        assert answers == [{"workers": 0}]
    finally:
        harness.close()


def test_the_masters_own_acme_figures_join_the_workers_sum(tmp_path: Any) -> None:
    acme = f"\n[acme site]\nnames = example.test\nstorage = {tmp_path}/acme\n"
    harness = Harness(config=CONFIG + acme)
    try:
        answers: list[Any] = []
        harness.master.counters().addBoth(answers.append)
        assert answers == [
            {
                "workers": 0,
                "acme": {"site": {"orders": {"success": 0, "failure": 0}, "failures": 0}},
            }
        ]
    finally:
        harness.close()


def test_workers_charges_reach_the_masters_ledger_and_come_back_summed(
    harness: Harness,
) -> None:
    harness.start()
    harness.reactor.flush()
    now = harness.reactor.seconds()
    shape = [10, 1, 5, 1000]
    first: list[Any] = []
    harness.worker(1).agent.charge_limits([]).addBoth(first.append)
    harness.reactor.flush()
    assert first == [{}]
    answers: list[Any] = []
    harness.worker(0).agent.charge_limits(
        [{"id": "front/l", "shape": shape, "charges": [[["client", "::1"], now, 2]]}]
    ).addBoth(answers.append)
    harness.reactor.flush()
    assert answers == [{"front/l": [[["client", "::1"], pytest.approx(now + 0.2)]]}]
    # Worker 1 learns of them at its next call; the ledger sweeps from the first call on.
    harness.worker(1).agent.charge_limits([]).addBoth(answers.append)
    harness.reactor.flush()
    assert answers[1] == {"front/l": [[["client", "::1"], pytest.approx(now + 0.2)]]}
    assert harness.master._sweep.running
    harness.process(1).exit(0)
    assert 1 not in harness.master.ledger._untold
    harness.master.stopService()
    assert not harness.master._sweep.running


# Worker logs


def json_record(namespace: str, level: LogLevel, format: str, **fields: Any) -> bytes:
    """One line of a worker's stderr: a record as jsonFileLogObserver writes it."""
    out = io.StringIO()
    Logger(namespace=namespace, observer=jsonFileLogObserver(out)).emit(level, format, **fields)
    text = out.getvalue()
    assert text.startswith("\x1e") and text.endswith("\n")
    return text.encode()


def test_a_workers_json_log_record_is_logged_by_the_master_marked_with_the_worker() -> None:
    line = json_record("proxyd.relay.tcp", LogLevel.warn, "[{listener}] refused", listener="tcp db")
    with capturedLogs() as events:
        relay_log(line.rstrip(b"\n"), 1, 4242)
    [event] = events
    assert event["log_system"] == "worker 1#warn proxyd.relay.tcp"
    assert event["log_level"] is LogLevel.warn
    assert event["log_namespace"] == "proxyd.relay.tcp"
    assert (event["worker"], event["worker_pid"]) == (1, 4242)
    assert formatEvent(event) == "[tcp db] refused"


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        (b"Traceback (most recent call last):", "Traceback (most recent call last):"),
        (b"  bad \xff byte \r", "bad \ufffd byte"),
        (b"\x1e{not json", "{not json"),
        (b"\x1e[1]", "[1]"),
    ],
)
def test_anything_else_a_worker_writes_on_stderr_is_a_warning(line: bytes, logged: str) -> None:
    with capturedLogs() as events:
        relay_log(line, 0, 7)
    [event] = events
    assert event["log_level"] is LogLevel.warn
    assert formatEvent(event) == f"worker 0 (pid 7): {logged}"


def test_an_empty_stderr_line_is_not_logged() -> None:
    with capturedLogs() as events:
        relay_log(b"   ", 0, 7)
    assert events == []


def test_worker_stderr_is_relayed_line_by_line_however_it_is_split(harness: Harness) -> None:
    harness.start()
    protocol = harness.process(1).protocol
    record = json_record("proxyd.app", LogLevel.info, "[{listener}] accepting", listener="tcp db")
    data = record + b'Traceback (most recent call last):\n  File "x"\nKeyErr'
    with capturedLogs() as events:
        for i in range(0, len(data), 7):
            protocol.childDataReceived(2, data[i : i + 7])
        protocol.childDataReceived(1, b"stdout is not read\n")
        relayed_before_end = [formatEvent(event) for event in events]
        harness.process(1).exit(1)
    assert relayed_before_end == [
        "[tcp db] accepting",
        "worker 1 (pid 1001): Traceback (most recent call last):",
        'worker 1 (pid 1001): File "x"',
    ]
    assert formatEvent(events[3]) == "worker 1 (pid 1001): KeyErr"
    assert events[0]["log_system"] == "worker 1#info proxyd.app"


def test_a_worker_that_fails_to_start_serving_is_killed(harness: Harness) -> None:
    harness.start()
    harness.worker(1).proxy.adopt = _refuse  # type: ignore[method-assign]
    with capturedLogs() as events:
        harness.reactor.flush()
    assert harness.process(0).signals == []
    assert harness.process(1).signals == ["KILL"]
    assert [worker.serving for worker in harness.master.workers.values()] == [True, False]
    assert messages(events, LogLevel.error) == [
        # AMP does not carry the worker's exception: the worker logs it, on its stderr.
        "worker 1 (pid 1001) did not start serving: Code<UNKNOWN>: Unknown Error"
    ]


def test_a_worker_that_ended_before_serving_is_not_killed_again(harness: Harness) -> None:
    harness.start()
    harness.worker(0).proxy.adopt = _refuse  # type: ignore[method-assign]
    harness.process(0).exit(1)
    with capturedLogs() as events:
        harness.reactor.flush()
    assert harness.process(0).signals == []
    assert messages(events, LogLevel.error) == []


def _refuse(sockets: Mapping[str, tuple[int, int]]) -> None:
    raise OSError(9, "Bad file descriptor")


# A worker process's main()


class WorkerReactor(MemoryReactorClock):
    """The reactor main() runs on. run() calls the callWhenRunning hooks, then `scene`;
    stop() raises ReactorNotRunning when asked again, as the real reactor's does until its
    shutdown begins; callFromThread (what signal handlers use) queues for run_turn()."""

    def __init__(self, scene: Any) -> None:
        super().__init__()
        self.scene = scene
        self.stops = 0
        self.queued: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def run(self) -> None:
        self.running = True
        for f, args, kwargs in self.whenRunningHooks:
            f(*args, **kwargs)
        self.scene(self)

    def stop(self) -> None:
        if self.stops:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.queued.append((f, args, kwargs))

    def run_turn(self) -> None:
        """What the queued calls do in one turn of the real reactor: all of them, then the
        shutdown's 'before' triggers if one of them stopped the reactor."""
        stops = self.stops
        queued, self.queued = self.queued, []
        for f, args, kwargs in queued:
            f(*args, **kwargs)
        if self.stops > stops:
            self.shut_down()

    def shut_down(self) -> None:
        for f, args, kwargs in self.triggers["before"]["shutdown"]:
            f(*args, **kwargs)


class WorkerProcessHarness:
    """main() of a worker with index 1 in this process: its stdin, stderr, reactor, logging,
    signal handlers and os.close replaced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config: str = CONFIG) -> None:
        self.setup = {
            "index": 1,
            "path": PATH,
            "config": config,
            "listeners": {"tcp db": [4, socket.AF_INET], "tcp web": [5, socket.AF_INET]},
        }
        self.stderr = io.StringIO()
        self.observers: list[Any] = []
        self.closed: list[int] = []
        self.handlers: dict[int, Any] = {}
        self.scene: Any = lambda reactor: None
        self.reactor = WorkerReactor(lambda reactor: self.scene(reactor))
        monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(self.setup)))
        monkeypatch.setattr(sys, "stderr", self.stderr)
        monkeypatch.setattr(twisted.internet, "reactor", self.reactor, raising=False)
        self.installs: list[bool] = []
        monkeypatch.setattr(worker_module, "install", lambda: self.installs.append(True))
        self.freezes: list[bool] = []
        monkeypatch.setattr(
            worker_module, "gc", SimpleNamespace(freeze=lambda: self.freezes.append(True))
        )
        monkeypatch.setattr(
            worker_module,
            "globalLogBeginner",
            SimpleNamespace(
                beginLoggingTo=lambda observers, **kw: self.observers.extend(observers)
            ),
        )
        monkeypatch.setattr(worker_module, "os", SimpleNamespace(close=self.closed.append))
        monkeypatch.setattr(
            worker_module,
            "signal",
            SimpleNamespace(
                SIGINT=signal.SIGINT,
                SIGHUP=signal.SIGHUP,
                SIGUSR1=signal.SIGUSR1,
                SIGTERM=signal.SIGTERM,
                SIG_IGN=signal.SIG_IGN,
                signal=self.handlers.__setitem__,
            ),
        )

    def main(self) -> int:
        return worker_module.main()

    def agent(self) -> WorkerAgent:
        [(fd, family, factory)] = self.reactor.adoptedStreamConnections
        assert (fd, family) == (MASTER_FD, socket.AF_UNIX)
        agent = factory.buildProtocol(None)
        assert isinstance(agent, WorkerAgent)
        return agent

    def sigterm(self) -> None:
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)

    def master_lost(self) -> None:
        agent = self.agent()
        agent.makeConnection(StringTransport())
        agent.connectionLost(Failure(ConnectionDone()))


def worker_messages(events: Sequence[LogEvent]) -> list[str]:
    return [
        formatEvent(event)
        for event in events
        if event.get("log_namespace") == worker_module.__name__
    ]


def test_worker_main_adopts_its_master_connection_and_starts_its_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = WorkerProcessHarness(monkeypatch)
    seen: dict[str, Any] = {}

    def scene(reactor: WorkerReactor) -> None:
        agent = worker.agent()
        seen["running"] = agent.proxy.running
        seen["health"] = agent.proxy.health
        seen["handlers"] = dict(worker.handlers)
        seen["frozen"] = list(worker.freezes)

    worker.scene = scene
    assert worker.main() == 0
    assert worker.installs == [True]  # proxyd's reactor, before Twisted's default
    assert worker.closed == [MASTER_FD]  # Twisted holds a duplicate
    assert worker.agent()._sockets == {
        "tcp db": (4, socket.AF_INET),
        "tcp web": (5, socket.AF_INET),
    }
    assert seen["running"] and seen["health"] is None  # the master runs the checks
    assert seen["handlers"][signal.SIGINT] == signal.SIG_IGN
    assert seen["handlers"][signal.SIGHUP] == signal.SIG_IGN
    assert seen["handlers"][signal.SIGUSR1] == signal.SIG_IGN  # the master passes it on
    assert callable(seen["handlers"][signal.SIGTERM])
    assert seen["frozen"] == [True]  # what the start made kept out of the cyclic collector


def test_worker_main_logs_json_records_of_info_and_above_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = WorkerProcessHarness(monkeypatch)
    worker.main()
    [observer] = worker.observers
    logger = Logger(namespace="proxyd.relay.tcp", observer=observer)
    logger.debug("not this")
    logger.info("[{listener}] accepting", listener="tcp db")
    [line, end] = worker.stderr.getvalue().split("\n")
    assert end == ""
    with capturedLogs() as events:
        relay_log(line.encode(), 1, 4242)
    assert [formatEvent(event) for event in events] == ["[tcp db] accepting"]
    assert events[0]["log_system"] == "worker 1#info proxyd.relay.tcp"


def test_worker_main_with_an_invalid_config_does_not_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = WorkerProcessHarness(monkeypatch, config="[pool web]\nservers = nowhere\n")
    with capturedLogs() as events:
        assert worker.main() == 2
    assert not worker.reactor.running
    assert worker.reactor.adoptedStreamConnections == []
    assert worker_messages(events)[0].startswith("configuration invalid, not serving: ")


def test_worker_stops_on_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = WorkerProcessHarness(monkeypatch)

    def scene(reactor: WorkerReactor) -> None:
        worker.sigterm()
        assert reactor.stops == 0  # the handler only queues
        reactor.run_turn()

    worker.scene = scene
    with capturedLogs() as events:
        worker.main()
    assert worker.reactor.stops == 1
    assert worker_messages(events) == ["worker 1: SIGTERM, stopping"]
    assert not worker.agent().proxy.running


def test_worker_stops_when_its_master_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = WorkerProcessHarness(monkeypatch)
    worker.scene = lambda reactor: worker.master_lost()
    with capturedLogs() as events:
        worker.main()
    assert worker.reactor.stops == 1
    assert worker_messages(events) == ["worker 1: the master is gone, stopping"]


def test_worker_stops_once_on_two_sigterms_in_one_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's SIGTERM to the whole control group and the master's SIGTERM can reach the
    worker before its reactor's next turn."""
    worker = WorkerProcessHarness(monkeypatch)

    def scene(reactor: WorkerReactor) -> None:
        worker.sigterm()
        worker.sigterm()
        reactor.run_turn()

    worker.scene = scene
    with capturedLogs() as events:
        worker.main()
    assert worker.reactor.stops == 1
    assert worker_messages(events) == ["worker 1: SIGTERM, stopping"]


def test_a_stopping_worker_ignores_its_master_going_away_and_more_sigterms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = WorkerProcessHarness(monkeypatch)

    def scene(reactor: WorkerReactor) -> None:
        worker.sigterm()
        reactor.run_turn()
        worker.master_lost()
        worker.sigterm()
        reactor.run_turn()

    worker.scene = scene
    with capturedLogs() as events:
        worker.main()
    assert worker.reactor.stops == 1
    assert worker_messages(events) == ["worker 1: SIGTERM, stopping"]

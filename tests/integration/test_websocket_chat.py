"""WebSocket chat through the real proxyd: examples/chat_server.py twice in one pool, the
clients of chat_clients.py in a subprocess. 200 clients in one room (balance = first): every
message reaches every other client exactly once and in order per sender, and never its
sender; a killed server closes each of its clients, and they reconnect to the other one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, Process, ProcessList, Proxyd, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAT_SERVER = str(ROOT / "examples" / "chat_server.py")
CHAT_CLIENTS = str(Path(__file__).resolve().parent / "chat_clients.py")

SERVERS = ("chat-a", "chat-b")
PHASE_TIMEOUT = 30.0  # each phase of chat_clients.py
CLOSE_WITHIN = 5.0  # seconds from the kill to the close of the killed server's clients
MODES = ("message", "passthrough", "http")
# What a client of a killed server sees: in message mode proxyd closes the client's WebSocket
# (docs/websocket.md); a byte relay closes the TCP connection, without a close frame (1006,
# RFC 6455 7.1.5), and the reason is the client's own.
CLOSE = {
    "message": (1001, "backend closed the connection"),
    "passthrough": (1006, None),
    "http": (1006, None),
}


@pytest.fixture
def chat_servers(processes: ProcessList) -> dict[str, Backend]:
    """examples/chat_server.py as chat-a and chat-b, each on a port the kernel picked."""
    servers = {}
    for name in SERVERS:
        argv = [sys.executable, CHAT_SERVER, "--port", "0", "--name", name]
        process = processes.start(name, argv)
        match = process.wait_for_output(r"listening on 127\.0\.0\.1:(\d+)", 15)
        servers[name] = Backend(process, int(match.group(1)))
    return servers


def chat_config(
    mode: str, port: int, servers: dict[str, Backend], balance: str = "round_robin"
) -> str:
    """The pool of both servers (one down is out within a check interval) and the listener
    of `mode`: a `[websocket]` in message or passthrough mode, or an `[http]` route."""
    lines = "".join(f"    {server.address}\n" for server in servers.values())
    pool = (
        f"[pool chat]\nservers =\n{lines}balance = {balance}\n"
        "check = websocket / ping\ncheck_interval = 500ms\nfall = 1\nrise = 1\n"
    )
    listen = f"listen = tcp:{port}:interface=127.0.0.1"
    if mode == "http":
        listener = f"[http front]\n{listen}\nroutes =\n    path / -> pool chat\n"
    else:
        listener = f"[websocket chat]\n{listen}\npool = chat\nmode = {mode}\nretries = 2\n"
    return f"{pool}\n{listener}"


def run_clients(
    processes: ProcessList,
    mode: str,
    port: int,
    *args: str,
    started: Callable[[Process], None] | None = None,
) -> dict[str, Any]:
    """Runs chat_clients.py to its end and returns its RESULT; `started`, if given, is
    called with its process first."""
    argv = [sys.executable, CHAT_CLIENTS, mode, "--url", f"ws://127.0.0.1:{port}/"]
    argv += [*args, "--timeout", str(PHASE_TIMEOUT)]
    process = processes.start(f"chat-clients-{mode}", argv)
    if started is not None:
        started(process)
    try:
        process.popen.wait(4 * PHASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"chat_clients.py still running:\n{process.tail()}") from None
    for line in process.output().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise AssertionError(f"chat_clients.py printed no RESULT:\n{process.tail()}")


def delivery_problems(result: dict[str, Any], messages: int) -> list[str]:
    """Every client must have from each other member of its room seq 0 .. messages-1, in
    order, once each, and nothing from itself or from outside its room."""
    clients = result["clients"]
    rooms: dict[str, set[int]] = {}
    for index, client in enumerate(clients):
        rooms.setdefault(client["servers"][-1], set()).add(index)
    wanted = list(range(messages))
    problems = []
    for index, client in enumerate(clients):
        senders = rooms[client["servers"][-1]] - {index}
        received = {int(sender): seqs for sender, seqs in client["received"].items()}
        if index in received:
            problems.append(f"client {index} got its own messages back: {received[index]}")
        for sender in sorted(senders | received.keys() - {index}):
            seqs = received.get(sender, [])
            if sender not in senders:
                problems.append(f"client {index} got {seqs} from {sender} of another room")
            elif seqs != wanted:
                problems.append(f"client {index} got {seqs} from {sender}, not {wanted}")
    return problems


def assert_delivered(result: dict[str, Any], messages: int, relay: Proxyd) -> None:
    problems = ([result["error"]] if result["error"] else []) + delivery_problems(result, messages)
    if problems:
        shown = "\n".join(problems[:20])
        raise AssertionError(
            f"{len(problems)} problems, the first ones:\n{shown}\nproxyd:\n{relay.log()[-3000:]}"
        )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_every_message_reaches_every_other_client_once_in_order(
    mode: str, chat_servers: dict[str, Backend], processes: ProcessList, proxyd
):
    port = free_port()
    # balance = first: all 200 in chat-a's room, so that every client hears every other.
    relay = proxyd(chat_config(mode, port, chat_servers, balance="first"))
    messages = 5
    result = run_clients(processes, "chat", port, "--clients", "200", "--messages", str(messages))

    assert_delivered(result, messages, relay)
    landed = [client["servers"] for client in result["clients"]]
    assert all(servers == ["chat-a"] for servers in landed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_killed_server_closes_its_clients_and_they_reconnect_to_the_other(
    mode: str, chat_servers: dict[str, Backend], processes: ProcessList, proxyd
):
    port = free_port()
    relay = proxyd(chat_config(mode, port, chat_servers))
    victim = chat_servers["chat-a"]
    killed_at = []

    def kill_once_joined(clients: Process) -> None:
        clients.wait_for_output(r"JOINED ", PHASE_TIMEOUT + 5)
        killed_at.append(time.time())
        victim.kill()

    messages = 3
    args = ("--clients", "60", "--messages", str(messages), "--victim", "chat-a")
    result = run_clients(processes, "failover", port, *args, started=kill_once_joined)

    assert_delivered(result, messages, relay)
    clients = result["clients"]
    victims = [client for client in clients if client["servers"][0] == "chat-a"]
    others = [client for client in clients if client["servers"][0] == "chat-b"]
    assert len(victims) == len(others) == 30
    assert all(client["servers"] == ["chat-a", "chat-b"] for client in victims)
    assert all(client["servers"] == ["chat-b"] and not client["closes"] for client in others)
    assert all(len(client["closes"]) == 1 for client in victims)
    code, reason = CLOSE[mode]
    assert {client["closes"][0]["code"] for client in victims} == {code}
    if reason is not None:
        assert {client["closes"][0]["reason"] for client in victims} == {reason}
    latest = max(client["closes"][0]["time"] for client in victims)
    assert latest - killed_at[0] < CLOSE_WITHIN
    relay.wait_for_state(victim.address, "chat", "DOWN", timeout=5)

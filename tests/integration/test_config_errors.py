"""Bad configuration and start-up failures: one clear line naming the place, never a traceback."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from .harness import PROXYD_CLI, free_port, twistd_argv

pytestmark = pytest.mark.integration

GOOD = """\
[proxyd]
access_log = off

[pool db]
servers =
    127.0.0.1:3306
    127.0.0.1:3307 backup
balance = round_robin
check = mysql
check_interval = 2s

[tcp mysql]
listen = tcp:{port}:interface=127.0.0.1
pool = db
connect_timeout = 5s
"""

# (what is wrong, text to replace in GOOD, replacement, line, section, key, also expected)
BAD = [
    (
        "unknown key",
        "balance = round_robin",
        "balence = round_robin",
        8,
        "pool db",
        "balence",
        "balance",
    ),
    (
        "bad choice",
        "balance = round_robin",
        "balance = round_robbin",
        8,
        "pool db",
        "balance",
        "round_robbin",
    ),
    (
        "bad duration",
        "check_interval = 2s",
        "check_interval = 2 parsecs",
        10,
        "pool db",
        "check_interval",
        "parsecs",
    ),
    (
        "bad server option on a continuation line",
        "3307 backup",
        "3307 bakcup",
        7,
        "pool db",
        "servers",
        "bakcup",
    ),
    ("unknown pool", "pool = db\n", "pool = dbb\n", 14, "tcp mysql", "pool", "dbb"),
    ("unknown section kind", "[tcp mysql]", "[tpc mysql]", 12, "tpc mysql", None, None),
]


def write(tmp_path: Path, text: str, name: str = "proxyd.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def error_line(output: str, path: Path, line: int) -> str:
    """The one output line that names `path:line` (by its file name: relative or absolute)."""
    place = re.compile(rf"{re.escape(path.name)}:{line}\b")
    lines = [text for text in output.splitlines() if place.search(text)]
    assert lines, f"no line names {path.name}:{line}:\n{output}"
    return lines[0]


def assert_names_the_place(text: str, section: str, key: str | None, extra: str | None) -> None:
    assert f"[{section}]" in text, text
    if key is not None:
        assert re.search(rf"\b{re.escape(key)}\b", text), text
    if extra is not None:
        assert extra in text, text


@pytest.mark.timeout(60)
def test_check_accepts_a_good_file(tmp_path):
    path = write(tmp_path, GOOD.format(port=free_port()))
    result = run([str(PROXYD_CLI), "check", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("old", "new", "line", "section", "key", "extra"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_check_names_file_line_section_and_key(tmp_path, old, new, line, section, key, extra):
    good = GOOD.format(port=free_port())
    assert old in good
    path = write(tmp_path, good.replace(old, new, 1))
    result = run([str(PROXYD_CLI), "check", str(path)])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert_names_the_place(error_line(output, path, line), section, key, extra)


@pytest.mark.timeout(60)
def test_twistd_refuses_a_bad_file_in_one_line(tmp_path):
    good = GOOD.format(port=free_port())
    path = write(tmp_path, good.replace("balance = round_robin", "balence = round_robin"))
    result = run(twistd_argv(path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert_names_the_place(error_line(output, path, 8), "pool db", "balence", None)


@pytest.mark.timeout(60)
def test_twistd_exits_with_one_clear_line_when_the_port_is_taken(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        path = write(tmp_path, GOOD.format(port=port))
        result = run(twistd_argv(path))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    lines = [text for text in output.splitlines() if str(port) in text]
    assert lines, f"nothing names port {port}:\n{output}"
    assert any(re.search(r"(?i)in use", text) for text in lines), output


NO_LISTENER = "1: expected at least one listener section ([http NAME], [https NAME], [tcp NAME]"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "the file is empty"),
        ("; proxyd.ini\n; cut short here\n", "the file holds only comments"),
        (
            "[proxyd]\naccess_log = off\n\n[admin]\nlisten = tcp:{port}:interface=127.0.0.1\n",
            "the file's sections: [proxyd], [admin]; the admin listener serves no traffic",
        ),
    ],
    ids=["empty", "comments", "admin-only"],
)
def test_check_and_twistd_refuse_a_file_with_no_listener(tmp_path, text, hint):
    path = write(tmp_path, text.format(port=free_port()))
    for argv in ([str(PROXYD_CLI), "check", str(path)], twistd_argv(path)):
        result = run(argv)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "Traceback" not in output
        line = error_line(output, path, 1)
        assert f"{path.name}:{NO_LISTENER}" in line and line.endswith(f"found none ({hint})")
    assert output.splitlines()[-1] == "proxyd: configuration invalid, not starting"

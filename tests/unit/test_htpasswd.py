"""proxyd.auth.htpasswd: files made by Debian's `htpasswd` (apache2-utils) for each scheme,
every refusal with its file and line and without the hash, and unknown users checked as
slowly as known ones."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import argon2
import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.auth.htpasswd import UserTable, load_htpasswd, parse_htpasswd
from proxyd.config.errors import ConfigError, ConfigErrors


def fast_argon2(kind: argon2.Type = argon2.Type.ID) -> argon2.PasswordHasher:
    """An argon2 hasher at the lowest cost, as a test can afford."""
    return argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, type=kind)


def htpasswd(flags: str, user: str = "alice", password: str = "s3cret") -> str:
    """The line `htpasswd -nb<flags>` prints for `user` (bcrypt at the lowest cost: -C 4)."""
    argv = ["htpasswd", f"-nb{flags}", *(["-C", "4"] if "B" in flags else []), user, password]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "users.htpasswd"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def refused(data: bytes, path: str = "users.htpasswd") -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as raised:
        parse_htpasswd(data, path)
    return list(raised.value.errors)


def only_error(data: bytes) -> ConfigError:
    errors = refused(data)
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    "flags",
    ["B", "m", "s", "2", "5"],
    ids=["bcrypt", "apr1", "sha1", "sha256-crypt", "sha512-crypt"],
)
def test_a_file_made_by_htpasswd_verifies_the_right_password_only(
    tmp_path: Path, flags: str
) -> None:
    table = load_htpasswd(write(tmp_path, htpasswd(flags)))
    assert table.verify("alice", b"s3cret")
    assert not table.verify("alice", b"s3cret ")
    assert not table.verify("alice", b"")


@pytest.mark.parametrize("kind", [argon2.Type.ID, argon2.Type.I], ids=["argon2id", "argon2i"])
def test_argon2_hashes_verify_the_right_password_only(kind: argon2.Type) -> None:
    encoded = fast_argon2(kind).hash("s3cret")
    table = parse_htpasswd(f"alice:{encoded}\n".encode(), "users")
    assert table.verify("alice", b"s3cret")
    assert not table.verify("alice", b"s3cre")


@pytest.mark.parametrize("prefix", [b"$2a$", b"$2b$", b"$2y$"])
def test_every_bcrypt_prefix_apache_writes_verifies(prefix: bytes) -> None:
    encoded = prefix + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))[4:]
    table = parse_htpasswd(b"alice:" + encoded, "users")
    assert table.verify("alice", b"s3cret")
    assert not table.verify("alice", b"secret")


def test_a_bcrypt_password_is_read_up_to_72_bytes_as_apache_reads_it(tmp_path: Path) -> None:
    table = load_htpasswd(write(tmp_path, htpasswd("B", password="a" * 80)))
    assert table.verify("alice", b"a" * 80)
    assert table.verify("alice", b"a" * 72 + b"whatever follows")
    assert not table.verify("alice", b"a" * 71)


def test_comments_blank_lines_and_crlf_are_skipped() -> None:
    line = htpasswd("s").encode()
    table = parse_htpasswd(b"# users\r\n\r\n   \r\n" + line + b"\r\n#bob:x\r\n", "users")
    assert len(table) == 1
    assert "alice" in table
    assert "#bob" not in table
    assert table.verify("alice", b"s3cret")


def test_what_follows_a_second_colon_is_ignored_as_apache_does() -> None:
    table = parse_htpasswd(htpasswd("s").encode() + b":Alice Liddell", "users")
    assert table.verify("alice", b"s3cret")


def test_weak_schemes_load_with_a_warning_for_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# weak ones first",
        htpasswd("m", "bob"),
        htpasswd("s", "carol"),
        htpasswd("B", "dave"),
        htpasswd("5", "eve"),
    )
    table = load_htpasswd(path)
    assert len(table) == 4
    assert [line for line, _ in table.warnings] == [2, 3]
    (_, apr1), (_, sha1) = table.warnings
    assert "'bob'" in apr1
    assert "APR1-MD5" in apr1
    assert "'carol'" in sha1
    assert "SHA-1" in sha1
    assert "htpasswd -B" in sha1


def test_an_unreadable_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.htpasswd")
    with pytest.raises(ConfigErrors) as raised:
        load_htpasswd(path)
    (error,) = raised.value.errors
    assert (error.path, error.line, error.expected) == (path, None, "a readable htpasswd file")
    assert error.found == "No such file or directory"
    assert str(error).startswith(f"{path}: expected a readable htpasswd file")


def test_a_directory_is_refused_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_htpasswd(str(tmp_path))
    assert raised.value.errors[0].expected == "a readable htpasswd file"


def test_a_crypt_des_hash_is_refused_without_showing_it() -> None:
    line = htpasswd("d")
    error = only_error(f"# comment\n{line}\n".encode())
    assert error.line == 2
    assert "crypt(3) DES" in error.found
    assert "'alice'" in error.found
    assert line.split(":")[1] not in str(error)


def test_a_plain_text_password_is_refused_without_showing_it() -> None:
    error = only_error(b"alice:hunter2-correct-horse\n")
    assert error.line == 1
    assert "plain-text" in error.found
    assert "hunter2" not in str(error)
    assert "htpasswd -B" in str(error)


@pytest.mark.parametrize(
    ("encoded", "found"),
    [
        ("$1$saltsalt$" + "x" * 22, "MD5-crypt ('$1$…'), which proxyd refuses"),
        ("$y$j9T$salt$" + "x" * 43, "yescrypt ('$y$…')"),
        ("$2x$05$" + "x" * 53, "the 8-bit bug"),
        ("{SSHA}" + "x" * 32, "an unknown scheme '{SSHA}…'"),
        ("$pbkdf2$" + "x" * 40, "an unknown scheme '$pbkdf2$…'"),
        ("", "an empty hash"),
    ],
)
def test_a_scheme_proxyd_does_not_verify_is_refused_by_name(encoded: str, found: str) -> None:
    error = only_error(f"alice:{encoded}".encode())
    assert error.line == 1
    assert found in error.found
    assert error.expected.startswith("a hash made by `htpasswd -B`")
    if encoded:
        assert encoded not in str(error)


@pytest.mark.parametrize(
    ("flags", "damage", "scheme"),
    [
        ("B", lambda h: h[:-5], "a well-formed bcrypt hash"),
        ("B", lambda h: h.replace("$04$", "$03$"), "a well-formed bcrypt hash"),
        ("m", lambda h: h + "x", "a well-formed APR1-MD5 hash"),
        ("s", lambda h: h[:-2], "a well-formed SHA-1 hash"),
        ("5", lambda h: h[:-1], "a well-formed SHA-512-crypt hash"),
        ("2", lambda h: h.replace("$5$", "$5$rounds=10$"), "a well-formed SHA-256-crypt hash"),
    ],
    ids=["bcrypt-short", "bcrypt-cost", "apr1-long", "sha1-short", "sha512-short", "rounds"],
)
def test_a_malformed_hash_of_a_known_scheme_is_refused_showing_only_its_prefix(
    flags: str, damage: Callable[[str], str], scheme: str
) -> None:
    user, encoded = htpasswd(flags).split(":")
    damaged = damage(encoded)
    error = only_error(f"{user}:{damaged}".encode())
    assert error.expected.startswith(scheme)
    assert error.found.startswith("user 'alice' with '")
    assert "…' of " in error.found
    assert damaged not in str(error)
    assert damaged[8:20] not in str(error)


@pytest.mark.parametrize(
    "damage",
    [lambda h: h.replace("m=64", "m=lots"), lambda h: h[:-3] + "!!!"],
    ids=["parameters", "hash"],
)
def test_a_malformed_argon2_hash_is_refused(damage: Callable[[str], str]) -> None:
    encoded = fast_argon2().hash("s3cret")
    error = only_error(f"alice:{damage(encoded)}".encode())
    assert error.expected.startswith("a well-formed argon2 hash")
    assert error.found.startswith("user 'alice' with '$argon2id$…' of ")


@pytest.mark.parametrize(
    ("line", "expected", "found"),
    [
        (b"alice $2y$05$abc", "'user:hash'", "a line of 16 characters without ':'"),
        (b":{SHA}abc", "a user name of printable characters before ':'", "''"),
        (b"alice :{SHA}abc", "a user name of printable characters before ':'", "'alice '"),
        (b"al\x01ice:{SHA}abc", "a user name of printable characters before ':'", "'al\\x01ice'"),
        (b"al\xe9ice:{SHA}abc", "UTF-8 text", "bytes that are not UTF-8"),
    ],
)
def test_a_malformed_line_is_refused(line: bytes, expected: str, found: str) -> None:
    error = only_error(b"# users\n" + line + b"\n")
    assert (error.line, error.expected, error.found) == (2, expected, found)


def test_a_line_without_colon_does_not_show_its_text() -> None:
    error = only_error(b"alice hunter2\n")
    assert "hunter2" not in str(error)


def test_a_user_named_twice_is_refused_naming_both_lines() -> None:
    first, second = htpasswd("s"), htpasswd("m")
    error = only_error(f"{first}\n\n{second}\n".encode())
    assert (error.line, error.expected) == (3, "each user once")
    assert error.found == "'alice' again (first on line 1)"


def test_every_bad_line_is_reported_at_once_with_the_file_and_line() -> None:
    data = b"alice:plain\nbob:{SHA}abc\ncarol:" + htpasswd("s").split(":")[1].encode() + b"\n"
    errors = refused(data, "etc/users.htpasswd")
    assert [(e.path, e.line) for e in errors] == [
        ("etc/users.htpasswd", 1),
        ("etc/users.htpasswd", 2),
    ]
    assert str(errors[0]).startswith("etc/users.htpasswd:1: expected a hash made by")


def test_an_unknown_user_is_refused_even_with_a_known_users_password(tmp_path: Path) -> None:
    for flags in ("B", "m", "s", "5"):
        table = load_htpasswd(write(tmp_path, htpasswd(flags)))
        assert not table.verify("mallory", b"s3cret")
        assert not table.verify("Alice", b"s3cret")


def test_an_empty_table_refuses_everyone() -> None:
    table = parse_htpasswd(b"# nobody yet\n", "users")
    assert len(table) == 0
    assert not table.verify("alice", b"s3cret")


def test_an_unknown_user_costs_a_bcrypt_check_at_the_tables_common_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [htpasswd("B", "alice"), htpasswd("B", "bob"), htpasswd("m", "carol")]
    lines[0] = lines[0].replace("$04$", "$06$", 1)
    lines[1] = lines[1].replace("$04$", "$06$", 1)
    table = parse_htpasswd("\n".join(lines).encode(), "users")
    checked: list[bytes] = []
    checkpw = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    assert not table.verify("mallory", b"s3cret")
    (dummy,) = checked
    assert dummy.startswith(b"$2y$06$")
    assert len(dummy) == 60
    assert dummy.decode() not in (line.split(":")[1] for line in lines)


def test_an_unknown_user_in_an_argon2_table_costs_an_argon2_check_with_its_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded = fast_argon2().hash("s3cret")
    table = parse_htpasswd(f"alice:{encoded}".encode(), "users")
    checked: list[str] = []
    verify = argon2.PasswordHasher.verify

    def spy(self: argon2.PasswordHasher, hash: str, password: bytes) -> bool:
        checked.append(hash)
        return verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    assert not table.verify("mallory", b"s3cret")
    (dummy,) = checked
    assert argon2.extract_parameters(dummy) == argon2.extract_parameters(encoded)
    assert dummy != encoded


def test_reprs_show_neither_hashes_nor_passwords(tmp_path: Path) -> None:
    line = htpasswd("B")
    table = load_htpasswd(write(tmp_path, line))
    assert repr(table) == f"<UserTable {tmp_path / 'users.htpasswd'}: 1 users>"
    assert line.split(":")[1][7:] not in repr(table)


@given(st.binary(max_size=300))
def test_any_bytes_load_as_a_table_or_give_config_errors(data: bytes) -> None:
    try:
        table = parse_htpasswd(data, "users")
    except ConfigErrors as e:
        assert e.errors
        assert all(error.line for error in e.errors)
    else:
        assert isinstance(table, UserTable)

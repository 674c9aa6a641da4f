"""An [acme] section's files: its account key, its certificate and key, and the answers to
pending challenges (so that any worker process can give them). Every file is 0600 in a 0700
directory, and written whole (a temporary file renamed), so that a reader sees the old
version or the new one, never half of one:

    STORAGE/account.key                 the ACME account's private key (PEM)
    STORAGE/account.json                the account's URL at the directory
    STORAGE/certificate.pem             the certificate, then its chain (PEM)
    STORAGE/certificate.key             the certificate's private key (PEM)
    STORAGE/http-01/TOKEN               a pending http-01 answer (the key authorization)
    STORAGE/tls-alpn-01/NAME.pem        a pending tls-alpn-01 certificate and its key
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxyd.config.model import Certificate
from proxyd.config.tls import load_pair

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
"""RFC 8555 8.3: a token is base64url, without padding."""
_NAME = re.compile(r"^[a-z0-9._-]{1,253}$")


class Storage:
    """The files of one [acme] section under `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def ensure(self) -> None:
        """Make the directories (0700); raises OSError if that cannot be done."""
        for sub in ("", "http-01", "tls-alpn-01"):
            path = self._file(sub) if sub else self.path
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)

    def write(self, data: bytes, *parts: str) -> None:
        """Write a file whole, 0600, replacing the old one at once."""
        path = self._file(*parts)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def read(self, *parts: str) -> bytes | None:
        try:
            with open(self._file(*parts), "rb") as f:
                return f.read(1 << 20)
        except FileNotFoundError:
            return None

    def remove(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(*parts))

    # The account.

    def account_key(self) -> Any:
        """The account's private key, made (P-256) and stored the first time."""
        pem = self.read("account.key")
        if pem is None:
            key = ec.generate_private_key(ec.SECP256R1())
            self.write(_private_pem(key), "account.key")
            return key
        return serialization.load_pem_private_key(pem, password=None)

    def account_url(self) -> str | None:
        data = self.read("account.json")
        if data is None:
            return None
        url = json.loads(data).get("url")
        return url if isinstance(url, str) else None

    def save_account_url(self, url: str) -> None:
        self.write(json.dumps({"url": url}).encode(), "account.json")

    # The certificate.

    def certificate(self) -> Certificate | None:
        """The stored certificate and key, or None if there are none (or they do not load:
        a new one is then ordered)."""
        path = self._file("certificate.pem")
        if not os.path.exists(path):
            return None
        try:
            return load_pair(path, self._file("certificate.key"), not_yet_valid=True)
        except Exception:
            return None

    def save_certificate(self, chain_pem: bytes, key: Any) -> None:
        """Store a new certificate: the key first, so that a certificate on disk always has
        its key beside it (a crash between the two leaves the old certificate with a key
        that does not match: it fails to load and a new one is ordered)."""
        x509.load_pem_x509_certificates(chain_pem)  # refuse to store what does not parse
        self.write(_private_pem(key), "certificate.key")
        self.write(chain_pem, "certificate.pem")

    # Pending challenges, for the worker processes.

    def put_http_token(self, token: str, answer: str) -> None:
        self.write(answer.encode("ascii"), "http-01", _checked(token, _TOKEN))

    def http_token(self, token: str) -> str | None:
        if not _TOKEN.match(token):
            return None
        data = self.read("http-01", token)
        return None if data is None else data.decode("ascii", "replace")

    def drop_http_token(self, token: str) -> None:
        self.remove("http-01", _checked(token, _TOKEN))

    def put_alpn_certificate(self, name: str, pem: bytes) -> None:
        self.write(pem, "tls-alpn-01", _checked(name, _NAME) + ".pem")

    def alpn_certificate(self, name: str) -> bytes | None:
        if not _NAME.match(name) or name.startswith("."):
            return None
        return self.read("tls-alpn-01", name + ".pem")

    def drop_alpn_certificate(self, name: str) -> None:
        self.remove("tls-alpn-01", _checked(name, _NAME) + ".pem")


def _checked(text: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(text) or text.startswith("."):
        raise ValueError(f"not a safe file name: {text!r}")
    return text


def _private_pem(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_pem(key: Any) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return _private_pem(key)

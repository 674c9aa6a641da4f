"""Parsers for the TLS values: certificate files and directories (read and checked here, at
load and again on SIGHUP), protocol versions, cipher lists, ALPN, HSTS."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from proxyd.config import values as v
from proxyd.config.errors import Invalid
from proxyd.config.model import TLS_PROTOCOLS, Certificate, CertificateSource

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_CERTIFICATE_SUFFIXES = (".pem", ".crt", ".cer")
_MAX_FILE = 1 << 20
"""Larger files are not certificates: refuse rather than read them."""


def sources(text: str, base_dir: str) -> tuple[CertificateSource, ...]:
    """`certificates`: lines of `PATH [key=KEYFILE]`; PATH is a PEM file or a directory,
    relative paths relative to `base_dir`. Every certificate must load (see load_all)."""
    result: list[CertificateSource] = []
    errors: list[Invalid] = []
    for index, line in v.each_line(text):
        try:
            parts = v.words(line, "a certificate line")
            if not parts:
                continue
            key = None
            if len(parts) == 2 and parts[1].startswith("key="):
                key = os.path.join(base_dir, parts[1][4:])
            elif len(parts) != 1:
                raise Invalid("PATH [key=KEYFILE], a PEM file or a directory", repr(line))
            source = CertificateSource(os.path.join(base_dir, parts[0]), key)
            if key is not None and os.path.isdir(source.path):
                raise Invalid("key= only after a certificate file", f"a directory {source.path!r}")
            result.append(source)
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not result:
        raise Invalid("PEM files or directories, one a line", "nothing")
    return tuple(result)


def load_all(
    found: tuple[CertificateSource, ...], refuse_expired: bool = False
) -> tuple[Certificate, ...]:
    """Read every certificate of `found`, in order (a directory's files by name). Raises
    Invalid (value_line: the source's index) or Invalids for what cannot be used."""
    result: list[Certificate] = []
    errors: list[Invalid] = []
    for index, source in enumerate(found):
        try:
            loaded = _load_source(source)
            for certificate in loaded:
                if refuse_expired and expired(certificate):
                    raise Invalid(
                        "certificates valid now (expired_certificates = refuse)",
                        f"{certificate.path!r} expired {certificate.not_after:%Y-%m-%d %H:%M} UTC",
                    )
            result.extend(loaded)
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    return tuple(result)


def _load_source(source: CertificateSource) -> list[Certificate]:
    if not os.path.isdir(source.path):
        return [load_pair(source.path, source.key)]
    try:
        names = sorted(os.listdir(source.path))
    except OSError as e:
        raise Invalid("a readable directory", f"{source.path!r} ({e.strerror or e})") from None
    loaded = []
    for name in names:
        path = os.path.join(source.path, name)
        if not name.endswith(_CERTIFICATE_SUFFIXES) or not os.path.isfile(path):
            continue
        if b"CERTIFICATE-----" not in _read(path):
            continue  # a key file kept beside its certificate
        loaded.append(load_pair(path, None))
    if not loaded:
        raise Invalid("a directory holding certificates (*.pem, *.crt)", f"none in {source.path!r}")
    return loaded


def load_pair(path: str, key_path: str | None, not_yet_valid: bool = False) -> Certificate:
    """The certificate (then its chain) in `path`, with its key from `key_path`, else from
    the same file, else from the file named like it with `.key`. A certificate not valid yet
    is refused unless `not_yet_valid` (an ACME certificate, whose CA's clock may be ahead)."""
    blocks = _blocks(path)
    chain = []
    for kind, pem in blocks:
        if kind == b"CERTIFICATE":
            try:
                chain.append(x509.load_pem_x509_certificate(pem))
            except ValueError as e:
                raise Invalid(
                    "PEM certificates", f"a broken certificate in {path!r} ({e})"
                ) from None
    if not chain:
        raise Invalid("a PEM certificate", f"none in {path!r}")
    if key_path is None:
        if any(kind.endswith(b"PRIVATE KEY") for kind, _ in blocks):
            key_path = path
        else:
            key_path = os.path.splitext(path)[0] + ".key"
            if not os.path.exists(key_path):
                raise Invalid(
                    "a private key in the certificate's file, beside it as NAME.key, or key=",
                    f"none for {path!r}",
                )
    key = _load_key(key_path, blocks if key_path == path else _blocks(key_path))
    leaf = chain[0]
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise Invalid(
            "the private key of the certificate",
            f"a key in {key_path!r} that does not match {path!r}",
        )
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_before_utc > now and not not_yet_valid:
        raise Invalid(
            "a certificate valid now",
            f"{path!r} not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        )
    return Certificate(path, key_path, tuple(chain), key, _names(leaf))


def client_certificate(text: str, base_dir: str) -> Certificate:
    """`tls_certificate = FILE [key=KEYFILE]`: one certificate for proxyd as a client."""
    found = sources(text, base_dir)
    if len(found) != 1:
        raise Invalid("one certificate file [key=KEYFILE]", f"{len(found)} lines")
    source = found[0]
    if os.path.isdir(source.path):
        raise Invalid("a certificate file", f"a directory {source.path!r}")
    return load_pair(source.path, source.key)


def expired(certificate: Certificate, now: datetime.datetime | None = None) -> bool:
    now = now or datetime.datetime.now(datetime.UTC)
    return certificate.not_after < now


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as e:
        raise Invalid("a readable file", f"{path!r} ({e.strerror or e})") from None
    if len(data) > _MAX_FILE:
        raise Invalid("a PEM file of at most 1 MiB", f"a larger file {path!r}")
    return data


def _blocks(path: str) -> list[tuple[bytes, bytes]]:
    data = _read(path)
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def _load_key(path: str, blocks: list[tuple[bytes, bytes]]) -> Any:
    pems = [pem for kind, pem in blocks if kind.endswith(b"PRIVATE KEY")]
    if not pems:
        raise Invalid("a PEM private key", f"none in {path!r}")
    if len(pems) > 1:
        raise Invalid("one private key", f"{len(pems)} in {path!r}")
    if b"ENCRYPTED" in pems[0]:
        raise Invalid("an unencrypted private key", f"an encrypted key in {path!r}")
    try:
        return serialization.load_pem_private_key(pems[0], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise Invalid("a PEM private key", f"a broken key in {path!r} ({e})") from None


def _public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def protocols(text: str) -> tuple[str, ...]:
    """`tls_protocols`: TLSv1.2 and/or TLSv1.3."""
    found = v.words(text, "TLS versions")
    if not found:
        raise Invalid("TLSv1.2, TLSv1.3 or both", "nothing")
    for word in found:
        if word in ("SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1"):
            raise Invalid(
                "TLSv1.2, TLSv1.3 or both", repr(word), "TLS 1.0 and 1.1 are obsolete (RFC 8996)"
            )
        if word not in TLS_PROTOCOLS:
            raise Invalid("TLSv1.2, TLSv1.3 or both", repr(word))
    return tuple(p for p in TLS_PROTOCOLS if p in found)


def _try_context(setting: Callable[[SSL.Context], None], what: str, text: str) -> str:
    try:
        setting(SSL.Context(SSL.TLS_METHOD))
    except SSL.Error:
        raise Invalid(what, repr(text), "OpenSSL matched no cipher") from None
    return text


def ciphers(text: str) -> str:
    """`tls_ciphers`: an OpenSSL cipher list for TLS 1.2, at least one cipher known."""
    text = text.strip()
    return _try_context(
        lambda ctx: ctx.set_cipher_list(text.encode("ascii", "replace")),
        "an OpenSSL cipher list such as ECDHE+AESGCM",
        text,
    )


def ciphersuites(text: str) -> str:
    """`tls_ciphersuites`: TLS 1.3 suites, colon separated (OpenSSL takes an empty list, which
    would fail every TLS 1.3 handshake)."""
    text = text.strip()
    if not text:
        raise Invalid(
            "TLS 1.3 cipher suites such as TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
            "nothing",
        )
    return _try_context(
        lambda ctx: ctx.set_tls13_ciphersuites(text.encode("ascii", "replace")),
        "TLS 1.3 cipher suites such as TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
        text,
    )


def ca_file(text: str, base_dir: str) -> str:
    """A CA bundle: a readable PEM file with at least one certificate."""
    path = os.path.join(base_dir, text.strip())
    if b"CERTIFICATE-----" not in _read(path):
        raise Invalid("a PEM file of CA certificates", f"no certificate in {path!r}")
    return path


_ALPN_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")


def alpn(text: str) -> tuple[str, ...]:
    """`tls_alpn`: protocol names such as `h2 http/1.1`, in preference order."""
    names = v.words(text, "ALPN protocol names")
    for name in names:
        if not _ALPN_NAME.match(name):
            raise Invalid("ALPN protocol names such as h2 http/1.1", repr(name))
    return tuple(names)


def hsts(text: str) -> str | None:
    """`hsts = off | DURATION [includeSubDomains] [preload]` -> the header value or None."""
    parts = v.words(text, "an HSTS setting")
    if parts == ["off"]:
        return None
    expected = "off, or a max-age such as 1y or 365d, then includeSubDomains and/or preload"
    if not parts:
        raise Invalid(expected, "nothing")
    age = parts[0]
    if age.endswith("y") and age[:-1].isdigit():
        seconds = int(age[:-1]) * 365 * 86400
    else:
        try:
            seconds = int(v.duration(age))
        except Invalid:
            raise Invalid(expected, repr(text)) from None
    value = f"max-age={seconds}"
    canonical = {"includesubdomains": "includeSubDomains", "preload": "preload"}
    seen: set[str] = set()
    for flag in parts[1:]:
        if flag.lower() not in canonical:
            raise Invalid(expected, repr(flag))
        if flag.lower() in seen:  # RFC 6797 6.1: each directive at most once
            raise Invalid(expected + ", each once", f"{canonical[flag.lower()]} twice")
        seen.add(flag.lower())
        value += "; " + canonical[flag.lower()]
    return value


def https_redirect(text: str) -> int | None:
    """`https_redirect = off | on | PORT`: redirect every request to https (443 for on)."""
    word = text.strip().lower()
    if word in ("off", "no", "false"):
        return None
    if word in ("on", "yes", "true"):
        return 443
    if not word.isdigit() or not 0 < int(word) < 65536:
        raise Invalid("off, on or a port from 1 to 65535", repr(text.strip()))
    return int(word)


def ocsp_responder(text: str) -> str:
    """`ocsp_responder`: the http:// URL of an OCSP responder (nginx's ssl_stapling_responder;
    https is not taken: checking the responder's certificate would need OCSP in turn)."""
    url = text.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname or any(c.isspace() for c in url):
        raise Invalid("an http:// URL such as http://ocsp.example.com/", repr(url))
    return url


def server_name(text: str) -> str:
    """`tls_server_name`: a DNS name or an IP address to send as SNI and verify."""
    name = text.strip()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not v.is_hostname(name):
        raise Invalid("a DNS name or an IP address", repr(name))
    return name.lower()

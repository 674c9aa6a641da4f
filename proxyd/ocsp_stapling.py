"""OCSP stapling for the TLS listeners: for each certificate served that names an OCSP
responder, a response fetched in the background, checked (proxyd.ocsp), kept in memory and
refreshed before it runs out, for the listeners' handshakes to staple (proxyd.tls.ServerTls).

One OcspStapling per process, for every config generation: a reload keeps the responses of
the certificates it still serves. With `workers` above 1 each worker fetches for itself (the
master serves no handshake): N small requests per certificate every few hours, in exchange
for no shared state. A handshake never waits for a fetch: before the first response arrives,
and while none is valid, it goes without a staple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd import ocsp
from proxyd.auth.fetch import Fetched, HttpClient
from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import Certificate, Config, TlsServerConfig

__all__ = ["OcspStapling", "Post", "StapleEntry", "tls_listeners"]

_log = Logger(namespace="proxyd.ocsp")

Post = Callable[[str, bytes], "Deferred[bytes]"]
"""POST an OCSP request (DER) to a responder's URL: the body of its 200 answer."""

CONNECT_TIMEOUT = 10.0
FETCH_TIMEOUT = 20.0
MAX_RESPONSE = 64 * 1024
"""OCSP responses are a few KiB; a larger answer is not one."""

Key = tuple[bytes, bytes, str]


def tls_listeners(config: Config) -> Iterable[TlsServerConfig]:
    """The TLS termination of every listener of `config` that has one."""
    for listener in (*config.http, *config.tcp, *config.websocket):
        tls = getattr(listener, "tls", None)
        if tls is not None:
            yield tls


class StapleEntry:
    """One certificate's staple: the response held, the next fetch, the failures in a row.

    Held → refresh (at ocsp.refresh_at) → held; a failed fetch retries with backoff
    (ocsp.retry_delay) and keeps the response held until it expires (ocsp.expires_at); a
    response that says revoked or unknown drops it at once."""

    def __init__(self, reactor: Clock, target: ocsp.Target, post: Post) -> None:
        self.reactor = reactor
        self.target = target
        self._post = post
        self.staple: ocsp.Staple | None = None
        self.failures = 0
        """Failed fetches since the last good one."""
        self.fetches = 0
        self.failed = 0
        """Counters: fetches made, and those that gave no stapleable response."""
        self._next: DelayedCall | None = None
        self._expiry: DelayedCall | None = None
        self._inflight: Deferred[bytes] | None = None

    @property
    def der(self) -> bytes:
        """The response to staple now, b"" for none."""
        return self.staple.der if self.staple is not None else b""

    def start(self) -> None:
        if self._next is None and self._inflight is None:
            self._fetch()

    def stop(self) -> None:
        for call in (self._next, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._next = self._expiry = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()

    def _fetch(self) -> None:
        self._next = None
        self.fetches += 1
        try:
            fetching = self._post(self.target.url, self.target.request())
        except Exception as e:  # a URL the Agent refuses, say
            self._failed(str(e) or type(e).__name__, revoked=False)
            return
        self._inflight = fetching
        fetching.addCallbacks(self._answered, self._not_answered)
        fetching.addErrback(lambda f: _log.failure("OCSP: unexpected error", f))

    def _answered(self, der: bytes) -> None:
        self._inflight = None
        now = self.reactor.seconds()
        try:
            staple = ocsp.check(der, self.target, now)
        except ocsp.OcspRevoked as e:
            self._drop()
            self._failed(str(e), revoked=True)
            return
        except ocsp.OcspError as e:
            self._failed(f"unusable response: {e}", revoked=False)
            return
        if self.failures:
            _log.info(
                "OCSP: {path}: a good response from {url} again after {failures} failed"
                " attempts; stapling it",
                path=self.target.path,
                url=self.target.url,
                failures=self.failures,
            )
        self.failures = 0
        self.staple = staple
        self._schedule(ocsp.refresh_at(staple, now) - now)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        until = max(0.0, ocsp.expires_at(staple) - now)
        self._expiry = self.reactor.callLater(until, self._expired)

    def _not_answered(self, reason: Failure) -> None:
        if self._inflight is None:
            return  # stopped: the cancellation's own failure
        self._inflight = None
        self._failed(reason.getErrorMessage() or repr(reason.value), revoked=False)

    def _failed(self, why: str, revoked: bool) -> None:
        self.failed += 1
        self.failures += 1
        delay = ocsp.retry_delay(self.failures)
        self._schedule(delay)
        if self.failures > 1:
            return  # said once per streak of failures
        held = "no staple" if self.staple is None else "the response held until it expires"
        note = (
            "; the certificate is must-staple: clients that honour it refuse it meanwhile"
            if self.staple is None and ocsp.must_staple(self.target.leaf)
            else ""
        )
        if revoked:
            _log.error(
                "OCSP: {path}: {why} (responder {url}); not stapled, asking again in {delay:.0f}s",
                path=self.target.path,
                why=why,
                url=self.target.url,
                delay=delay,
            )
            return
        _log.warn(
            "OCSP: {path}: no response from {url} ({why}); handshakes get {held}, retrying"
            " from {delay:.0f}s with backoff{note}",
            path=self.target.path,
            url=self.target.url,
            why=why,
            held=held,
            delay=delay,
            note=note,
        )

    def _schedule(self, delay: float) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self.reactor.callLater(delay, self._fetch)

    def _drop(self) -> None:
        self.staple = None
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        self.staple = None
        _log.warn(
            "OCSP: {path}: the response held has expired and {url} gave no new one;"
            " handshakes go without a staple",
            path=self.target.path,
            url=self.target.url,
        )


class OcspStapling:
    """The staples of every certificate the TLS listeners serve, kept fresh while started.

    `serve(config)` says which certificates those are (at start and at each reload);
    `staple(key)` is what a handshake staples. `post` replaces the HTTP client (tests)."""

    def __init__(self, reactor: Any, post: Post | None = None) -> None:
        self.reactor = reactor
        self._client: HttpClient | None = None
        self.post: Post = post or self._http_post
        """How requests are sent: the entries call it when they fetch."""
        self.entries: dict[Key, StapleEntry] = {}
        self.running = False

    def key_of(self, certificate: Certificate, tls: TlsServerConfig) -> Key | None:
        """The key a ServerTls staples `certificate` by, None when it is not stapled (its
        listener has ocsp_stapling off, or the certificate names no responder)."""
        found = self._target(certificate, tls, quiet=True)
        return found.key if found is not None else None

    def staple(self, key: Key) -> bytes:
        """The DER response to staple for `key` now; b"" for none (nothing fetched yet, the
        responder down, the response expired)."""
        entry = self.entries.get(key)
        return entry.der if entry is not None else b""

    def serve(self, config: Config) -> None:
        """Keep fresh the staples of `config`'s certificates: new ones are fetched (once
        started), those no longer served are forgotten, the others keep theirs."""
        wanted: dict[Key, ocsp.Target] = {}
        for tls in tls_listeners(config):
            for certificate in tls.loaded:
                found = self._target(certificate, tls, quiet=False)
                if found is not None:
                    wanted.setdefault(found.key, found)
        for key in [key for key in self.entries if key not in wanted]:
            self.entries.pop(key).stop()
        for key, found in wanted.items():
            if key not in self.entries:
                entry = self.entries[key] = StapleEntry(self.reactor, found, self._send)
                if self.running:
                    entry.start()

    def start(self) -> None:
        self.running = True
        for entry in self.entries.values():
            entry.start()

    def stop(self) -> None:
        self.running = False
        for entry in self.entries.values():
            entry.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def figures(self) -> dict[str, int]:
        """Counters for the metrics: certificates watched and stapled now, fetches made and
        failed."""
        entries = list(self.entries.values())
        return {
            "certificates": len(entries),
            "stapled": sum(1 for entry in entries if entry.staple is not None),
            "fetches": sum(entry.fetches for entry in entries),
            "failed": sum(entry.failed for entry in entries),
        }

    def _target(
        self, certificate: Certificate, tls: TlsServerConfig, quiet: bool
    ) -> ocsp.Target | None:
        if not tls.ocsp_stapling:
            return None
        try:
            return ocsp.target(certificate, tls.ocsp_responder)
        except ocsp.OcspError as e:
            if not quiet:
                _log.warn(
                    "OCSP: {path} names a responder but is not stapled: {why}",
                    path=certificate.path,
                    why=str(e),
                )
            return None

    def _send(self, url: str, body: bytes) -> Deferred[bytes]:
        return self.post(url, body)

    def _http_post(self, url: str, body: bytes) -> Deferred[bytes]:
        if self._client is None:
            self._client = HttpClient(self.reactor, connect_timeout=CONNECT_TIMEOUT)

        def body_of(fetched: Fetched) -> bytes:
            if fetched.status != 200:
                raise ocsp.OcspError(f"status {fetched.status}")
            if fetched.body is None:
                raise ocsp.OcspError(f"an answer over {MAX_RESPONSE} bytes")
            return fetched.body

        return self._client.post(
            url,
            body,
            [(b"Content-Type", b"application/ocsp-request")],
            timeout=FETCH_TIMEOUT,
            max_body=MAX_RESPONSE,
        ).addCallback(body_of)

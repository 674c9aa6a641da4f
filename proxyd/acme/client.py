"""The ACME conversation (RFC 8555) of one order, blocking: it runs in a thread of the
service's own small pool, never on the reactor's thread.

Library: certbot's `acme` package (with `josepy` for the JWS). It is the most used and
maintained ACME client library in Python, follows the CAs' changes (ARI, profiles, Let's
Encrypt's deprecations) in step with certbot, and its blocking `requests` calls are kept
off the reactor by running a whole order in a thread; a treq client of our own would have
had to re-implement the nonce handling, JWS signing and error types it already gets right.

The challenge answers are set and cleared on the reactor's thread (through `on_reactor`),
where the listeners read them.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import josepy
from acme import challenges, crypto_util, errors, messages
from acme import client as acme_client
from cryptography.hazmat.primitives.asymmetric import ec

from proxyd.acme.storage import Storage, private_pem
from proxyd.config.acme_model import AcmeConfig

USER_AGENT = "proxyd-acme"
NETWORK_TIMEOUT = 30
"""Seconds for each HTTP request to the directory."""
ORDER_TIMEOUT = 90.0
"""Seconds an order may take from its challenges' answers to its certificate."""


class Stopped(Exception):
    """proxyd is stopping: the order was given up."""


@attrs.frozen
class Issued:
    chain_pem: bytes
    key: Any


@attrs.frozen
class ChallengeHooks:
    """How the order sets its answers where the listeners find them (each call runs on the
    reactor's thread and returns when done)."""

    add_http: Callable[[str, str], None]
    add_alpn: Callable[[str, str], None]
    clear: Callable[[], None]


def obtain(
    config: AcmeConfig,
    storage: Storage,
    hooks: ChallengeHooks,
    stopping: threading.Event,
) -> Issued:
    """Order a certificate for `config.names` and return it with its new key. Raises
    acme.errors.Error (and requests' errors) when the CA says no or cannot be reached,
    Stopped when `stopping` is set."""
    account_key = josepy.JWKEC(key=storage.account_key())
    net = acme_client.ClientNetwork(
        account_key,
        alg=josepy.ES256,
        verify_ssl=config.ca or True,  # type: ignore[arg-type]  # requests takes a path too
        user_agent=USER_AGENT,
        timeout=NETWORK_TIMEOUT,
    )
    directory = acme_client.ClientV2.get_directory(config.directory, net)
    client = acme_client.ClientV2(directory, net)
    _account(client, account_key, storage, config)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = crypto_util.make_csr(private_pem(key), list(config.names))
    order = client.new_order(csr)
    try:
        pending = []
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # the CA remembers an earlier validation of this name
            challenge = _pick(authorization, config.challenges)
            name = authorization.body.identifier.value
            token = _token(challenge)
            answer = key_authorization(token, account_key)
            if _type(challenge) == "http-01":
                hooks.add_http(token, answer)
            else:
                hooks.add_alpn(name, answer)
            pending.append((authorization, challenge))
        for _, challenge in pending:
            client.answer_challenge(challenge, cast(challenges.ChallengeResponse, _Ready()))
        deadline = time.monotonic() + ORDER_TIMEOUT
        for authorization, _ in pending:
            _wait_valid(client, authorization, deadline, stopping)
        order = client.begin_finalization(order)
        order = client.poll_finalization(
            order, datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        )
    finally:
        hooks.clear()
    assert order.fullchain_pem is not None
    return Issued(order.fullchain_pem.encode("ascii"), key)


def _account(
    client: acme_client.ClientV2, account_key: josepy.JWK, storage: Storage, config: AcmeConfig
) -> None:
    """Use the stored account, or register the account key (a CA that knows the key answers
    with the account's URL), with the external account binding if one is configured: a
    stored account is used without it."""
    url = storage.account_url()
    if url is None:
        registration = messages.NewRegistration.from_data(terms_of_service_agreed=True)
        if config.contact:
            registration = registration.update(contact=config.contact)
        if config.eab_kid is not None and config.eab_hmac_key is not None:
            # RFC 8555 7.3.4: a JWS of the account's public key, MACed with the CA's key.
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=account_key.public_key(),
                kid=config.eab_kid,
                hmac_key=config.eab_hmac_key,
                directory=client.directory,
            )
            registration = registration.update(external_account_binding=binding)
        try:
            url = client.new_account(registration).uri
        except errors.ConflictError as e:
            url = e.location
        assert url is not None
        storage.save_account_url(url)
    client.net.account = messages.RegistrationResource(uri=url, body=messages.Registration())


class _Ready(josepy.JSONDeSerializable):
    """A challenge's response: an empty object (RFC 8555 7.5.1), the answer being ready."""

    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> _Ready:
        return cls()


def _type(challenge: messages.ChallengeBody) -> str:
    """A challenge's type; the `acme` package no longer parses tls-alpn-01 (certbot dropped
    it), so that one is read from the JSON of an UnrecognizedChallenge."""
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(chall.typ)


def _token(challenge: messages.ChallengeBody) -> str:
    chall = challenge.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        token = chall.jobj.get("token")
        if not isinstance(token, str):
            raise errors.Error(f"a {_type(challenge)} challenge without a token")
        return token
    return str(chall.encode("token"))  # type: ignore[attr-defined]


def key_authorization(token: str, account_key: josepy.JWK) -> str:
    """RFC 8555 8.1: the token, a dot, and the account key's JWK thumbprint (RFC 7638)."""
    return token + "." + josepy.b64encode(account_key.thumbprint()).decode("ascii")


def _pick(authorization: messages.AuthorizationResource, wanted: tuple[str, ...]) -> Any:
    offered = {_type(c): c for c in authorization.body.challenges}
    for kind in wanted:
        if kind in offered:
            return offered[kind]
    raise errors.Error(
        f"the CA offers {', '.join(sorted(offered))} for "
        f"{authorization.body.identifier.value}, none of {', '.join(wanted)}"
    )


def _wait_valid(
    client: acme_client.ClientV2,
    authorization: messages.AuthorizationResource,
    deadline: float,
    stopping: threading.Event,
) -> None:
    """Poll an authorization until it is valid (raising if invalid or past the deadline)."""
    wait = 0.5
    while True:
        authorization, response = client.poll(authorization)
        status = authorization.body.status
        if status == messages.STATUS_VALID:
            return
        if status == messages.STATUS_INVALID:
            problems = [c.error for c in authorization.body.challenges if c.error is not None]
            detail = "; ".join(str(p.detail or p.typ) for p in problems) or "invalid"
            raise errors.Error(f"{authorization.body.identifier.value}: {detail}")
        if time.monotonic() > deadline:
            raise errors.Error(f"{authorization.body.identifier.value}: not valid in time")
        after = response.headers.get("Retry-After", "")
        pause = min(float(after), 10.0) if after.isdigit() else wait
        if stopping.wait(pause):
            raise Stopped()
        wait = min(wait * 2, 5.0)

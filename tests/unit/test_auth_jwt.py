"""JWT bearer authentication: tokens signed here with RS256, ES256 and EdDSA keys, checked on a
task.Clock, against PEM keys and a JWKS whose fetches the tests answer; every refusal path,
the RFC 6750 answers, and the config-time validators."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import NameOID
from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeySet, OctKey, OKPKey, RSAKey
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from proxyd.auth.jwks import Jwks
from proxyd.auth.jwt import (
    ALGORITHMS,
    MAX_TOKEN_SIZE,
    REASONS,
    JwtAuth,
    load_pem_keys,
    validate_algorithms,
)
from proxyd.auth.result import Decision, Denied, Granted
from proxyd.config.errors import Invalid

NOW = 1_700_000_000
ISSUER = "https://idp.test/"
AUDIENCE = "proxyd"
LEEWAY = 30.0
CLAIMS = (("email", b"X-Auth-Email"), ("groups", b"X-Auth-Groups"))

RSA_1 = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
RSA_2 = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
EC_1 = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED_1 = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})

Signer = RSAKey | ECKey | OKPKey | OctKey


def public(*keys: Signer) -> KeySet:
    return KeySet([type(key).import_key(key.as_dict(private=False)) for key in keys])


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "nbf": NOW - 10,
        "email": "alice@example.com",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(
    key: Signer, alg: str = "RS256", payload: dict[str, Any] | None = None, **header: Any
) -> bytes:
    header = {"alg": alg, "kid": key.kid, **header}
    header = {name: value for name, value in header.items() if value is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # EdDSA, deprecated by RFC 9864
        token = jwt.encode(header, claims() if payload is None else payload, key, [alg])
    return token.encode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"sig") -> bytes:
    """A token with any header, payload and signature bytes."""
    head = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    return head + b"." + b64(signature)


def bearer(token: bytes) -> bytes:
    return b"Bearer " + token


def make_clock(at: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(at)
    return clock


def make_auth(keys: KeySet | Jwks | None = None, **options: Any) -> JwtAuth:
    settings: dict[str, Any] = {
        "algorithms": ("RS256", "ES256", "EdDSA"),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway": LEEWAY,
        "clock": make_clock(),
        "claims": CLAIMS,
        "realm": "api",
    }
    settings.update(options)
    return JwtAuth(public(RSA_1, EC_1, ED_1) if keys is None else keys, **settings)


def decide(auth: JwtAuth, authorization: bytes | None) -> Decision:
    decision = auth.check(authorization)
    assert not isinstance(decision, Deferred)
    return decision


def reason(auth: JwtAuth, authorization: bytes | None) -> str:
    decision = decide(auth, authorization)
    assert isinstance(decision, Denied), decision
    return decision.reason


def challenge(decision: Decision) -> bytes:
    assert isinstance(decision, Denied)
    ((name, value),) = decision.fields
    assert name == b"WWW-Authenticate"
    return value


# granted


@pytest.mark.parametrize(("key", "alg"), [(RSA_1, "RS256"), (EC_1, "ES256"), (ED_1, "EdDSA")])
def test_a_valid_token_is_granted_with_its_subject_as_identity(key: Signer, alg: str) -> None:
    decision = decide(make_auth(), bearer(sign(key, alg)))
    assert decision == Granted("alice", ((b"X-Auth-Email", b"alice@example.com"),))


def test_the_scheme_is_case_insensitive_and_spaces_around_the_token_are_ignored() -> None:
    token = sign(RSA_1)
    assert isinstance(decide(make_auth(), b"bEaReR   " + token + b"  "), Granted)


def test_a_token_without_kid_is_checked_with_the_key_that_fits() -> None:
    token = sign(EC_1, "ES256", kid=None)
    assert b"kid" not in base64.urlsafe_b64decode(token.split(b".")[0] + b"==")
    assert isinstance(decide(make_auth(), bearer(token)), Granted)


def test_with_pem_keys_a_kid_naming_none_of_them_still_finds_the_key() -> None:
    # PEM keys are named by thumbprint: the issuer's own kid cannot match them.
    token = sign(RSA_1, kid="issuer-key-2024")
    assert isinstance(decide(make_auth(public(RSA_2, RSA_1)), bearer(token)), Granted)


def test_chosen_claims_go_upstream_lists_joined_and_numbers_rendered() -> None:
    auth = make_auth(
        claims=(
            ("groups", b"X-Groups"),
            ("level", b"X-Level"),
            ("ratio", b"X-Ratio"),
            ("admin", b"X-Admin"),
            ("absent", b"X-Absent"),
        )
    )
    payload = claims(groups=["dev", "ops", 7], level=3, ratio=0.5, admin=False)
    decision = decide(auth, bearer(sign(RSA_1, payload=payload)))
    assert decision == Granted(
        "alice",
        (
            (b"X-Groups", b"dev, ops, 7"),
            (b"X-Level", b"3"),
            (b"X-Ratio", b"0.5"),
            (b"X-Admin", b"false"),
        ),
    )


def test_claims_that_would_inject_fields_or_are_objects_are_left_out() -> None:
    auth = make_auth(
        claims=(
            ("email", b"X-Email"),
            ("crlf", b"X-Crlf"),
            ("lf_in_list", b"X-List"),
            ("object", b"X-Object"),
            ("nested", b"X-Nested"),
            ("nul", b"X-Nul"),
            ("tab", b"X-Tab"),
        )
    )
    payload = claims(
        crlf="bob\r\nX-Auth-User: admin",
        lf_in_list=["ok", "bad\nX-Admin: 1"],
        object={"role": "admin"},
        nested=["a", {"b": 1}],
        nul="a\x00b",
        tab="a\tb",
    )
    decision = decide(auth, bearer(sign(RSA_1, payload=payload)))
    assert decision == Granted("alice", ((b"X-Email", b"alice@example.com"), (b"X-Tab", b"a\tb")))


def test_non_ascii_claims_go_upstream_as_utf8() -> None:
    auth = make_auth(claims=(("name", b"X-Name"),))
    decision = decide(auth, bearer(sign(RSA_1, payload=claims(name="Zoë"))))
    assert decision == Granted("alice", ((b"X-Name", "Zoë".encode()),))


def test_another_identity_claim_is_used_and_a_number_rendered() -> None:
    auth = make_auth(identity_claim="uid", claims=())
    decision = decide(auth, bearer(sign(RSA_1, payload=claims(uid=1042))))
    assert decision == Granted("1042")


@pytest.mark.parametrize("subject", [None, "", True, ["alice"], {"id": 1}, "alice\r\nX-A: 1"])
def test_an_identity_claim_missing_empty_or_not_a_plain_value_is_refused(subject: Any) -> None:
    payload = claims(sub=subject)
    assert reason(make_auth(), bearer(sign(RSA_1, payload=payload))) == "bad_claim"


# answers (RFC 6750 3)


@pytest.mark.parametrize("authorization", [None, b"", b"Basic YWxpY2U6cHc=", b"Bearerish x.y.z"])
def test_without_bearer_credentials_the_challenge_has_no_error_code(
    authorization: bytes | None,
) -> None:
    decision = decide(make_auth(), authorization)
    assert decision == Denied(401, "missing", ((b"WWW-Authenticate", b'Bearer realm="api"'),))


def test_a_bad_token_gets_invalid_token_and_a_fixed_description() -> None:
    token = sign(RSA_1, payload=claims(exp=NOW - 100))
    assert challenge(decide(make_auth(), bearer(token))) == (
        b'Bearer realm="api", error="invalid_token", error_description="The token has expired"'
    )


def test_every_refusal_reason_has_a_short_fixed_description_and_status() -> None:
    auth = make_auth()
    for name, (status, description) in REASONS.items():
        denied = auth._denied[name]
        assert denied.status == status and denied.reason == name
        assert len(description) < 50 and '"' not in description and "\\" not in description
    assert REASONS["keys_unavailable"] == (503, "")


def test_the_description_never_echoes_the_token() -> None:
    token = forge({"alg": "RS256", "kid": "rsa-1"}, claims(sub="<script>"), b"x" * 64)
    value = challenge(decide(make_auth(), bearer(token)))
    assert token[:20] not in value and b"<script>" not in value
    assert value.endswith(b'error_description="The token\'s signature is invalid"')


def test_the_realm_is_quoted() -> None:
    auth = make_auth(realm='my "api" \\ zone')
    assert challenge(decide(auth, None)) == b'Bearer realm="my \\"api\\" \\\\ zone"'


# malformed


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"not-a-jwt",
        b"a.b",
        b"a.b.c.d.e",
        b"a b.c.d",
        b"abc.def.gh+/",
        forge({"alg": "RS256"}, {"sub": "x"}, b"")[:-1],
        b64(b"{not json") + b"." + b64(b"{}") + b"." + b64(b"sig"),
        forge(["alg"], {}),  # type: ignore[arg-type]
        forge({"alg": 256}, {}),
        forge({"alg": "RS256", "kid": 7}, {}),
        forge({"alg": "RS256", "b64": False, "crit": ["b64"]}, {}),
        forge({"alg": "RS256", "crit": ["exp"], "exp": 1}, {}),
        b64(json.dumps({"alg": "RS256"}).encode()) + b"." + b64(b"{}") + b".AB=",
    ],
)
def test_a_token_that_is_not_a_compact_jws_is_malformed(token: bytes) -> None:
    assert reason(make_auth(), bearer(token)) == "malformed"


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b'"alice"'])
def test_a_signed_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    head = b64(json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()) + b"." + b64(payload)
    signer = RSA_1.private_key
    assert isinstance(signer, rsa.RSAPrivateKey)
    token = head + b"." + b64(signer.sign(head, padding.PKCS1v15(), hashes.SHA256()))
    assert reason(make_auth(), bearer(token)) == "malformed"


def test_a_token_over_the_size_bound_is_malformed_before_its_signature_is_checked() -> None:
    auth = make_auth()
    base = len(sign(RSA_1, payload=claims(pad="")))
    fits = sign(RSA_1, payload=claims(pad="x" * ((MAX_TOKEN_SIZE - base) * 3 // 4)))
    assert len(fits) <= MAX_TOKEN_SIZE
    assert isinstance(decide(auth, bearer(fits)), Granted)
    too_long = sign(RSA_1, payload=claims(pad="x" * ((MAX_TOKEN_SIZE - base) * 3 // 4 + 3)))
    assert len(too_long) > MAX_TOKEN_SIZE
    assert reason(auth, bearer(too_long)) == "malformed"
    assert reason(auth, bearer(b"a" * 100_000 + b".b.c")) == "malformed"


# algorithms


def test_an_algorithm_not_configured_is_refused_even_with_a_valid_signature() -> None:
    auth = make_auth(algorithms=("RS256",))
    assert reason(auth, bearer(sign(RSA_1, "RS512"))) == "bad_algorithm"
    assert reason(auth, bearer(sign(EC_1, "ES256"))) == "bad_algorithm"


def test_the_rfc_9864_name_ed25519_is_accepted_when_configured() -> None:
    auth = make_auth(algorithms=("Ed25519",))
    assert isinstance(decide(auth, bearer(sign(ED_1, "Ed25519"))), Granted)
    assert reason(auth, bearer(sign(ED_1, "EdDSA"))) == "bad_algorithm"


def test_an_alg_none_token_is_refused() -> None:
    for name in ("none", "None", "NONE"):
        token = forge({"alg": name}, claims(), b"x")
        assert reason(make_auth(), bearer(token)) == "bad_algorithm"


def test_an_hs256_token_keyed_with_the_rsa_public_key_is_refused() -> None:
    # The algorithm confusion attack (RFC 8725 2.1): the public key, known to all, used as
    # the HMAC secret of a token whose header says HS256.
    pem = RSA_1.as_pem(private=False)
    head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    head += b"." + b64(json.dumps(claims(sub="admin")).encode())
    token = head + b"." + b64(hmac.new(pem, head, hashlib.sha256).digest())
    assert reason(make_auth(), bearer(token)) == "bad_algorithm"


def test_hmac_algorithms_cannot_be_configured_beside_public_keys() -> None:
    with pytest.raises(ValueError, match="algorithm confusion"):
        make_auth(algorithms=("RS256", "HS256"))
    jwks = Jwks("https://idp.test/jwks", lambda url: Deferred(), make_clock())
    with pytest.raises(ValueError, match="HS384 cannot be allowed beside public keys"):
        make_auth(jwks, algorithms=("HS384",))


def test_hmac_with_a_symmetric_key_set_works() -> None:
    secret = OctKey.import_key(b"0123456789abcdef0123456789abcdef", parameters={"kid": "s1"})
    auth = make_auth(KeySet([secret]), algorithms=("HS256",))
    assert isinstance(decide(auth, bearer(sign(secret, "HS256"))), Granted)
    assert reason(auth, bearer(sign(RSA_1))) == "bad_algorithm"


def test_a_key_is_used_only_with_an_algorithm_of_its_type() -> None:
    # The EC key named by kid, but the header claims RS256 (signed with the RSA key).
    token = sign(RSA_1, "RS256", kid="ec-1")
    auth = make_auth(public(EC_1, ED_1))
    assert reason(auth, bearer(token)) == "bad_algorithm"


def test_a_key_bound_to_an_algorithm_refuses_another() -> None:
    bound = RSAKey.import_key({**RSA_1.as_dict(private=False), "alg": "RS512"})
    auth = make_auth(KeySet([bound]), algorithms=("RS256", "RS512"))
    assert reason(auth, bearer(sign(RSA_1, "RS256"))) == "bad_algorithm"
    assert isinstance(decide(auth, bearer(sign(RSA_1, "RS512"))), Granted)


# signatures


def test_a_tampered_payload_has_a_bad_signature() -> None:
    head, _, signature = sign(RSA_1).split(b".")
    forged = head + b"." + b64(json.dumps(claims(sub="admin")).encode()) + b"." + signature
    assert reason(make_auth(), bearer(forged)) == "bad_signature"


def test_a_token_signed_by_another_key_under_a_known_kid_has_a_bad_signature() -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assert reason(make_auth(), bearer(sign(impostor))) == "bad_signature"


# time


def test_a_token_is_accepted_until_exp_plus_leeway() -> None:
    exp = NOW + 100
    token = bearer(sign(RSA_1, payload=claims(exp=exp)))
    assert isinstance(decide(make_auth(clock=make_clock(exp + LEEWAY - 0.001)), token), Granted)
    assert reason(make_auth(clock=make_clock(exp + LEEWAY)), token) == "expired"
    assert reason(make_auth(clock=make_clock(exp + LEEWAY + 1)), token) == "expired"


def test_without_leeway_a_token_expires_at_exp() -> None:
    token = bearer(sign(RSA_1, payload=claims(exp=NOW)))
    assert reason(make_auth(leeway=0), token) == "expired"
    assert isinstance(decide(make_auth(leeway=0, clock=make_clock(NOW - 1)), token), Granted)


def test_a_token_is_accepted_from_nbf_minus_leeway() -> None:
    nbf = NOW + 100
    token = bearer(sign(RSA_1, payload=claims(nbf=nbf)))
    assert isinstance(decide(make_auth(clock=make_clock(nbf - LEEWAY)), token), Granted)
    assert reason(make_auth(clock=make_clock(nbf - LEEWAY - 1)), token) == "not_yet_valid"


def test_the_clock_is_read_at_each_check() -> None:
    clock = make_clock()
    auth = make_auth(clock=clock)
    token = bearer(sign(RSA_1, payload=claims(exp=NOW + 60)))
    assert isinstance(decide(auth, token), Granted)
    clock.advance(60 + LEEWAY)
    assert reason(auth, token) == "expired"


@pytest.mark.parametrize("exp", [None, "tomorrow", True, float("nan"), float("inf"), 10**400])
def test_exp_is_required_and_must_be_a_finite_number(exp: Any) -> None:
    payload = claims(exp=exp)
    assert reason(make_auth(), bearer(sign(RSA_1, payload=payload))) == "bad_claim"


def test_a_non_numeric_nbf_is_refused() -> None:
    token = bearer(sign(RSA_1, payload=claims(nbf="now")))
    assert reason(make_auth(), token) == "bad_claim"


# issuer and audience


@pytest.mark.parametrize("iss", [None, "https://evil.test/", ["https://idp.test/"], ""])
def test_an_issuer_other_than_the_configured_one_is_refused(iss: Any) -> None:
    payload = claims(iss=iss)
    assert reason(make_auth(), bearer(sign(RSA_1, payload=payload))) == "bad_issuer"


def test_any_issuer_is_accepted_when_none_is_configured() -> None:
    token = bearer(sign(RSA_1, payload=claims(iss="https://other.test/")))
    assert isinstance(decide(make_auth(issuer=None), token), Granted)


@pytest.mark.parametrize("aud", [AUDIENCE, ["other", AUDIENCE]])
def test_the_audience_may_be_a_string_or_a_list_holding_it(aud: Any) -> None:
    assert isinstance(decide(make_auth(), bearer(sign(RSA_1, payload=claims(aud=aud)))), Granted)


@pytest.mark.parametrize("aud", [None, "other", ["other", "more"], [], "PROXYD", {"a": 1}])
def test_a_token_for_another_audience_or_none_is_refused(aud: Any) -> None:
    payload = claims(aud=aud)
    assert reason(make_auth(), bearer(sign(RSA_1, payload=payload))) == "bad_audience"


def test_without_a_configured_audience_a_token_naming_one_is_refused() -> None:
    # RFC 7519 4.1.3: a recipient that does not find itself in "aud" must refuse the token.
    auth = make_auth(audience=None)
    assert reason(auth, bearer(sign(RSA_1))) == "bad_audience"
    payload = claims()
    del payload["aud"]
    assert isinstance(decide(auth, bearer(sign(RSA_1, payload=payload))), Granted)


# keys from a JWKS


class FakeFetch:
    def __init__(self) -> None:
        self.calls: list[Deferred[bytes]] = []

    def __call__(self, url: str) -> Deferred[bytes]:
        self.calls.append(Deferred())
        return self.calls[-1]

    def answer(self, *keys: Signer) -> None:
        entries = [key.as_dict(private=False) for key in keys]
        self.calls[-1].callback(json.dumps({"keys": entries}).encode())


def jwks_auth(fetch: FakeFetch, clock: Clock, *keys: Signer) -> JwtAuth:
    jwks = Jwks("https://idp.test/jwks", fetch, clock, min_refresh_interval=10)
    jwks.start()
    if keys:
        fetch.answer(*keys)
    return make_auth(jwks, clock=clock)


def test_a_known_kid_from_the_jwks_is_checked_at_once() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1, EC_1)
    assert isinstance(decide(auth, bearer(sign(EC_1, "ES256"))), Granted)
    assert len(fetch.calls) == 1


def test_an_unknown_kid_refreshes_the_jwks_and_is_accepted_after_rotation() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(10)
    waiting = auth.check(bearer(sign(RSA_2)))
    assert isinstance(waiting, Deferred)
    results: list[Decision] = []
    waiting.addCallback(results.append)
    assert len(fetch.calls) == 2 and results == []
    fetch.answer(RSA_1, RSA_2)
    assert results == [Granted("alice", ((b"X-Auth-Email", b"alice@example.com"),))]


def test_an_unknown_kid_is_refused_after_a_refresh_that_does_not_bring_it() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(10)
    waiting = auth.check(bearer(sign(RSA_2)))
    assert isinstance(waiting, Deferred)
    results: list[Decision] = []
    waiting.addCallback(results.append)
    fetch.answer(RSA_1)
    assert [d.reason for d in results if isinstance(d, Denied)] == ["unknown_kid"]


def test_unknown_kids_refresh_at_most_every_min_refresh_interval() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(9)
    assert reason(auth, bearer(sign(RSA_2))) == "unknown_kid"
    assert reason(auth, bearer(sign(RSA_2))) == "unknown_kid"
    assert len(fetch.calls) == 1
    clock.advance(1)
    assert isinstance(auth.check(bearer(sign(RSA_2))), Deferred)
    assert len(fetch.calls) == 2


def test_concurrent_checks_with_an_unknown_kid_share_one_fetch() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(10)
    results: list[Decision] = []
    signers: list[tuple[Signer, str]] = [(RSA_2, "RS256"), (RSA_2, "RS256"), (EC_1, "ES256")]
    for key, alg in signers:
        waiting = auth.check(bearer(sign(key, alg)))
        assert isinstance(waiting, Deferred)
        waiting.addCallback(results.append)
    assert len(fetch.calls) == 2
    fetch.answer(RSA_2, EC_1)
    assert [type(d) for d in results] == [Granted] * 3


def test_a_failed_refresh_keeps_the_old_keys() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(300)
    fetch.calls[-1].errback(ConnectionError("refused"))
    assert isinstance(decide(auth, bearer(sign(RSA_1))), Granted)


def test_claims_are_checked_when_the_keys_arrive() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(10)
    # Valid until NOW + 14 (exp + leeway); the keys come at NOW + 15, within the fetch timeout.
    waiting = auth.check(bearer(sign(RSA_2, payload=claims(exp=NOW + 14 - LEEWAY))))
    assert isinstance(waiting, Deferred)
    results: list[Decision] = []
    waiting.addCallback(results.append)
    clock.advance(5)
    fetch.answer(RSA_2)
    assert [d.reason for d in results if isinstance(d, Denied)] == ["expired"]


def test_without_any_keys_the_answer_is_503_without_a_challenge() -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock)
    fetch.calls[-1].errback(ConnectionError("refused"))
    assert decide(auth, bearer(sign(RSA_1))) == Denied(503, "keys_unavailable")


# remembered tokens


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signing inputs of the RS256 signatures verified, in order."""
    model = jws.JWSRegistry.algorithms["RS256"]
    calls: list[bytes] = []
    verify = model.verify

    def counting(signing_input: bytes, signature: bytes, key: Any) -> bool:
        calls.append(signing_input)
        return verify(signing_input, signature, key)

    monkeypatch.setattr(model, "verify", counting)
    return calls


GRANTED = Granted("alice", ((b"X-Auth-Email", b"alice@example.com"),))


def test_a_repeated_token_is_verified_once_and_granted_as_the_first_time(
    verified: list[bytes],
) -> None:
    auth = make_auth()
    token = bearer(sign(RSA_1))
    assert [decide(auth, token) for _ in range(3)] == [GRANTED] * 3
    assert len(verified) == 1
    assert decide(auth, b"bearer  " + token.split()[1] + b" ") == GRANTED
    assert len(verified) == 1


def test_max_cached_0_verifies_every_time(verified: list[bytes]) -> None:
    auth = make_auth(max_cached=0)
    token = bearer(sign(RSA_1))
    assert [decide(auth, token) for _ in range(3)] == [GRANTED] * 3
    assert len(verified) == 3


def test_a_remembered_token_is_refused_from_exp_plus_leeway(verified: list[bytes]) -> None:
    clock = make_clock()
    auth = make_auth(clock=clock)
    exp = NOW + 60
    token = bearer(sign(RSA_1, payload=claims(exp=exp)))
    assert decide(auth, token) == GRANTED
    clock.advance(exp + LEEWAY - 0.001 - NOW)
    assert decide(auth, token) == GRANTED
    assert len(verified) == 1
    clock.advance(0.001)
    assert decide(auth, token) == auth._denied["expired"]
    assert len(verified) == 1
    assert reason(auth, token) == "expired"  # forgotten: verified again, and refused


def test_a_remembered_token_is_not_yet_valid_when_the_clock_goes_back_before_nbf() -> None:
    clock = make_clock()
    auth = make_auth(clock=clock)
    token = bearer(sign(RSA_1, payload=claims(nbf=NOW - 10)))
    assert decide(auth, token) == GRANTED
    clock.advance(-10 - LEEWAY)  # to nbf - leeway
    assert decide(auth, token) == GRANTED
    clock.advance(-1)
    assert reason(auth, token) == "not_yet_valid"
    clock.advance(1)
    assert decide(auth, token) == GRANTED


def test_a_token_that_fails_is_not_remembered(verified: list[bytes]) -> None:
    clock = make_clock()
    auth = make_auth(clock=clock)
    early = bearer(sign(RSA_1, payload=claims(nbf=NOW + 100)))
    assert reason(auth, early) == "not_yet_valid"
    clock.advance(100 - LEEWAY)
    assert decide(auth, early) == GRANTED
    forged = bearer(sign(RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})))
    assert [reason(auth, forged) for _ in range(2)] == ["bad_signature"] * 2
    assert len(verified) == 4


def test_the_least_recently_used_token_is_forgotten_beyond_max_cached(
    verified: list[bytes],
) -> None:
    auth = make_auth(max_cached=2)
    a, b, c = (bearer(sign(RSA_1, payload=claims(jti=name))) for name in "abc")
    for token in (a, b, a, c):  # c comes in: b was used least recently
        assert decide(auth, token) == GRANTED
    assert len(verified) == 3
    assert decide(auth, a) == GRANTED and decide(auth, c) == GRANTED
    assert len(verified) == 3
    assert decide(auth, b) == GRANTED
    assert len(verified) == 4
    assert auth._cache is not None and len(auth._cache) == 2


def test_remembered_tokens_are_kept_as_keyed_digests() -> None:
    auth = make_auth()
    token = sign(RSA_1)
    decide(auth, bearer(token))
    assert auth._cache is not None
    (digest,) = auth._cache._entries
    assert len(digest) == 32 and digest not in (token, hashlib.blake2b(token).digest()[:32])


@pytest.mark.parametrize(
    ("new_keys", "refused"),
    [
        ((RSA_2,), "unknown_kid"),
        ((RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),), "bad_signature"),
    ],
)
def test_a_jwks_refresh_that_drops_the_signing_key_makes_a_remembered_token_fail(
    verified: list[bytes], new_keys: tuple[RSAKey, ...], refused: str
) -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1, RSA_2)
    token = bearer(sign(RSA_1))
    assert [decide(auth, token) for _ in range(2)] == [GRANTED] * 2
    assert len(verified) == 1
    clock.advance(300)  # jwks_refresh
    fetch.answer(*new_keys)
    assert [reason(auth, token) for _ in range(2)] == [refused] * 2


def test_a_jwks_refresh_that_keeps_the_key_verifies_a_remembered_token_once_more(
    verified: list[bytes],
) -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    token = bearer(sign(RSA_1))
    assert decide(auth, token) == GRANTED
    clock.advance(300)
    fetch.answer(RSA_1)
    assert [decide(auth, token) for _ in range(2)] == [GRANTED] * 2
    assert len(verified) == 2


def test_a_token_granted_after_a_refresh_for_its_kid_is_remembered(
    verified: list[bytes],
) -> None:
    fetch, clock = FakeFetch(), make_clock()
    auth = jwks_auth(fetch, clock, RSA_1)
    clock.advance(10)
    token = bearer(sign(RSA_2))
    waiting = auth.check(token)
    assert isinstance(waiting, Deferred)
    fetch.answer(RSA_1, RSA_2)
    assert waiting.result == GRANTED
    assert decide(auth, token) == GRANTED
    assert len(verified) == 1


# construction


def test_unsafe_or_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="leeway"):
        make_auth(leeway=-1)
    with pytest.raises(ValueError, match="realm"):
        make_auth(realm="a\r\nb")
    with pytest.raises(ValueError, match="field name"):
        make_auth(claims=(("email", b"X Email"),))
    with pytest.raises(Invalid):
        make_auth(algorithms=("RS256", "none"))
    with pytest.raises(ValueError, match="max_cached"):
        make_auth(max_cached=-1)


# validate_algorithms


def test_validate_algorithms_keeps_the_order_and_drops_repeats() -> None:
    assert validate_algorithms(["ES256", "RS256", "ES256"]) == ("ES256", "RS256")
    assert validate_algorithms(ALGORITHMS) == ALGORITHMS


def test_validate_algorithms_refuses_none_saying_why() -> None:
    with pytest.raises(Invalid) as caught:
        validate_algorithms(["RS256", "none"])
    assert caught.value.found == "'none'"
    assert caught.value.hint is not None and "anyone can forge" in caught.value.hint


def test_validate_algorithms_refuses_unknown_names_listing_the_allowed_ones() -> None:
    with pytest.raises(Invalid) as caught:
        validate_algorithms(["RS257"])
    assert caught.value.expected.startswith("one of RS256, RS384, RS512, PS256")
    assert caught.value.found == "'RS257'"
    assert caught.value.hint == "did you mean 'RS256'?"
    with pytest.raises(Invalid) as caught:
        validate_algorithms(["eddsa"])
    assert caught.value.hint == "did you mean 'EdDSA'?"


def test_validate_algorithms_refuses_an_empty_list() -> None:
    with pytest.raises(Invalid, match="at least one JWS algorithm"):
        validate_algorithms([])


# load_pem_keys


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_load_pem_keys_reads_public_keys_certificates_and_private_keys_public_parts(
    tmp_path: Path,
) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .sign(signer, hashes.SHA256())
    )
    paths = [
        write(tmp_path / "rsa.pub", RSA_1.as_pem(private=False)),
        write(tmp_path / "ec.key", EC_1.as_pem(private=True)),
        write(tmp_path / "ed.pub", ED_1.as_pem(private=False)),
        write(tmp_path / "cert.pem", certificate.public_bytes(serialization.Encoding.PEM)),
    ]
    key_set = load_pem_keys(paths)
    assert [key.key_type for key in key_set] == ["RSA", "EC", "OKP", "RSA"]
    assert not any(key.is_private for key in key_set)
    auth = make_auth(key_set)
    signers: list[tuple[Signer, str]] = [(RSA_1, "RS256"), (EC_1, "ES256"), (ED_1, "EdDSA")]
    for key, alg in signers:
        assert isinstance(decide(auth, bearer(sign(key, alg, kid=None))), Granted)


def test_load_pem_keys_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.pem")
    with pytest.raises(Invalid) as caught:
        load_pem_keys([missing])
    assert caught.value.expected == "a readable PEM file"
    assert caught.value.found == f"{missing!r} (No such file or directory)"


def pem_private(key: Any, password: bytes | None = None) -> bytes:
    encryption: Any = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize(
    ("data", "expected", "found"),
    [
        (b"hello", "a PEM public key, certificate", "(Unable to load PEM file"),
        (pem_private(EC_1.private_key, b"pw"), "a PEM public key, certificate", "(Password"),
        (
            pem_private(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "an RSA key of at least 2048 bits",
            "(1024 bits)",
        ),
        (
            pem_private(ec.generate_private_key(ec.SECP256K1())),
            "an EC key on P-256, P-384 or P-521",
            "(secp256k1)",
        ),
        (
            pem_private(dsa.generate_private_key(key_size=2048)),
            "an RSA, EC or Ed25519/Ed448 key",
            "(DSAPublicKey)",
        ),
    ],
)
def test_load_pem_keys_refuses_what_is_not_a_usable_public_key_naming_the_file(
    tmp_path: Path, data: bytes, expected: str, found: str
) -> None:
    path = write(tmp_path / "key.pem", data)
    with pytest.raises(Invalid) as caught:
        load_pem_keys([write(tmp_path / "good.pem", RSA_1.as_pem(private=False)), path])
    assert caught.value.expected.startswith(expected)
    assert caught.value.found.startswith(f"{path!r} {found}")


def test_load_pem_keys_refuses_an_empty_list() -> None:
    with pytest.raises(Invalid, match="PEM files holding public keys"):
        load_pem_keys([])

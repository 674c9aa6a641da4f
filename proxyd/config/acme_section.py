"""`[acme NAME]` sections and the `acme` key of TLS listeners (docs/acme.md): their parsers,
and the section's check across keys (proxyd.config.cross_checks)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from proxyd.config import tls
from proxyd.config import values as v
from proxyd.config.acme_model import CHALLENGES, AcmeConfig
from proxyd.config.errors import Invalid, did_you_mean
from proxyd.config.ini import Section
from proxyd.config.keys import Context, Key, reference
from proxyd.config.security import Problems

MAX_NAMES: Final = 100
"""Let's Encrypt's limit of names on one certificate."""
EAB_KEYS: Final = ("eab_kid", "eab_hmac_key")
"""External account binding's keys: both or neither."""

_KID = re.compile(r"[!-~]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def acme(text: str, ctx: Context) -> AcmeConfig | None:
    """A listener's `acme = NAME`: its [acme] section (None when that section has errors,
    which are reported there)."""
    name = text.strip()
    reference("acme", name, ctx.section_names.get("acme", frozenset()))
    found: AcmeConfig | None = ctx.sections.get("acme", {}).get(name)
    return found


def names(text: str) -> tuple[str, ...]:
    """`names`: DNS names, separated by spaces or lines (no wildcards: they need dns-01)."""
    found: list[str] = []
    for word in v.words(text, "DNS names"):
        name = word.lower().rstrip(".")
        if name.startswith("*."):
            raise Invalid(
                "DNS names", repr(word), "wildcards need the dns-01 challenge (not supported)"
            )
        if not v.is_hostname(name) or "." not in name or name.replace(".", "").isdigit():
            raise Invalid("DNS names such as example.com", repr(word))
        if name in found:
            raise Invalid("each name once", f"{name!r} twice")
        found.append(name)
    if not found:
        raise Invalid("one or more DNS names", "nothing")
    if len(found) > MAX_NAMES:
        raise Invalid(f"at most {MAX_NAMES} names", f"{len(found)}")
    return tuple(found)


def contact(text: str) -> tuple[str, ...]:
    """`contact`: mailto: URLs (a bare address is taken as one)."""
    found = []
    for word in v.words(text, "mailto: addresses"):
        address = word[len("mailto:") :] if word.startswith("mailto:") else word
        local, at, domain = address.partition("@")
        if not local or not at or not v.is_hostname(domain):
            raise Invalid("mailto: addresses such as mailto:admin@example.com", repr(word))
        found.append("mailto:" + address)
    return tuple(found)


def directory(text: str) -> str:
    url = text.strip()
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise Invalid("an https:// URL of an ACME directory", repr(url))
    return url


def storage(text: str, ctx: Context) -> str:
    value = text.strip()
    if not value:
        raise Invalid("a directory", "nothing")
    return os.path.join(ctx.base_dir, value)


def ca(text: str, ctx: Context) -> str:
    return tls.ca_file(text, ctx.base_dir)


def challenges(text: str) -> tuple[str, ...]:
    found = []
    for word in v.words(text, "challenge types"):
        if word not in CHALLENGES:
            raise Invalid(
                "challenge types http-01 and/or tls-alpn-01",
                repr(word),
                did_you_mean(word, CHALLENGES),
            )
        if word not in found:
            found.append(word)
    if not found:
        raise Invalid("http-01, tls-alpn-01 or both", "nothing")
    return tuple(found)


def eab_kid(text: str) -> str:
    """`eab_kid`: the key identifier the CA gave, as written (printable ASCII, no spaces)."""
    kid = text.strip()
    if not _KID.fullmatch(kid):
        raise Invalid("the key identifier the CA gave (printable ASCII, no spaces)", repr(kid))
    return kid


def eab_hmac_key(text: str) -> str:
    """`eab_hmac_key`: the MAC key the CA gave, base64url (RFC 4648 5), any `=` padding
    dropped. A secret: what is wrong is said without the value."""
    key = text.strip().rstrip("=")
    expected = "the base64url MAC key the CA gave (letters, digits, - and _)"
    if not key:
        raise Invalid(expected, "nothing")
    if not _BASE64URL.fullmatch(key):
        standard = "standard base64's + and / are - and _" if set("+/") & set(key) else None
        raise Invalid(expected, "other characters", standard)
    if len(key) % 4 == 1:
        raise Invalid(expected, f"{len(key)} characters, a length base64 cannot have")
    return key


def acme_section(section: Section, fields: dict[str, Any]) -> Problems:
    """An external account binding takes both its keys."""
    for given, missing in (EAB_KEYS, EAB_KEYS[::-1]):
        if given in fields and missing not in fields:
            why = f"'{missing}' too (an external account binding takes both)"
            return [(given, Invalid(why, f"{given} alone"))]
    return []


KEYS: Mapping[str, Key] = {
    "names": Key(names, required=True),
    "storage": Key(storage, required=True, context=True),
    "contact": Key(contact),
    "directory": Key(directory),
    "ca": Key(ca, context=True),
    "challenges": Key(challenges),
    "renew_before": Key(v.positive_duration),
    "retry_min": Key(v.positive_duration),
    "retry_max": Key(v.positive_duration),
    "eab_kid": Key(eab_kid),
    "eab_hmac_key": Key(eab_hmac_key),
}
"""The keys of an [acme NAME] section."""

SCHEMA = (AcmeConfig, True, KEYS)

"""Purge fan-out across the nodes of a cluster (`[cache NAME] cluster = redis://...`), the
sans-IO part: what a purge looks like in Redis, and which purges a node applies.

A purge made on a node is appended to the cluster's purge log, a Redis Stream kept to about
`cluster_log` entries (XADD MAXLEN ~), and published on the cluster's channel with the id
the Stream gave it, by one script (PUBLISH_SCRIPT), so that the channel's order is the log's.
Every node subscribes to the channel and remembers the last id it applied (`PurgeLog.last`).
When its link to Redis comes back (or the process starts with a remembered id: a disk tier
keeps it in its directory) it reads the log after that id (XRANGE) and applies what it
missed; messages that arrive on the channel meanwhile wait until that read is done. A
node's own purges come back to it on the channel and are skipped (they were applied when
made); purges are idempotent anyway.

Each purge also gets the next number of the cluster's counter (`proxyd:purge:CLUSTER:seq`),
kept in the log with it: a node remembers the number of the last purge it applied too, and
when the first purge the log still holds after it is not the next number, the log was
trimmed past this node (XINFO's max-deleted-entry-id does not see trimming, only XDEL):
purges were lost for it. It then marks every response of the cache stale (`GAP_PURGES`,
soft purges of every http and https URI), which costs a revalidation each, never a wrong
answer, and logs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from proxyd.cache.instance import Purge

PREFIX: Final = "proxyd:purge:"
"""Of the Stream (`proxyd:purge:CLUSTER`), the channel (`proxyd:purge:CLUSTER:live`) and the
counter (`proxyd:purge:CLUSTER:seq`)."""

PUBLISH_SCRIPT: Final = """
local seq = redis.call('INCR', KEYS[3])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2], 's', seq)
redis.call('PUBLISH', KEYS[2], id .. ' ' .. seq .. ' ' .. ARGV[2])
return id
"""
"""KEYS: the Stream, the channel, the counter; ARGV: the log's length, the message. Answers
the id."""

GAP_PURGES: Final = (
    Purge(prefix="http://", soft=True),
    Purge(prefix="https://", soft=True),
)
"""What a node applies when the log lost purges it had not applied: everything stale."""


def stream_key(cluster: str) -> str:
    return PREFIX + cluster


def channel(cluster: str) -> str:
    return PREFIX + cluster + ":live"


def counter(cluster: str) -> str:
    return PREFIX + cluster + ":seq"


def entry_id(text: str) -> tuple[int, int]:
    """A Stream id `MS-SEQ` as a pair that compares as Redis orders them."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@attrs.frozen
class PurgeMessage:
    """One purge in the log: which process made it (`origin`), of which cache."""

    origin: str
    cache: str
    purge: Purge

    def encode(self) -> str:
        fields: dict[str, Any] = {"o": self.origin, "c": self.cache}
        fields.update({k: v for k, v in attrs.asdict(self.purge).items() if v is not None})
        return json.dumps(fields, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str | bytes) -> PurgeMessage:
        """ValueError for anything that is not a message this module wrote."""
        try:
            fields = json.loads(text)
            purge = Purge(
                url=fields.get("url"),
                prefix=fields.get("prefix"),
                tag=fields.get("tag"),
                soft=bool(fields.get("soft", False)),
            )
            return cls(str(fields["o"]), str(fields["c"]), purge)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a purge message: {e}") from None


Entry = tuple[str, int | None, "PurgeMessage | None"]
"""A purge of the log: its id, its number (None: not numbered), the message (None: not one
this module wrote)."""


def split_published(text: str | bytes) -> tuple[str, int, PurgeMessage]:
    """A channel message, `ID SEQ JSON`, as its id, number and message (ValueError if not
    one)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    ident, _, rest = text.partition(" ")
    seq, space, body = rest.partition(" ")
    if not space or not seq.isdigit():
        raise ValueError("not a purge message: no id and number")
    entry_id(ident)
    return ident, int(seq), PurgeMessage.decode(body)


class PurgeLog:
    """One cluster's purges as one node sees them: which to apply, from the channel and from
    the log, in the log's order, each once."""

    def __init__(self, origin: str, last: str | None = None, seq: int | None = None) -> None:
        self.origin = origin
        """This process's id in the messages it writes."""
        self.last = last
        """The id of the last purge applied (or skipped as its own); None: none yet."""
        self.seq = seq
        """The number of that purge; None: not known (a node that starts from now)."""
        self.catching_up = True
        """Until the log was read after `last`: channel messages wait in `_held`."""
        self._held: list[Entry] = []

    def _take(
        self, ident: str, seq: int | None, message: PurgeMessage | None
    ) -> PurgeMessage | None:
        if self.last is not None and entry_id(ident) <= entry_id(self.last):
            return None
        self.last = ident
        if seq is not None:
            self.seq = seq
        return None if message is None or message.origin == self.origin else message

    def published(self, ident: str, seq: int | None, message: PurgeMessage) -> list[PurgeMessage]:
        """A message from the channel: the purges to apply now (none while catching up)."""
        if self.catching_up:
            self._held.append((ident, seq, message))
            return []
        found = self._take(ident, seq, message)
        return [] if found is None else [found]

    def link_lost(self) -> None:
        """The channel is gone: what it sends next waits for a read of the log."""
        self.catching_up = True
        self._held = []

    def caught_up(
        self, entries: Sequence[Entry], newest: str | None, counter: int | None = None
    ) -> tuple[list[PurgeMessage], bool]:
        """The log read after `last` (XRANGE), the Stream's newest id and the counter's
        value read before them: the purges to apply, in order, and whether purges were
        lost (the first purge after `last` is not the one numbered after it: the log was
        trimmed past it). With no `last` (a node's first link without a start), none are
        applied: it starts at `newest`. A node that did not know its number (it started
        from now) takes the counter's when the log held nothing after it."""
        lost = False
        found: list[PurgeMessage] = []
        if self.last is None:
            self.last = newest or "0-0"
        else:
            if entries and self.seq is not None:
                first = entries[0][1]
                lost = first is not None and first > self.seq + 1
            for ident, seq, message in entries:
                taken = self._take(ident, seq, message)
                if taken is not None:
                    found.append(taken)
        if self.seq is None and counter is not None:
            self.seq = counter
        held, self._held = self._held, []
        self.catching_up = False
        for ident, seq, message in held:
            taken = self._take(ident, seq, message)
            if taken is not None:
                found.append(taken)
        return found, lost


def decode_entries(reply: Iterable[Any]) -> list[Entry]:
    """XRANGE's reply (`[[id, [field, value, ...]], ...]`) as ids, numbers and messages."""
    found: list[Entry] = []
    for ident, fields in reply:
        ident = ident.decode() if isinstance(ident, bytes) else str(ident)
        pairs = {
            (k.decode() if isinstance(k, bytes) else str(k)): v
            for k, v in zip(fields[::2], fields[1::2], strict=False)
        }
        body, seq = pairs.get("m"), pairs.get("s")
        text = seq.decode() if isinstance(seq, bytes) else str(seq)
        number = int(text) if seq is not None and text.isdigit() else None
        try:
            found.append((ident, number, None if body is None else PurgeMessage.decode(body)))
        except ValueError:
            found.append((ident, number, None))
    return found


def stream_info(reply: Any) -> str | None:
    """XINFO STREAM's reply (a flat list of names and values) as the newest id
    (last-generated-id)."""
    items = list(reply)
    pairs = {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in zip(items[::2], items[1::2], strict=False)
    }

    def text(name: str) -> str | None:
        value = pairs.get(name)
        if value is None:
            return None
        value = value.decode() if isinstance(value, bytes) else str(value)
        return None if value == "0-0" else value

    return text("last-generated-id")

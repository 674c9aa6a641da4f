"""proxyd's own answers in an exchange: an error of its own (the listener's error page, or a
line of text; a Trailers-Only answer to a gRPC call), a filter's Answer, sent back through
the response filters of the chain above the filter that answered, then written whole, or
streamed from its source (proxyd.relay.http.answer_body).

A base class of proxyd.relay.http.exchange.Exchange, apart so that each module holds one
thing."""

from __future__ import annotations

from twisted.logger import Logger

from proxyd.filters.api import Answer, Reject
from proxyd.filters.chain import ALL_WENT_ON, Chain, Step
from proxyd.metrics import ErrorKind
from proxyd.relay.http import grpc
from proxyd.relay.http.answer_body import AnswerBody
from proxyd.relay.http.messages import reason_phrase
from proxyd.relay.http.state import RESPONSE_FILTERS, STREAMING, State

_log = Logger(namespace="proxyd.relay.http")


class OwnAnswers(AnswerBody):
    """The answering part of an Exchange."""

    __slots__ = ("answer", "error", "status")

    # The exchange's state this class reads (proxyd.relay.http.exchange.Exchange).
    error: str | None
    state: State
    response_timeout: float

    def _stop_forward(self) -> None:
        raise NotImplementedError

    def fail(
        self,
        status: int,
        why: str,
        kind: ErrorKind | str | None = None,
        *,
        answer: Reject | None = None,
        position: int = ALL_WENT_ON,
    ) -> None:
        """Answer an error of our own (the listener's error page, if any, by its filter).
        `kind` is the error for the metrics, when no failed attempt at a server counted it
        already."""
        self.error = why
        if kind is not None:
            self.error_kind = kind
        self._stop_forward()
        if self.response_started or self.finished:
            self._finish(keep_alive=False, truncated=True)
            return
        if status >= 400 and status not in (404, 405):
            _log.info(
                "{kind} {listener}: {method} {target} from {client}: {status} ({why})",
                kind=self.config.kind,
                listener=self.config.name,
                method=self.request.method.decode("latin-1"),
                target=self.request.target.decode("latin-1")[:200],
                client=self.client.peer_text,
                status=status,
                why=why,
            )
        if answer is None:
            answer = Reject(status, why, kind or "")
        if grpc.is_grpc(self.request):
            bound = self.response_timeout < self.config.response_timeout
            answer = grpc.error_answer(answer, bound)
        elif not answer.body:
            answer.body = b"%d %s\n" % (status, reason_phrase(status))
            answer.headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
        if self.state is RESPONSE_FILTERS:
            # A response filter failed: the error goes out as it is, through no filter.
            self._start_answer(answer, ())
            return
        self._answer(answer, position)

    def _answer(self, answer: Answer, position: int) -> None:
        """Send `answer` back through the response filters of the chain before `position`."""
        steps = self.chain.response_head
        self._start_answer(
            answer, Chain.before(steps, position) if position < len(self.chain) else steps
        )

    def _start_answer(self, answer: Answer, steps: tuple[Step, ...]) -> None:
        self.answer = answer
        self.status = answer.status
        self.response_fields = fields = answer.headers
        if self._added_fields is not None:
            fields += self._added_fields
        server = self.chain.server
        if server is not None and not any(f[0].lower() == b"server" for f in fields):
            fields.append(server)  # hide_headers' Server on proxyd's own answers too
        self._respond(steps)

    def _send_answer(self, answer: Answer) -> None:
        status = self.status
        body = answer.body
        head_only = self.request.method == b"HEAD" or status in (204, 304)
        if answer.source is not None:
            self._send_source(answer, answer.source, head_only)
            return
        if status not in (204, 304):
            self.response_fields.append((b"Content-Length", b"%d" % len(body)))
        fields = self._frame(False, True)
        self._move(STREAMING)
        self.response_bytes = 0 if head_only else len(body)
        self.client.send_head(status, b"", fields, b"" if head_only else body)
        self._finish(keep_alive=self._client_keep_alive)

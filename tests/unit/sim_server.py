"""A simulated Durable Streams server for one stream: the idempotent-producer rules of
PROTOCOL §5.2.1 exactly, with the reference server's responses (as the integration tests observe
them), and nothing else. Pure Python, no sockets, no threads, no clock.

Answers are the library's ``Response`` objects, classified by :func:`outcome_of` exactly as
the producer's transport does (``outcome.classify`` with the same arguments), so the tests
exercise the real classification. Faults (lost answers, dropped requests, 503/429, a proxy
502 after the commit, server restarts) are applied by the caller through :func:`post_with`;
:meth:`SimServer.read_from` and :meth:`SimServer.tail` serve the producer's tail probe and
the reads that look for in-doubt batches.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

import requests
from requests.structures import CaseInsensitiveDict

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._http import RetryPolicy, error_from
from durable_streams._producer.outcome import Outcome, classify, transport_failure
from durable_streams._redact import redact_url
from durable_streams._response import Response

URL = "http://sim.invalid/v1/stream/sim"
#: retries without jitter: the simulation is deterministic for hypothesis
RETRY = RetryPolicy(jitter=False, max_delay_ms=2_000.0)


def offset_str(n: int) -> str:
    """Fixed-width offsets (as the reference server's): string order is stream order."""
    return f"{0:016d}_{n:016d}"


@dataclass
class ProducerState:
    epoch: int
    last_seq: int


@dataclass
class Append:
    """One accepted POST: who wrote it and the messages it stored."""

    producer: str | None
    epoch: int
    seq: int
    messages: list[bytes]
    offset_after: str


@dataclass
class SimServer:
    """One stream (byte or JSON mode) and its per-producer state."""

    json_mode: bool = False
    producers: dict[str, ProducerState] = field(default_factory=dict)
    log: list[Append] = field(default_factory=list)
    #: every stored message, in stream order (JSON: one per array element)
    messages: list[bytes] = field(default_factory=list)
    nbytes: int = 0
    posts: int = 0  # POST requests handled
    #: the (producer, epoch, seq) of the request that closed the stream, once closed
    closed_by: tuple[str | None, int, int] | None = None

    # -- reads ---------------------------------------------------------------------------
    def tail(self) -> str:
        """Stream-Next-Offset of a HEAD."""
        return offset_str(self._units())

    def _units(self) -> int:
        return len(self.messages) if self.json_mode else self.nbytes

    def read_from(self, offset: str) -> bytes:
        """The body of a catch-up read from ``offset`` to the tail (as ``read_bytes``)."""
        start = int(offset.split("_")[1]) if offset not in ("-1", "") else 0
        if self.json_mode:
            return b"[" + b",".join(self.messages[start:]) + b"]"
        return b"".join(self.messages)[start:]

    # -- appends -------------------------------------------------------------------------
    def post(self, producer: str | None, epoch: int, seq: int, body: bytes
             ) -> Response:
        """One producer POST, validated and (maybe) committed as PROTOCOL §5.2.1 says."""
        self.posts += 1
        h: dict[str, str] = {}
        if self.closed_by is not None:  # checked first, as the reference server does
            closed = {P.STREAM_CLOSED: "true", P.STREAM_NEXT_OFFSET: self.tail()}
            if producer is not None and self.closed_by == (producer, epoch, seq):
                return response(204, closed, b"")  # a retry of the closing request
            return response(409, closed, b"Stream is closed")
        if producer is not None:
            state = self.producers.get(producer)
            if state is not None and epoch < state.epoch:
                return response(403, {P.PRODUCER_EPOCH: str(state.epoch)},
                                b"Stale producer epoch")
            if state is not None and epoch > state.epoch and seq != 0:
                return response(400, {}, b"New epoch must start with sequence 0")
            if state is None and seq != 0:
                # an unknown producer must start at 0 (the reference server: 409, expected 0)
                return response(409, {P.PRODUCER_EXPECTED_SEQ: "0",
                                      P.PRODUCER_RECEIVED_SEQ: str(seq)}, b"Sequence gap")
            if state is not None and epoch == state.epoch:
                if seq <= state.last_seq:
                    return response(204, {P.PRODUCER_EPOCH: str(epoch),
                                          P.PRODUCER_SEQ: str(state.last_seq)}, b"")
                if seq > state.last_seq + 1:
                    return response(409, {P.PRODUCER_EXPECTED_SEQ: str(state.last_seq + 1),
                                          P.PRODUCER_RECEIVED_SEQ: str(seq)},
                                    b"Sequence gap")
        parsed = self._parse(body)
        if parsed is None:
            # a rejected append does not advance the producer's last seq
            return response(400, {}, b"Invalid JSON" if self.json_mode else b"Empty body")
        if producer is not None:
            self.producers[producer] = ProducerState(epoch, seq)
            h[P.PRODUCER_EPOCH] = str(epoch)
            h[P.PRODUCER_SEQ] = str(seq)
        self.messages.extend(parsed)
        self.nbytes += len(body)
        h[P.STREAM_NEXT_OFFSET] = self.tail()
        self.log.append(Append(producer, epoch, seq, parsed, h[P.STREAM_NEXT_OFFSET]))
        return response(200, h, b"")

    def close(self, producer: str, epoch: int, seq: int, body: bytes | None = None
              ) -> requests.Response:
        """A producer POST with ``Stream-Closed: true`` (and maybe a final message)."""
        if body is not None:
            r = self.post(producer, epoch, seq, body)
            if r.status_code == 200:
                self.closed_by = (producer, epoch, seq)
                r.headers[P.STREAM_CLOSED] = "true"
            return r
        self.posts += 1
        if self.closed_by is not None:
            closed = {P.STREAM_CLOSED: "true", P.STREAM_NEXT_OFFSET: self.tail()}
            if self.closed_by == (producer, epoch, seq):
                return response(204, closed, b"")
            return response(409, closed, b"Stream is closed")
        state = self.producers.get(producer)
        if state is not None and epoch < state.epoch:
            return response(403, {P.PRODUCER_EPOCH: str(state.epoch)}, b"Stale producer epoch")
        if state is not None and epoch > state.epoch and seq != 0:
            return response(400, {}, b"New epoch must start with sequence 0")
        if state is None and seq != 0:
            return response(409, {P.PRODUCER_EXPECTED_SEQ: "0",
                                  P.PRODUCER_RECEIVED_SEQ: str(seq)}, b"Sequence gap")
        if state is not None and epoch == state.epoch:
            if seq <= state.last_seq:
                # A duplicate tuple: the stream stays OPEN, yet the reference server (0.3.7,
                # handleAppend) answers exactly as for a retry of its closing request:
                # 204 with Stream-Closed: true and the offset.
                return response(204, {P.STREAM_NEXT_OFFSET: self.tail(),
                                      P.STREAM_CLOSED: "true", P.PRODUCER_EPOCH: str(epoch),
                                      P.PRODUCER_SEQ: str(state.last_seq)}, b"")
            if seq > state.last_seq + 1:
                return response(409, {P.PRODUCER_EXPECTED_SEQ: str(state.last_seq + 1),
                                      P.PRODUCER_RECEIVED_SEQ: str(seq)}, b"Sequence gap")
        self.producers[producer] = ProducerState(epoch, seq)
        self.closed_by = (producer, epoch, seq)
        # close-only is answered 204 (not 200) by the reference server
        return response(204, {P.STREAM_NEXT_OFFSET: self.tail(), P.STREAM_CLOSED: "true",
                              P.PRODUCER_EPOCH: str(epoch), P.PRODUCER_SEQ: str(seq)}, b"")

    def _parse(self, body: bytes) -> list[bytes] | None:
        if not body:
            return None
        if not self.json_mode:
            return [body]
        try:
            value = json.loads(body)
        except ValueError:
            return None
        if isinstance(value, list):
            if not value:
                return None  # "Empty arrays are not allowed"
            return [json.dumps(v, separators=(",", ":")).encode() for v in value]
        return [json.dumps(value, separators=(",", ":")).encode()]


def response(status: int, headers: dict[str, str], content: bytes) -> Response:
    return Response.from_bytes(status, CaseInsensitiveDict(headers), content, URL)


def outcome_of(r: Response, seq: int | None) -> Outcome:
    """Classify an answer exactly as ``Transport._outcome`` does."""
    return classify(r.status_code, r.headers, seq, RETRY.is_retryable_status,
                    lambda: error_from(r, url=URL, operation="append"),
                    url=URL, where=redact_url(URL))


def no_answer(*, reached_server: bool = True) -> Outcome:
    """The outcome of a POST that got no answer (as the HTTP client reports it)."""
    err = errors.TransportError(f"append to {URL} failed: connection reset", url=URL)
    err.reached_server = reached_server  # type: ignore[attr-defined]
    return transport_failure(err)


class Fault(enum.Enum):
    """What happens to one request on its way (chosen by the test)."""

    NONE = "none"
    DROP = "drop"  # lost before the server saw it: no answer
    LOSE = "lose"  # committed, then the answer was lost
    UNAVAILABLE = "503"  # a 503 from the server, nothing committed
    RATE_LIMITED = "429"  # a 429 with Retry-After, nothing committed
    PROXY_502 = "502-after-commit"  # a proxy's 502 after the origin committed
    ZOMBIE = "zombie"  # no answer now; the request reaches the server later


def post_with(server: SimServer, fault: Fault, producer: str, epoch: int, seq: int,
              body: bytes, *, close: bool = False) -> Outcome:
    """One POST (``close``: a close-only POST) through a faulty network: the outcome the
    producer sees."""
    def send() -> requests.Response:
        if close:
            return server.close(producer, epoch, seq)
        return server.post(producer, epoch, seq, body)

    if fault is Fault.NONE:
        return outcome_of(send(), seq)
    if fault is Fault.DROP or fault is Fault.ZOMBIE:
        return no_answer()
    if fault is Fault.LOSE:
        send()
        return no_answer()
    if fault is Fault.UNAVAILABLE:
        return outcome_of(response(503, {}, b"Service Unavailable"), seq)
    if fault is Fault.RATE_LIMITED:
        return outcome_of(response(429, {P.RETRY_AFTER: "1"}, b"Too Many Requests"), seq)
    send()  # PROXY_502
    return outcome_of(response(502, {}, b"Bad Gateway"), seq)


class OtherWriter:
    """A second writer using the same producer id (a zombie or a second copy of the job):
    it claims the epoch above the server's and writes its own ``<X.n>`` messages."""

    def __init__(self, server: SimServer, producer_id: str) -> None:
        self.server = server
        self.producer_id = producer_id
        self.epoch = -1
        self.seq = -1
        self.n = 0
        self.fenced = True

    def claim(self) -> int:
        state = self.server.producers.get(self.producer_id)
        self.epoch = state.epoch + 1 if state is not None else 0
        self.seq = -1
        self.fenced = False
        return self.write()

    def write(self) -> int:
        """One more batch at its epoch (status of the answer; 403 once fenced)."""
        if self.fenced:
            return 403
        self.seq += 1
        self.n += 1
        body = (f'"X.{self.n}"' if self.server.json_mode else f"<X.{self.n}>").encode()
        status = int(self.server.post(self.producer_id, self.epoch, self.seq, body).status_code)
        if status == 403:
            self.fenced = True
        return status


def previous_run(server: SimServer, producer_id: str, epoch: int, batches: int) -> None:
    """An earlier run of the same job left (id, epoch, 0..batches-1) in the stream."""
    for seq in range(batches):
        body = (f'"P.{seq}"' if server.json_mode else f"<P.{seq}>").encode()
        assert server.post(producer_id, epoch, seq, body).status_code == 200

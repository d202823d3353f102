#!/usr/bin/env python3
"""Client conformance adapter for ``durable_streams``.

The Durable Streams client conformance suite drives a client through an *adapter*: a
process that reads one JSON command per line on stdin, performs it with the client library
and answers with exactly one JSON result per line on stdout (README,
"Conformance"). This is ours. It uses only the public API of
``durable_streams``, so it doubles as a worked example of that API.

Run it with no arguments; the runner spawns it once and keeps it for the whole run::

    tests/conformance/adapter.py

Rules it keeps:

- stdout carries results and nothing else (``print`` and logging go to stderr);
- commands are handled strictly one after another, each wrapped so that any failure
  becomes an error result with the real HTTP status and a standard error code;
- no command blocks past its timeouts: live reads stop after ``timeoutMs`` (default
  5000 ms), HTTP requests have bounded timeouts, producer flushes are bounded;
- the process exits only after answering ``shutdown`` (or when stdin closes).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import requests.adapters

try:
    import durable_streams as ds
except ImportError:  # not installed: run straight from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import durable_streams as ds

log = logging.getLogger("durable_streams.conformance")

CLIENT_NAME = "durable_streams (Python)"
FEATURES = {
    "batching": True,
    "sse": True,
    "longPoll": True,
    "auto": True,
    "streaming": True,
    "dynamicHeaders": True,
    "retryOptions": True,
    "batchItems": True,
    "strictZeroValidation": True,
}

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: How long a live read follows the stream when the command gives no ``timeoutMs``.
DEFAULT_LIVE_TIMEOUT_MS = 5000
#: Non-empty chunks a live read collects at most when the command gives no ``maxChunks``.
DEFAULT_MAX_CHUNKS = 100
#: ``(connect, read)`` seconds for every request: well inside the runner's 30 s per command.
HTTP_TIMEOUT = (5.0, 20.0)
#: Bounds for producer work within one command.
PRODUCER_DELIVERY_TIMEOUT_MS = 20_000
PRODUCER_FLUSH_TIMEOUT_S = 25.0
#: Benchmark commands get 60 s from the runner.
BENCH_TIMEOUT_S = 50.0


class CommandError(Exception):
    """An error result decided by the adapter itself (bad command, client-side rule)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# -- helpers -------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    """JSON mode, as the library and the reference server define it (PROTOCOL §9.1)."""
    return media_type(content_type) == "application/json"


def is_text_type(content_type: str | None) -> bool:
    mt = media_type(content_type)
    return mt.startswith("text/") or mt == "application/json"


def _js_numbers(value: Any) -> Any:
    """Integral floats as ints, so that ``1.0`` is written ``1`` as JSON.stringify does."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, list):
        return [_js_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _js_numbers(v) for k, v in value.items()}
    return value


def compact_json(items: Any) -> str:
    """Serialise like JavaScript's ``JSON.stringify`` (compact, non-ASCII kept as is)."""
    return json.dumps(_js_numbers(items), separators=(",", ":"), ensure_ascii=False)


def chunk_of(data: bytes, offset: str | None) -> dict[str, Any]:
    """A result chunk: UTF-8 text, or base64 with ``binary: true`` when not UTF-8."""
    chunk: dict[str, Any]
    try:
        chunk = {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        chunk = {"data": base64.b64encode(data).decode("ascii"), "binary": True}
    if offset:
        chunk["offset"] = offset
    return chunk


def _require(cmd: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = cmd.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CommandError("INVALID_ARGUMENT", f"{cmd.get('type')}: '{key}' is required "
                           f"and must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _path(cmd: Mapping[str, Any]) -> str:
    path = _require(cmd, "path", str)
    if not path.startswith("/"):
        path = "/" + path
    return str(path)


def _optional_int(cmd: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = cmd.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CommandError("INVALID_ARGUMENT", f"'{key}' must be an integer, got {value!r}")
    return int(value)


class DynamicValue:
    """A header or query parameter that the library evaluates on every request.

    The adapter passes the object itself (a zero-argument callable) in ``headers=`` /
    ``params=``; the library calls it for each request it sends, and the object records the
    last value it returned, which is what the result reports as sent. ``counter`` advances
    once per append/read command (the suite's definition), ``timestamp`` is read at each
    request, ``token`` is the value last set (a new ``set-dynamic-header`` = a refresh).
    """

    KINDS = ("counter", "timestamp", "token")

    def __init__(self, kind: str, initial: str | None = None) -> None:
        if kind not in self.KINDS:
            raise CommandError("INVALID_ARGUMENT",
                               f"valueType must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.kind = kind
        self.token = "" if initial is None else str(initial)
        self.counter = 0
        self.last: str | None = None
        self._lock = threading.Lock()

    def next_command(self) -> None:
        with self._lock:
            if self.kind == "counter":
                self.counter += 1
            self.last = None

    def __call__(self) -> str:
        with self._lock:
            if self.kind == "counter":
                value = str(self.counter)
            elif self.kind == "timestamp":
                value = str(time.time_ns() // 1_000_000)
            else:
                value = self.token
            self.last = value
            return value


class RequestOptions:
    """Headers and params for one append/read command: dynamic values + command headers."""

    def __init__(self, dyn_headers: Mapping[str, DynamicValue],
                 dyn_params: Mapping[str, DynamicValue], cmd: Mapping[str, Any]) -> None:
        extra = cmd.get("headers") or {}
        if not isinstance(extra, dict):
            raise CommandError("INVALID_ARGUMENT", f"headers must be an object, got {extra!r}")
        for value in (*dyn_headers.values(), *dyn_params.values()):
            value.next_command()  # a counter counts commands, whether sent or overridden
        overridden = {str(k).lower() for k in extra}
        self._headers = {n: d for n, d in dyn_headers.items() if n.lower() not in overridden}
        self._params = dict(dyn_params)
        self.headers: dict[str, Any] = {**self._headers,
                                        **{str(k): str(v) for k, v in extra.items()}}
        self.params: dict[str, Any] | None = dict(self._params) or None

    def report(self, result: dict[str, Any]) -> dict[str, Any]:
        sent = {n: d.last for n, d in self._headers.items() if d.last is not None}
        if sent:
            result["headersSent"] = sent
        params = {n: d.last for n, d in self._params.items() if d.last is not None}
        if params:
            result["paramsSent"] = params
        return result


# -- error mapping --------------------------------------------------------------------------


def classify(exc: BaseException) -> tuple[str, int | None]:
    """The suite's error code and the HTTP status (None when there was no response)."""
    if isinstance(exc, CommandError):
        return exc.code, exc.status
    if isinstance(exc, ds.DeliveryError) and exc.errors:
        code, status = classify(exc.errors[0])
        return code, status if status is not None else exc.status
    if isinstance(exc, ds.DurableStreamError):
        status = exc.status
        if isinstance(exc, (ds.StreamNotFoundError, ds.RetentionGoneError)):
            code = "NOT_FOUND"
        elif isinstance(exc, ds.StreamClosedError):
            code = "STREAM_CLOSED"
        elif isinstance(exc, (ds.SeqConflictError, ds.SequenceGapError)):
            code = "SEQUENCE_CONFLICT"
        elif isinstance(exc, ds.ConflictError):
            code = "CONFLICT"
        elif isinstance(exc, ds.InvalidOffsetError):
            code = "INVALID_OFFSET"
        elif isinstance(exc, ds.ParseError):
            code = "PARSE_ERROR"
        elif isinstance(exc, ds.TransportError):
            code = "TIMEOUT" if exc.timeout else "NETWORK_ERROR"
        elif status is not None:
            code = "UNEXPECTED_STATUS"
        elif isinstance(exc, ds.BadRequestError):
            code = "INVALID_ARGUMENT"  # refused before sending, e.g. a message that is not JSON
        else:
            code = "INTERNAL_ERROR"
        return code, status
    if isinstance(exc, TimeoutError):
        return "TIMEOUT", None
    if isinstance(exc, (ValueError, TypeError)):
        return "INVALID_ARGUMENT", None
    return "INTERNAL_ERROR", None


def error_result(command_type: str, exc: BaseException, path: str | None = None
                 ) -> dict[str, Any]:
    code, status = classify(exc)
    message = str(exc) or type(exc).__name__
    if path and path not in message:
        message = f"{message} (stream {path})"
    result: dict[str, Any] = {
        "type": "error",
        "success": False,
        "commandType": command_type,
        "errorCode": code,
        "message": message,
    }
    if status is not None:
        result["status"] = status
    if not isinstance(exc, CommandError):
        result["details"] = {"exception": type(exc).__name__}
    return result


# -- the adapter ----------------------------------------------------------------------------


class Adapter:
    def __init__(self) -> None:
        self.server_url = ""
        self.session = self._new_session()
        self.content_types: dict[str, str] = {}
        self.producers: dict[tuple[str, str, int], ds.IdempotentProducer] = {}
        self.dyn_headers: dict[str, DynamicValue] = {}
        self.dyn_params: dict[str, DynamicValue] = {}
        self.bench_handles: dict[str, ds.DurableStream] = {}
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "init": self.cmd_init,
            "create": self.cmd_create,
            "connect": self.cmd_connect,
            "append": self.cmd_append,
            "read": self.cmd_read,
            "head": self.cmd_head,
            "delete": self.cmd_delete,
            "close": self.cmd_close,
            "idempotent-append": self.cmd_idempotent_append,
            "idempotent-append-batch": self.cmd_idempotent_append_batch,
            "idempotent-close": self.cmd_idempotent_close,
            "idempotent-detach": self.cmd_idempotent_detach,
            "set-dynamic-header": self.cmd_set_dynamic_header,
            "set-dynamic-param": self.cmd_set_dynamic_param,
            "clear-dynamic": self.cmd_clear_dynamic,
            "validate": self.cmd_validate,
            "benchmark": self.cmd_benchmark,
            "shutdown": self.cmd_shutdown,
        }

    @staticmethod
    def _new_session() -> requests.Session:
        """One keep-alive pool shared by every handle, reader and producer of the adapter.

        Passing ``session=`` is public API; the library never closes a session it was given.
        """
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32,
                                                max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept-Encoding"] = "identity"
        return session

    # -- plumbing -------------------------------------------------------------------------
    def handle_line(self, line: str) -> tuple[dict[str, Any], bool]:
        """Answer one input line; the flag says whether to exit after answering."""
        try:
            cmd = json.loads(line)
        except ValueError as exc:
            return error_result("unknown", CommandError(
                "PARSE_ERROR", f"the command line is not JSON: {exc}")), False
        if not isinstance(cmd, dict) or not isinstance(cmd.get("type"), str):
            kind = cmd.get("type") if isinstance(cmd, dict) else None
            return error_result(str(kind or "unknown"), CommandError(
                "INVALID_ARGUMENT", f"a command is a JSON object with a string 'type': {line[:200]}"
            )), False
        return self.handle(cmd), cmd["type"] == "shutdown"

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind = cmd["type"]
        handler = self.handlers.get(kind)
        if handler is None:
            return error_result(kind, CommandError(
                "NOT_SUPPORTED", f"unknown command type {kind!r}"))
        path = cmd.get("path") if isinstance(cmd.get("path"), str) else None
        try:
            return handler(cmd)
        except Exception as exc:
            log.debug("%s failed", kind, exc_info=True)
            return error_result(kind, exc, path)

    def url(self, path: str) -> str:
        if not self.server_url:
            raise CommandError("INVALID_ARGUMENT", "send 'init' with serverUrl first")
        return self.server_url + path

    def handle_for(self, path: str, *, content_type: str | None = None,
                   headers: Any = None, params: Any = None) -> ds.DurableStream:
        return ds.DurableStream(
            self.url(path),
            content_type=content_type or self.content_types.get(path),
            headers=headers, params=params, session=self.session, timeout=HTTP_TIMEOUT,
        )

    def close_producers(self, keys: Iterable[tuple[str, str, int]] | None = None) -> None:
        for key in list(self.producers if keys is None else keys):
            producer = self.producers.pop(key, None)
            if producer is None:
                continue
            try:
                producer.close(timeout=2.0)
            except Exception as exc:  # best effort: this producer is being discarded
                log.info("discarding producer %s: %s", key, exc)

    def cleanup(self) -> None:
        self.close_producers()
        for handle in self.bench_handles.values():
            handle.close()
        self.bench_handles.clear()
        self.session.close()

    # -- lifecycle commands ---------------------------------------------------------------
    def cmd_init(self, cmd: dict[str, Any]) -> dict[str, Any]:
        server_url = _require(cmd, "serverUrl", str)
        self.close_producers()
        for handle in self.bench_handles.values():
            handle.close()
        self.bench_handles.clear()
        self.content_types.clear()
        self.dyn_headers.clear()
        self.dyn_params.clear()
        self.session.close()
        self.session = self._new_session()
        self.server_url = server_url.rstrip("/")
        return {
            "type": "init",
            "success": True,
            "clientName": CLIENT_NAME,
            "clientVersion": ds.__version__,
            "features": dict(FEATURES),
        }

    def cmd_shutdown(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"type": "shutdown", "success": True}

    # -- stream commands ------------------------------------------------------------------
    def cmd_create(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        content_type = cmd.get("contentType") or DEFAULT_CONTENT_TYPE
        handle = ds.DurableStream.create(
            self.url(path),
            content_type=content_type,
            ttl_seconds=_optional_int(cmd, "ttlSeconds", None),
            expires_at=cmd.get("expiresAt"),
            closed=bool(cmd.get("closed")),
            body=cmd.get("data"),
            headers=cmd.get("headers"),
            session=self.session,
            timeout=HTTP_TIMEOUT,
        )
        with handle:
            self.content_types[path] = handle.content_type or content_type
            return {"type": "create", "success": True, "status": 201 if handle.created else 200}

    def cmd_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        handle = ds.DurableStream.connect(self.url(path), headers=cmd.get("headers"),
                                          session=self.session, timeout=HTTP_TIMEOUT)
        with handle:
            if handle.content_type:
                self.content_types[path] = handle.content_type
            return {"type": "connect", "success": True, "status": 200}

    def cmd_head(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        with self.handle_for(path, headers=cmd.get("headers")) as handle:
            info = handle.head()
        if info.content_type:
            self.content_types[path] = info.content_type
        result: dict[str, Any] = {"type": "head", "success": True, "status": 200,
                                  "offset": info.offset, "streamClosed": info.closed}
        if info.content_type is not None:
            result["contentType"] = info.content_type
        if info.ttl_seconds is not None:
            result["ttlSeconds"] = info.ttl_seconds
        if info.expires_at is not None:
            result["expiresAt"] = info.expires_at
        return result

    def cmd_delete(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        with self.handle_for(path, headers=cmd.get("headers")) as handle:
            handle.delete()
        self.content_types.pop(path, None)
        # The server forgets producer state with the stream: cached producers are stale.
        self.close_producers([k for k in self.producers if k[0] == path])
        stale = self.bench_handles.pop(path, None)
        if stale is not None:
            stale.close()
        return {"type": "delete", "success": True, "status": 200}

    def cmd_close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        data = cmd.get("data")
        with self.handle_for(path, content_type=cmd.get("contentType"),
                             headers=cmd.get("headers")) as handle:
            final = handle.close_stream(final_message=data)
        return {"type": "close", "success": True, "status": 200, "finalOffset": final}

    def cmd_append(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        data = _require(cmd, "data", str)
        body: str | bytes = data
        if cmd.get("binary"):
            try:
                body = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise CommandError("INVALID_ARGUMENT", f"binary data is not base64: {exc}"
                                   ) from exc
        seq = cmd.get("seq")
        opts = RequestOptions(self.dyn_headers, self.dyn_params, cmd)
        content_type = self.content_types.get(path, DEFAULT_CONTENT_TYPE)
        with self.handle_for(path, content_type=content_type, headers=opts.headers,
                             params=opts.params) as handle:
            # The library retries 5xx/429 itself (the server stored nothing); a dropped
            # connection after the request was sent is reported, not repeated, unless
            # Stream-Seq makes a repeat detectable.
            offset = handle.append(body, seq=None if seq is None else str(seq))
        return opts.report({"type": "append", "success": True, "status": 200, "offset": offset})

    # -- reads ----------------------------------------------------------------------------
    def cmd_read(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        offset = cmd.get("offset") or "-1"
        if not isinstance(offset, str):
            raise CommandError("INVALID_ARGUMENT", f"offset must be a string, got {offset!r}")
        live_arg = cmd.get("live", False)
        live: Any
        if live_arg is None or live_arg is False:
            live = False
        elif live_arg is True or live_arg == "auto":
            live = "auto"
        elif live_arg in ("long-poll", "sse"):
            live = live_arg
        else:
            raise CommandError("INVALID_ARGUMENT", f"unknown live mode {live_arg!r}")
        timeout_ms = _optional_int(cmd, "timeoutMs", None)
        max_chunks = _optional_int(cmd, "maxChunks", DEFAULT_MAX_CHUNKS) or DEFAULT_MAX_CHUNKS
        wait_up_to_date = bool(cmd.get("waitForUpToDate"))
        self._check_encoding(cmd, path, live)
        opts = RequestOptions(self.dyn_headers, self.dyn_params, cmd)

        stop_after = None
        if live is not False:
            stop_after = max(timeout_ms if timeout_ms is not None else DEFAULT_LIVE_TIMEOUT_MS,
                             1) / 1000.0
        resp = ds.stream(
            self.url(path),
            offset=offset,
            live=live,
            headers=opts.headers,
            params=opts.params,
            session=self.session,
            timeout=HTTP_TIMEOUT,
            content_type=self.content_types.get(path),
            stop_after=stop_after,
            stop_at_up_to_date=wait_up_to_date,
        )
        with resp:
            if resp.content_type:
                self.content_types.setdefault(path, resp.content_type)
            if cmd.get("encoding") is not None and is_text_type(resp.content_type):
                raise CommandError("INVALID_ARGUMENT", (
                    f"encoding must not be used with the {resp.content_type} stream {path}: "
                    "text and JSON streams are sent as text (PROTOCOL §5.8)"), status=400)
            json_mode = is_json_type(resp.content_type)
            chunks: list[dict[str, Any]] = []
            seen_up_to_date = False
            stopped_early = False
            if live is False:
                chunks = self._catch_up(resp, json_mode)
                seen_up_to_date = resp.up_to_date
            else:
                for data, chunk_offset, up_to_date in self._chunks(resp, json_mode):
                    seen_up_to_date = seen_up_to_date or up_to_date
                    if data is not None:
                        chunks.append(chunk_of(data, chunk_offset))
                        if len(chunks) >= max_chunks:
                            stopped_early = True
                            break
                    if wait_up_to_date and up_to_date:
                        stopped_early = True
                        break
            # A live read that ran into its timeout has been following the stream: it is as
            # up to date as a long-poll that timed out with nothing new.
            timed_out = (live is not False and not stopped_early and not resp.closed
                         and not (wait_up_to_date and resp.up_to_date))
            up_to_date = resp.up_to_date or (timed_out and seen_up_to_date)
            result: dict[str, Any] = {
                "type": "read",
                "success": True,
                # The last response's status: 204 when a long-poll timed out with nothing new.
                "status": resp.status,
                "chunks": chunks,
                "offset": resp.offset,
                "upToDate": bool(up_to_date),
                "streamClosed": resp.closed,
            }
            if resp.cursor:
                result["cursor"] = resp.cursor
        return opts.report(result)

    @staticmethod
    def _check_encoding(cmd: Mapping[str, Any], path: str, live: Any) -> None:
        """``encoding`` is a read parameter of SSE only (PROTOCOL §5.8): refuse it elsewhere.

        The library needs no such parameter (binary SSE data is decoded by itself, from the
        response header), so a valid one changes nothing.
        """
        encoding = cmd.get("encoding")
        if encoding is None:
            return
        if live != "sse":
            raise CommandError("INVALID_ARGUMENT", (
                f"encoding={encoding!r} is only valid with live='sse' (PROTOCOL §5.8); the read "
                f"of {path} asked for live={cmd.get('live', False)!r}"), status=400)
        if encoding != "base64":
            raise CommandError("INVALID_ARGUMENT", (
                f"unsupported encoding {encoding!r} for the read of {path}; only 'base64' "
                "exists"), status=400)

    @staticmethod
    def _catch_up(resp: ds.StreamResponse, json_mode: bool) -> list[dict[str, Any]]:
        """A catch-up read as one chunk holding everything up to the tail (if anything)."""
        if json_mode:
            items: list[Any] = []
            for batch in resp.iter_json_batches():
                items.extend(batch.items)
            if not items:
                return []
            return [{"data": compact_json(items), "offset": resp.offset}]
        data = b"".join(resp.iter_bytes())
        return [chunk_of(data, resp.offset)] if data else []

    @staticmethod
    def _chunks(resp: ds.StreamResponse, json_mode: bool
                ) -> Iterator[tuple[bytes | None, str, bool]]:
        """(data or None for a pure notification, offset after it, up-to-date) per chunk."""
        if json_mode:
            for batch in resp.iter_json_batches():
                data = compact_json(batch.items).encode("utf-8") if batch.items else None
                yield data, batch.offset, batch.up_to_date
        else:
            for event in resp.iter_events():
                yield event.data or None, event.offset, event.up_to_date

    # -- idempotent producer ----------------------------------------------------------------
    def new_producer(self, path: str, cmd: Mapping[str, Any], *, linger_ms: float,
                     max_in_flight: int, max_batch_items: int | None = None
                     ) -> ds.IdempotentProducer:
        return ds.IdempotentProducer(
            self.url(path),
            _require(cmd, "producerId", str),
            epoch=_optional_int(cmd, "epoch", 0) or 0,
            auto_claim=bool(cmd.get("autoClaim")),
            linger_ms=linger_ms,
            max_in_flight=max_in_flight,
            max_batch_items=max_batch_items,
            delivery_timeout_ms=PRODUCER_DELIVERY_TIMEOUT_MS,
            request_timeout=HTTP_TIMEOUT,
            content_type=self.content_types.get(path),
            headers=cmd.get("headers"),
            session=self.session,
            flush_at_exit=False,
        )

    def cached_producer(self, path: str, cmd: Mapping[str, Any]) -> ds.IdempotentProducer:
        """One producer per (path, producerId, epoch), kept across commands (seq continues)."""
        key = (path, _require(cmd, "producerId", str), _optional_int(cmd, "epoch", 0) or 0)
        producer = self.producers.get(key)
        if producer is None:
            producer = self.new_producer(path, cmd, linger_ms=0, max_in_flight=1)
            self.producers[key] = producer
        return producer

    @staticmethod
    def _message(cmd: Mapping[str, Any], data: str) -> str | bytes:
        if cmd.get("binary"):
            try:
                return base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise CommandError("INVALID_ARGUMENT", f"binary data is not base64: {exc}"
                                   ) from exc
        return data

    def cmd_idempotent_append(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        message = self._message(cmd, _require(cmd, "data", str))
        producer = self.cached_producer(path, cmd)
        duplicates = producer.stats().duplicates
        producer.append(message)
        producer.flush(timeout=PRODUCER_FLUSH_TIMEOUT_S)
        result: dict[str, Any] = {
            "type": "idempotent-append",
            "success": True,
            "status": 200,
            "producerEpoch": producer.epoch,
            "producerSeq": producer.next_seq - 1,
            "duplicate": producer.stats().duplicates > duplicates,
        }
        if producer.last_offset:
            result["offset"] = producer.last_offset
        return result

    def cmd_idempotent_append_batch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        items = _require(cmd, "items", list)
        if not all(isinstance(item, str) for item in items):
            raise CommandError("INVALID_ARGUMENT", "items must be a list of strings")
        max_in_flight = _optional_int(cmd, "maxInFlight", 1) or 1
        if max_in_flight > 1:
            # One batch per item, sent concurrently: requests may arrive out of order and the
            # producer must recover from the server's 409 gap answers.
            producer = self.new_producer(path, cmd, linger_ms=0, max_in_flight=max_in_flight,
                                         max_batch_items=1)
        else:
            producer = self.new_producer(path, cmd, linger_ms=1000, max_in_flight=1)
        try:
            for item in items:
                producer.append(self._message(cmd, item))
            producer.flush(timeout=PRODUCER_FLUSH_TIMEOUT_S)
        finally:
            try:
                producer.close(timeout=5.0)  # detach: the stream stays open
            except Exception as exc:  # the flush above already reported any failure
                log.info("closing the batch producer for %s: %s", path, exc)
        return {"type": "idempotent-append-batch", "success": True, "status": 200,
                "producerSeq": producer.next_seq - 1}

    def cmd_idempotent_close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        data = cmd.get("data")
        message = self._message(cmd, data) if isinstance(data, str) and data else None
        producer = self.cached_producer(path, cmd)
        final = producer.close_stream(message, timeout=PRODUCER_FLUSH_TIMEOUT_S)
        result: dict[str, Any] = {"type": "idempotent-close", "success": True, "status": 200}
        if final:
            result["finalOffset"] = final
        return result

    def cmd_idempotent_detach(self, cmd: dict[str, Any]) -> dict[str, Any]:
        path = _path(cmd)
        key = (path, _require(cmd, "producerId", str), _optional_int(cmd, "epoch", 0) or 0)
        producer = self.producers.pop(key, None)
        if producer is not None:
            producer.close(timeout=PRODUCER_FLUSH_TIMEOUT_S)
        return {"type": "idempotent-detach", "success": True, "status": 200}

    # -- dynamic headers and params -------------------------------------------------------
    def cmd_set_dynamic_header(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = _require(cmd, "name", str)
        self.dyn_headers[name] = DynamicValue(_require(cmd, "valueType", str),
                                              cmd.get("initialValue"))
        return {"type": "set-dynamic-header", "success": True}

    def cmd_set_dynamic_param(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = _require(cmd, "name", str)
        self.dyn_params[name] = DynamicValue(_require(cmd, "valueType", str),
                                             cmd.get("initialValue"))
        return {"type": "set-dynamic-param", "success": True}

    def cmd_clear_dynamic(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.dyn_headers.clear()
        self.dyn_params.clear()
        return {"type": "clear-dynamic", "success": True}

    # -- validation -------------------------------------------------------------------------
    def cmd_validate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        target = _require(cmd, "target", dict)
        kind = target.get("target")
        if kind == "retry-options":
            self._validate_retry_options(target)
        elif kind == "idempotent-producer":
            self._validate_producer(target)
        else:
            raise CommandError("NOT_SUPPORTED", f"unknown validation target {kind!r}")
        return {"type": "validate", "success": True}

    @staticmethod
    def _validate_retry_options(target: Mapping[str, Any]) -> None:
        defaults = ds.RetryPolicy()
        initial = target.get("initialDelayMs", defaults.initial_delay_ms)
        default_max = defaults.max_delay_ms
        if isinstance(initial, (int, float)) and not isinstance(initial, bool):
            default_max = max(default_max, initial)  # only an explicit maxDelayMs can clash
        ds.RetryPolicy(
            max_retries=target.get("maxRetries", defaults.max_retries),
            initial_delay_ms=initial,
            max_delay_ms=target.get("maxDelayMs", default_max),
            multiplier=target.get("multiplier", defaults.multiplier),
        )

    def _validate_producer(self, target: Mapping[str, Any]) -> None:
        max_batch_bytes = target.get("maxBatchBytes", 1024 * 1024)
        buffer = 64 * 1024 * 1024
        if isinstance(max_batch_bytes, int) and not isinstance(max_batch_bytes, bool):
            buffer = max(buffer, max_batch_bytes)  # the buffer must hold one batch
        base = self.server_url or "http://127.0.0.1"
        producer = ds.IdempotentProducer(
            f"{base}/conformance-validate",
            target.get("producerId", "conformance-validate"),
            epoch=target.get("epoch", 0),
            max_batch_bytes=max_batch_bytes,
            max_batch_items=target.get("maxBatchItems"),
            max_buffer_bytes=buffer,
            session=self.session,
            flush_at_exit=False,
        )
        producer.close()  # nothing was appended: no request is made

    # -- benchmarks -------------------------------------------------------------------------
    def cmd_benchmark(self, cmd: dict[str, Any]) -> dict[str, Any]:
        operation = _require(cmd, "operation", dict)
        op = operation.get("op")
        runner = {
            "append": self._bench_append,
            "read": self._bench_read,
            "roundtrip": self._bench_roundtrip,
            "create": self._bench_create,
            "throughput_append": self._bench_throughput_append,
            "throughput_read": self._bench_throughput_read,
        }.get(op if isinstance(op, str) else "")
        if runner is None:
            raise CommandError("NOT_SUPPORTED", f"unknown benchmark operation {op!r}")
        duration_ns, messages, nbytes = runner(operation)
        seconds = max(duration_ns, 1) / 1e9
        return {
            "type": "benchmark",
            "success": True,
            "iterationId": cmd.get("iterationId"),
            "durationNs": str(duration_ns),
            "metrics": {
                "bytesTransferred": nbytes,
                "messagesProcessed": messages,
                "opsPerSecond": messages / seconds,
                "bytesPerSecond": nbytes / seconds,
            },
        }

    def _bench_handle(self, path: str) -> ds.DurableStream:
        handle = self.bench_handles.get(path)
        if handle is None:
            handle = self.handle_for(path)
            self.bench_handles[path] = handle
        return handle

    def _payload(self, path: str, size: int) -> bytes:
        if is_json_type(self.content_types.get(path)):
            return json.dumps({"data": "x" * size}).encode()
        return b"*" * size

    def _bench_append(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        path = _path(op)
        size = _optional_int(op, "size", 100) or 0
        handle = self._bench_handle(path)
        payload = self._payload(path, size)
        start = time.perf_counter_ns()
        handle.append(payload)
        return time.perf_counter_ns() - start, 1, size

    def _bench_read(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        path = _path(op)
        handle = self._bench_handle(path)
        start = time.perf_counter_ns()
        with handle.stream(offset=op.get("offset") or "-1") as resp:
            data = resp.read_bytes()
        return time.perf_counter_ns() - start, 1, len(data)

    def _bench_create(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        path = _path(op)
        content_type = op.get("contentType") or DEFAULT_CONTENT_TYPE
        start = time.perf_counter_ns()
        handle = ds.DurableStream.create(self.url(path), content_type=content_type,
                                         session=self.session, timeout=HTTP_TIMEOUT)
        duration = time.perf_counter_ns() - start
        handle.close()
        self.content_types[path] = content_type
        return duration, 1, 0

    def _bench_roundtrip(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        """Create a stream, follow it live, append, and stop at the first data delivered."""
        path = _path(op)
        size = _optional_int(op, "size", 100) or 0
        content_type = op.get("contentType") or DEFAULT_CONTENT_TYPE
        live: Any = op.get("live") or "long-poll"
        if live not in ("long-poll", "sse"):
            raise CommandError("INVALID_ARGUMENT", f"roundtrip live must be long-poll or sse, "
                               f"got {live!r}")
        payload = (json.dumps({"data": "x" * size}).encode() if is_json_type(content_type)
                   else b"*" * size)
        received: list[bytes] = []
        failure: list[BaseException] = []
        delivered = threading.Event()
        start = time.perf_counter_ns()
        handle = ds.DurableStream.create(self.url(path), content_type=content_type,
                                         session=self.session, timeout=HTTP_TIMEOUT)
        self.content_types[path] = content_type
        try:
            resp = handle.stream(offset="-1", live=live, stop_after=BENCH_TIMEOUT_S)

            def follow() -> None:
                try:
                    for data in resp.iter_bytes():
                        received.append(data)
                        break
                except BaseException as exc:  # handed to the command thread
                    failure.append(exc)
                finally:
                    delivered.set()

            reader = threading.Thread(target=follow, name="bench-roundtrip", daemon=True)
            reader.start()
            try:
                handle.append(payload)
                delivered.wait(BENCH_TIMEOUT_S)
            finally:
                resp.close()
                reader.join(5.0)
            duration = time.perf_counter_ns() - start
        finally:
            handle.close()
        if failure:
            raise failure[0]
        if not received:
            raise CommandError("TIMEOUT", f"roundtrip on {path}: nothing was delivered")
        return duration, 1, size + len(received[0])

    def _bench_throughput_append(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        path = _path(op)
        count = _optional_int(op, "count", 1000) or 0
        size = _optional_int(op, "size", 100) or 1
        if path not in self.content_types:
            try:
                ds.DurableStream.create(self.url(path), content_type=DEFAULT_CONTENT_TYPE,
                                        session=self.session, timeout=HTTP_TIMEOUT).close()
                self.content_types[path] = DEFAULT_CONTENT_TYPE
            except ds.StreamExistsError:
                pass  # there already, with another configuration: the producer learns it
        payload = self._payload(path, size)
        start = time.perf_counter_ns()
        # A fresh producer id per iteration: each run is a new writer (epoch 0, seq 0).
        producer = ds.IdempotentProducer(
            self.url(path), f"bench-{uuid.uuid4().hex}",
            content_type=self.content_types.get(path), session=self.session,
            delivery_timeout_ms=BENCH_TIMEOUT_S * 1000, flush_at_exit=False,
        )
        try:
            for _ in range(count):
                producer.append(payload)
            producer.flush(timeout=BENCH_TIMEOUT_S)
            duration = time.perf_counter_ns() - start
        finally:
            producer.close(timeout=5.0)
        return duration, count, count * size

    def _bench_throughput_read(self, op: Mapping[str, Any]) -> tuple[int, int, int]:
        path = _path(op)
        handle = self._bench_handle(path)
        start = time.perf_counter_ns()
        with handle.stream(offset="-1") as resp:
            if is_json_type(resp.content_type):
                messages = [item for batch in resp.iter_json_batches() for item in batch.items]
                duration = time.perf_counter_ns() - start
                nbytes = sum(len(compact_json(m).encode("utf-8")) for m in messages)
                return duration, len(messages), nbytes
            data = resp.read_bytes()
        return time.perf_counter_ns() - start, 1, len(data)


# -- main loop ------------------------------------------------------------------------------


def main() -> int:
    # stdout is the protocol channel: keep it for results and send everything else to stderr.
    out = sys.stdout
    sys.stdout = sys.stderr
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("DS_ADAPTER_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    adapter = Adapter()
    stdin = sys.stdin.buffer
    try:
        while True:
            raw = stdin.readline()  # splits on b"\n" only, never on U+2028/U+2029
            if not raw:
                break  # the runner went away
            line = raw.decode("utf-8", errors="replace").strip(" \t\r\n")
            if not line:
                continue
            result, stop = adapter.handle_line(line)
            try:
                out.write(json.dumps(result, ensure_ascii=True) + "\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                break
            if stop:
                break
    finally:
        try:
            adapter.cleanup()
        except Exception as exc:
            log.info("cleanup: %s", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

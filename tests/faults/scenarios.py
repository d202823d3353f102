"""The end-to-end fault scenarios of issue 6, as functions returning a :class:`Tally`.

The pytest files in this package assert on the results; ``benchmarks/reliability.py`` runs
the same functions and prints the table. Every scenario is bounded in message count and in
time, talks to the real reference server on loopback only, and stops by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

import durable_streams
from durable_streams import (
    BufferFullError,
    DeliveryError,
    DurableStream,
    IdempotentProducer,
    RetryPolicy,
)
from durable_streams.testing import ReferenceServer

from .chaos_proxy import ChaosProxy, FaultRates
from .harness import (
    Tally,
    count_fds,
    count_sockets,
    free_port,
    head_offset,
    read_json_stream,
    rss_bytes,
    tally,
    thread_key,
)

JSON = "application/json"
CHILDREN = Path(__file__).with_name("children.py")

#: The fault mix of scenario 1: ~10% of producer requests hit a fault.
CHAOS_RATES = FaultRates(drop_before=0.03, drop_after=0.03, reset_mid=0.03, delay=0.01,
                         delay_min=0.0, delay_max=0.3)
#: Read timeout below the longest injected delay: some delayed answers become timeouts.
CHAOS_TIMEOUT = (2.0, 0.2)
FAST_RETRY = RetryPolicy(initial_delay_ms=10, max_delay_ms=250)


def full_run() -> bool:
    """``DS_FULL_FAULTS=1`` selects the issue's full message counts."""
    return os.environ.get("DS_FULL_FAULTS") == "1"


def new_json_stream(base_url: str, prefix: str) -> str:
    url = f"{base_url}/{prefix}-{uuid.uuid4().hex[:12]}"
    DurableStream.create(url, content_type=JSON).close()
    return url


def _append_from_threads(producer: IdempotentProducer, groups: list[str], per_group: int
                         ) -> tuple[list[str], list[BaseException]]:
    """Each thread appends ``<group>:0..per_group-1`` in order; returns what was accepted."""
    accepted: list[list[str]] = [[] for _ in groups]
    failures: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(per_group):
                message = f"{groups[k]}:{i}"
                producer.append(json.dumps(message))
                accepted[k].append(message)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(k,), name=f"appender-{k}")
               for k in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return [m for group in accepted for m in group], failures


# -- 1. chaos proxy ------------------------------------------------------------------------
def run_chaos(base_url: str, messages: int, *, threads: int = 4, seed: int = 1,
              rates: FaultRates = CHAOS_RATES) -> Tally:
    """``messages`` from ``threads`` threads through a :class:`ChaosProxy`."""
    url = new_json_stream(base_url, "chaos")
    path = url[len(base_url):]
    start = time.monotonic()
    with ChaosProxy(base_url, rates, seed=seed) as proxy:
        producer = IdempotentProducer(
            proxy.url + path, "chaos", content_type=JSON, linger_ms=2, max_batch_items=10,
            request_timeout=CHAOS_TIMEOUT, retry=FAST_RETRY, delivery_timeout_ms=600_000,
        )
        try:
            sent, failures = _append_from_threads(
                producer, [f"t{k}" for k in range(threads)], messages // threads)
            producer.flush(timeout=600)
        finally:
            producer.close(timeout=30)
        wall = time.monotonic() - start
        faults = proxy.stats()
    items, _ = read_json_stream(url)
    stats = producer.stats()
    result = tally("1 chaos proxy", sent, items, acked=stats.messages_acked,
                   ordered_by=thread_key, wall=wall)
    result.notes = {k: faults[k] for k in ("drop_before", "drop_after", "reset_mid", "delay")}
    result.notes["retries"] = stats.retries
    result.notes["dup_acks"] = stats.duplicates
    result.details = {"failures": failures, "stats": stats, "proxy": faults}
    if failures:
        result.problems.append(f"append raised: {failures[0]!r}")
    return result


# -- 2. server restart ---------------------------------------------------------------------
def reading_available() -> str | None:
    """None when ``durable_streams.stream`` can follow live; else why not."""
    try:
        from durable_streams import reading
    except ImportError as exc:  # pragma: no cover
        return f"durable_streams.reading does not import: {exc}"
    if not hasattr(reading, "StreamResponse") or not hasattr(reading.StreamResponse,
                                                             "iter_json"):
        return "durable_streams.reading has no StreamResponse.iter_json yet"
    return None


class _Follower(threading.Thread):
    """A live reader (``durable_streams.stream``) collecting every JSON item until EOF."""

    def __init__(self, url: str, mode: str, budget: float) -> None:
        super().__init__(name=f"follower-{mode}", daemon=True)
        self.url, self.mode, self.budget = url, mode, budget
        self.items: list[Any] = []
        #: (offset after the chunk, items in it, monotonic time received)
        self.chunks: list[tuple[str, int, float]] = []
        self.error: BaseException | None = None
        self.eof = False
        self.response: Any = None
        self.started_evt = threading.Event()

    def run(self) -> None:
        try:
            self.response = durable_streams.stream(
                self.url, offset="-1", live=self.mode,  # type: ignore[arg-type]
                retry=RetryPolicy(max_retries=200, initial_delay_ms=20, max_delay_ms=250),
                stop_after=self.budget,
            )
            self.started_evt.set()
            with self.response:
                for batch in self.response.iter_json_batches():
                    self.items.extend(batch.items)
                    self.chunks.append((batch.offset, len(batch.items), time.monotonic()))
                self.eof = bool(self.response.closed)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.started_evt.set()


def run_restart(data_dir: Path, messages: int, *, restarts: int = 2,
                readers: tuple[str, ...] = ("long-poll", "sse"), threads: int = 4) -> Tally:
    """Kill -9 and restart an on-disk server ``restarts`` times while producing and reading."""
    server = ReferenceServer(data_dir=data_dir, port=free_port()).start()
    try:
        url = new_json_stream(server.url, "restart")
        followers = [_Follower(url, mode, budget=240) for mode in readers]
        for f in followers:
            f.start()
        for f in followers:
            f.started_evt.wait(30)
        producer = IdempotentProducer(
            url, "restart", content_type=JSON, linger_ms=2, max_batch_items=10,
            max_batch_bytes=2048, max_buffer_bytes=8192,  # appends wait while it is down
            retry=RetryPolicy(initial_delay_ms=20, max_delay_ms=250),
            delivery_timeout_ms=120_000,
        )
        per_group = messages // threads
        marks = [threading.Event() for _ in range(restarts)]
        kills: list[dict[str, Any]] = []

        def killer() -> None:
            for mark in marks:
                mark.wait(300)
                acked_before = producer.last_offset
                server.kill()
                down = time.monotonic()
                server.start()
                up = time.monotonic()
                kills.append({"acked_offset_before_kill": acked_before,
                              "offset_after_restart": head_offset(url),
                              "downtime_s": round(up - down, 3), "killed_at": down,
                              "up_at": up})

        killer_thread = threading.Thread(target=killer, name="killer", daemon=True)
        killer_thread.start()
        start = time.monotonic()
        accepted: list[list[str]] = [[] for _ in range(threads)]
        failures: list[BaseException] = []

        def run(k: int) -> None:
            try:
                for i in range(per_group):
                    message = f"r{k}:{i}"
                    producer.append(json.dumps(message))
                    accepted[k].append(message)
                    if k == 0:
                        n = i + 1
                        for j, mark in enumerate(marks):
                            if n == per_group * (j + 1) // (restarts + 1):
                                mark.set()
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
            finally:
                if k == 0:
                    for mark in marks:
                        mark.set()

        appenders = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for t in appenders:
            t.start()
        for t in appenders:
            t.join(300)
        killer_thread.join(120)
        try:
            producer.flush(timeout=120)
            producer.close_stream()  # EOF ends the live readers
        finally:
            producer.close(timeout=30)
        wall = time.monotonic() - start
        for f in followers:
            f.join(60)
        items, _ = read_json_stream(url)
        sent = [m for group in accepted for m in group]
        stats = producer.stats()
        result = tally(f"2 restart x{restarts} (disk)", sent, items,
                       acked=stats.messages_acked, ordered_by=thread_key, wall=wall)
        log = server.log_tail(200_000)
        reconciled = re.findall(r"Offset mismatch[^\n]*", log)
        # Messages the server had written to its file but not to its metadata (producer
        # state included) when it was killed: recovery keeps them, and a retry of their
        # (epoch, seq) is then accepted a second time (PROTOCOL §5.2.1 Atomicity).
        unrecorded: list[Any] = []
        for path, lmdb_offset, file_offset in re.findall(
                r"Offset mismatch for (\S+): LMDB says (\S+), file says (\S+)\.", log):
            if url.endswith(path):
                after_meta = _read_from(url, lmdb_offset)
                after_file = _read_from(url, file_offset)
                unrecorded += after_meta[:len(after_meta) - len(after_file)]
        duplicated = sorted({m for m in items if items.count(m) > 1}) if result.duplicates \
            else []
        by_server = set(unrecorded)
        result.notes = {"restarts": len(kills), "retries": stats.retries,
                        "dup_acks": stats.duplicates,
                        "dups_by_server": sum(1 for m in duplicated if m in by_server)}
        for f in followers:
            if f.items == items and f.eof:
                result.notes[f"reader_{f.mode}"] = "exact"
            else:
                back = rewinds(f.chunks)
                gap_free = first_occurrences(f.items) == first_occurrences(items)
                result.notes[f"reader_{f.mode}"] = (
                    f"{len(f.items) - len(items):+d} items, {len(back)} server rewinds, "
                    f"{'no gap' if gap_free else 'GAP'}, eof={f.eof}")
        if failures:
            result.problems.append(f"append raised: {failures[0]!r}")
        for kill in kills:
            if kill["offset_after_restart"] < kill["acked_offset_before_kill"]:
                result.problems.append(f"server lost acknowledged data: {kill}")
        for f in followers:
            if f.error is not None or not f.eof:
                result.problems.append(f"{f.mode} reader: error={f.error!r} eof={f.eof}")
            elif first_occurrences(f.items) != first_occurrences(items):
                result.problems.append(f"{f.mode} reader: gap")
        result.details = {
            "failures": failures, "kills": kills, "followers": followers, "items": items,
            "duplicated": duplicated,
            "server_reconciled": reconciled, "server_unrecorded": unrecorded, "stats": stats,
        }
        return result
    finally:
        server.stop()


def first_occurrences(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def rewinds(chunks: list[tuple[str, int, float]]) -> list[tuple[str, str]]:
    """(offset before, offset after) wherever a response moved a reader backwards."""
    out = []
    high = ""
    for offset, _, _ in chunks:
        if high and offset < high:
            out.append((high, offset))
        high = max(high, offset)
    return out


def _read_from(url: str, offset: str) -> list[Any]:
    items: list[Any] = []
    while True:
        response = requests.get(url, params={"offset": offset}, timeout=10)
        response.raise_for_status()
        if response.content:
            items.extend(json.loads(response.content))
        offset = response.headers["Stream-Next-Offset"]
        if response.headers.get("Stream-Up-To-Date") == "true":
            return items


# -- 3. server down longer than the buffer -------------------------------------------------
BUF_MESSAGE_PAD = 8 * 1024 - 32


def _buf_message(i: int) -> str:
    return f"b:{i}|" + "x" * BUF_MESSAGE_PAD


def run_buffer_full(data_dir: Path, *, max_buffer_bytes: int = 8 * 1024 * 1024,
                    max_block_ms: float = 300, extra_attempts: int = 5) -> Tally:
    """Kill the server, append until BufferFullError, measure, restart, deliver."""
    server = ReferenceServer(data_dir=data_dir, port=free_port()).start()
    try:
        url = new_json_stream(server.url, "buffer")
        producer = IdempotentProducer(
            url, "buffer", content_type=JSON, max_batch_bytes=256 * 1024,
            max_buffer_bytes=max_buffer_bytes, max_block_ms=max_block_ms,
            retry=RetryPolicy(initial_delay_ms=20, max_delay_ms=250),
            delivery_timeout_ms=120_000,
        )
        start = time.monotonic()
        accepted = 0
        for i in range(20):  # warm up threads and connections before the baseline
            producer.append(json.dumps(_buf_message(i)))
            accepted += 1
        producer.flush(timeout=30)
        rss_before = rss_bytes()
        server.kill()
        blocked: list[float] = []
        max_pending = 0
        first_full_at = None
        for i in range(accepted, accepted + 100_000):
            t0 = time.monotonic()
            try:
                producer.append(json.dumps(_buf_message(i)))
            except BufferFullError:
                blocked.append(time.monotonic() - t0)
                first_full_at = i
                break
            accepted += 1
            max_pending = max(max_pending, producer.pending_bytes)
        for _ in range(extra_attempts):  # the server stays down: every attempt must fail
            t0 = time.monotonic()
            try:
                producer.append(json.dumps(_buf_message(10**9)))
            except BufferFullError:
                blocked.append(time.monotonic() - t0)
            else:  # pragma: no cover - would be a bug; counted as accepted and checked
                accepted += 1
            max_pending = max(max_pending, producer.pending_bytes)
        rss_full = rss_bytes()
        down_for = None
        server.start()
        producer.flush(timeout=120)
        producer.close(timeout=30)
        wall = time.monotonic() - start
        del down_for
        items, _ = read_json_stream(url)
        sent = [_buf_message(i) for i in range(accepted)]
        stats = producer.stats()
        result = tally("3 buffer full, server down", sent, items, acked=stats.messages_acked,
                       wall=wall)
        growth = rss_full - rss_before
        result.notes = {
            "buffer_MiB": max_buffer_bytes // (1 << 20),
            "rss_growth_MiB": round(growth / (1 << 20), 1),
            "block_ms": f"{min(blocked) * 1000:.0f}-{max(blocked) * 1000:.0f}" if blocked
            else "none",
        }
        if first_full_at is None or len(blocked) != 1 + extra_attempts:
            result.problems.append(f"BufferFullError not raised every time: {blocked}")
        elif not all(max_block_ms / 1000 * 0.95 <= b <= max_block_ms / 1000 + 2 for b in blocked):
            result.problems.append(f"append blocked for {blocked}, not max_block_ms")
        if max_pending > max_buffer_bytes:
            result.problems.append(f"pending {max_pending} > max_buffer_bytes")
        if growth > 3 * max_buffer_bytes:
            result.problems.append(f"RSS grew {growth} bytes for a {max_buffer_bytes} buffer")
        result.details = {
            "blocked": blocked, "max_pending": max_pending, "rss_growth": growth,
            "first_full_at": first_full_at, "max_buffer_bytes": max_buffer_bytes,
            "max_block_ms": max_block_ms,
        }
        return result
    finally:
        server.stop()


# -- 4. producer process killed ------------------------------------------------------------
def _child(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILDREN), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def run_producer_kill(base_url: str, *, kill_after_acked: int = 1999, kill_lead: int = 250,
                      resume_messages: int = 1000) -> Tally:
    """kill -9 a producing process mid-run; restart with the same id and auto_claim."""
    url = new_json_stream(base_url, "pkill")
    start = time.monotonic()
    child = _child(["crash_writer", url, "pk", "1000000"])
    assert child.stdout is not None
    last_acked = -1
    killed = False
    deadline = time.monotonic() + 60
    lines: list[str] = []
    for line in child.stdout:  # ends when the child dies
        lines.append(line)
        word, _, num = line.strip().partition(" ")
        if word == "ACKED":
            last_acked = int(num)
        elif (word == "APPENDED" and last_acked >= kill_after_acked and not killed
              and int(num) >= last_acked + kill_lead):
            child.send_signal(signal.SIGKILL)  # mid-run: messages after last_acked pending
            killed = True
        if time.monotonic() > deadline and not killed:
            child.kill()
            killed = True
    child.wait(30)
    assert child.stderr is not None
    stderr = child.stderr.read()
    child.stderr.close()
    child.stdout.close()
    acked_by_dead = max((int(ln.split()[1]) for ln in lines if ln.startswith("ACKED")),
                        default=-1) + 1
    appended_seen = max((int(ln.split()[1]) for ln in lines if ln.startswith("APPENDED")),
                        default=-1) + 1
    items_after_kill, _ = read_json_stream(url)
    landed = sum(1 for m in items_after_kill if isinstance(m, str) and m.startswith("A:"))

    resumed = subprocess.run(
        [sys.executable, str(CHILDREN), "resume_writer", url, "pk", str(resume_messages)],
        capture_output=True, text=True, timeout=60)
    resume_info = json.loads(resumed.stdout.strip().splitlines()[-1]) if resumed.stdout else {}
    dead_epoch = next((ln.split()[1] for ln in lines if ln.startswith("EPOCH")), "0")
    # The dead process's epoch must be fenced now: a late request from it is refused.
    zombie = requests.post(url, data=b'["zombie"]', timeout=10, headers={
        "Content-Type": JSON, "Producer-Id": "pk", "Producer-Epoch": dead_epoch,
        "Producer-Seq": str(10**6)})
    wall = time.monotonic() - start
    items, _ = read_json_stream(url)
    a_items = [m for m in items if isinstance(m, str) and m.startswith("A:")]
    # What must hold: every message the dead process saw acknowledged is there once, in
    # order; of the rest (its at-least-once window) a prefix may have landed, once each.
    sent = [f"A:{i}" for i in range(max(landed, acked_by_dead))]
    sent += [f"B:{i}" for i in range(resume_messages)]
    result = tally("4 producer kill -9 + reclaim", sent, items,
                   acked=acked_by_dead + int(resume_info.get("acked", 0)),
                   ordered_by=thread_key, wall=wall)
    window = appended_seen - acked_by_dead
    result.notes = {
        "window_appended_unacked>=": window,
        "window_landed": landed - acked_by_dead,
        "epochs": f"{dead_epoch}->{resume_info.get('epoch')}",
        "zombie_status": zombie.status_code,
    }
    result.details = {
        "acked_by_dead": acked_by_dead, "appended_seen": appended_seen, "landed": landed,
        "dead_epoch": int(dead_epoch),
        "a_items": a_items, "resume": resume_info, "resume_rc": resumed.returncode,
        "resume_stderr": resumed.stderr, "zombie_status": zombie.status_code,
        "zombie_epoch": zombie.headers.get("Producer-Epoch"), "child_stderr": stderr,
        "killed": killed,
    }
    if not killed:
        result.problems.append("the writer was not killed mid-run")
    if a_items != [f"A:{i}" for i in range(len(a_items))]:
        result.problems.append("the dead process's messages are not a prefix")
    if zombie.status_code != 403 or resumed.returncode != 0:
        result.problems.append(f"dead epoch not fenced ({zombie.status_code}) or restart "
                               f"failed ({resumed.returncode})")
    return result


def run_two_writers(base_url: str, rates: FaultRates, *, seed: int = 1,
                    per_writer: int = 2000) -> Tally:
    """Two live producers sharing one id, both ``auto_claim=True`` (a zombie that is not
    dead), through a chaos proxy: they keep taking the epoch from each other."""
    url = new_json_stream(base_url, "twowriters")
    sent: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = time.monotonic()
    with ChaosProxy(base_url, rates, seed=seed) as proxy:
        producers = [IdempotentProducer(
            proxy.url + url[len(base_url):], "shared-id", auto_claim=True, content_type=JSON,
            max_batch_items=10, linger_ms=1, request_timeout=CHAOS_TIMEOUT, retry=FAST_RETRY,
            delivery_timeout_ms=60_000) for _ in range(2)]

        def run(k: int) -> None:
            try:
                for i in range(per_writer):
                    message = f"w{k}:{i}"
                    producers[k].append(json.dumps(message))
                    with lock:
                        sent.append(message)
                producers[k].close(timeout=60)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        faults = proxy.stats()
    items, _ = read_json_stream(url)
    result = tally("4b two live writers, one id", sent, items,
                   acked=sum(p.stats().messages_acked for p in producers),
                   wall=time.monotonic() - start)
    result.order_ok = thread_order_ok(first_occurrences(
        [m for m in items if isinstance(m, str)]))
    result.notes = {"claims": "+".join(str(p.stats().epoch_claims) for p in producers),
                    "drop_after": faults["drop_after"]}
    result.details = {"errors": errors, "items": items}
    if errors:
        result.problems.append(f"writer raised {errors[0]!r}")
    return result


def run_in_doubt_hole(base_url: str) -> Tally:
    """Batch A times out (every answer lost) while batch B, already stored under (E, 1),
    waits; the producer moves B to epoch E+1. Is B stored twice?"""
    url = new_json_stream(base_url, "indoubt")
    a_failed = threading.Event()
    start = time.monotonic()
    reported: list[str] = []
    with ChaosProxy(base_url, FaultRates(drop_after=1.0), record=True) as proxy:
        producer = IdempotentProducer(
            proxy.url + url[len(base_url):], "indoubt", content_type=JSON, linger_ms=0,
            delivery_timeout_ms=1500, retry=RetryPolicy(initial_delay_ms=50, max_delay_ms=100),
            on_error=lambda err: a_failed.set())
        try:
            producer.append(json.dumps("A"))
            proxy.wait_for(lambda px: px.stats()["drop_after"] >= 4, 10)
            producer.append(json.dumps("B"))
            b_stored = proxy.wait_for(lambda px: any(
                {k.lower(): v for k, v in ex.headers.items()}.get("producer-seq") == "1"
                and ex.status == 200 for ex in px.exchanges), 10)
            a_failed.wait(10)
            proxy.set_rates(FaultRates())
            try:
                producer.flush(timeout=20)
            except DeliveryError as exc:
                reported = [json.loads(m) for m in exc.undelivered]
        finally:
            with contextlib.suppress(durable_streams.DurableStreamError):
                producer.close(timeout=10)
    items, _ = read_json_stream(url)
    result = tally("4c in-doubt batch after a hole", ["A", "B"], items,
                   acked=producer.stats().messages_acked, reported=reported,
                   wall=time.monotonic() - start)
    result.notes = {"stream": "".join(m for m in items if isinstance(m, str)),
                    "reported": "".join(reported), "b_stored_first_try": b_stored}
    result.details = {"items": items, "reported": reported, "b_stored": b_stored}
    return result


def thread_order_ok(items: list[str]) -> bool:
    last: dict[str, int] = {}
    for item in items:
        group, index = thread_key(item)
        if index <= last.get(group, -1):
            return False
        last[group] = index
    return True


# -- 5. process life -----------------------------------------------------------------------
def run_child_exit(base_url: str, mode: str, n: int = 2000) -> Tally:
    """A child process that exits without flush() in the way ``mode`` says."""
    url = new_json_stream(base_url, f"exit-{mode}")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(CHILDREN), mode, url, f"x-{mode}", str(n)],
                          capture_output=True, text=True, timeout=60)
    wall = time.monotonic() - start
    items, _ = read_json_stream(url)
    prefix = {"exit_no_flush": "E", "thread_exit": "T", "sysexit_in_with": "W"}[mode]
    sent = [f"{prefix}:{i}" for i in range(n)]
    info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    acked = sum(1 for m in items if m in set(sent))
    label = {"exit_no_flush": "5a exit without flush()", "thread_exit": "5b exit from a thread",
             "sysexit_in_with": "5c sys.exit in with"}[mode]
    result = tally(label, sent, items, acked=acked, ordered_by=thread_key, wall=wall)
    result.notes = {"exit_code": proc.returncode,
                    "pending_at_exit": info.get("pending_at_exit", "?")}
    result.details = {"returncode": proc.returncode, "stderr": proc.stderr, "info": info}
    if proc.returncode != (3 if mode == "sysexit_in_with" else 0):
        result.problems.append(f"exit code {proc.returncode}: {proc.stderr[-300:]}")
    return result


def run_fork(base_url: str, n: int = 3000, forks: int = 4, *, warm: bool = True) -> Tally:
    """os.fork() while the parent's producer is busy; through a recording proxy.

    ``warm``: the parent's producer completed one request before the first fork. Without
    it the forks land during the parent's first request, which deadlocked the children
    before 0c50838 (see children.fork_during_first_request).
    """
    url = new_json_stream(base_url, "fork")
    path = url[len(base_url):]
    start = time.monotonic()
    with ChaosProxy(base_url, FaultRates(), record=True) as proxy:
        proc = subprocess.run(
            [sys.executable, str(CHILDREN), "fork", proxy.url + path, "fork", str(n),
             str(forks), "1" if warm else "0"], capture_output=True, text=True, timeout=120)
        exchanges = list(proxy.exchanges)
    wall = time.monotonic() - start
    reports = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    parent: dict[str, Any] = next((r for r in reports if "parent_appended" in r), {})
    kids = [r for r in reports if "child" in r]
    items, _ = read_json_stream(url)
    sent = (["W:0"] if warm else []) + [f"P:{i}" for i in range(n)]
    sent += [f"C{k['child']}:{i}" for k in kids for i in range(100)]
    label = f"5d fork x{forks}" + ("" if warm else " (cold parent)")
    result = tally(label, sent, items,
                   acked=int(parent.get("parent_acked", 0))
                   + sum(int(k.get("child_acked", 0)) for k in kids),
                   ordered_by=thread_key, wall=wall)
    # (id, epoch, seq) of every request that stored data: no tuple may store twice.
    stored: dict[tuple[str, str, str], int] = {}
    parent_requests = 0
    for ex in exchanges:
        h = {k.lower(): v for k, v in ex.headers.items()}
        if ex.method == "POST" and h.get("producer-id") == "fork":
            parent_requests += 1
        if ex.method == "POST" and "producer-id" in h and ex.status == 200:
            key = (h["producer-id"], h.get("producer-epoch", ""), h.get("producer-seq", ""))
            stored[key] = stored.get(key, 0) + 1
    reused = {k: v for k, v in stored.items() if v > 1}
    statuses = list(parent.get("children", {}).values())
    result.notes = {"children_ok": sum(1 for k in kids if k.get("append")
                                       == "ProducerForkedError" and k.get("child_acked") == 100),
                    "children_hung": sum(1 for st in statuses if st == -1),
                    "tuples_stored_twice": len(reused)}
    hung = sum(1 for st in statuses if st == -1)
    if hung or len(kids) != forks or result.notes["children_ok"] != forks:
        result.problems.append(f"{hung} of {forks} children deadlocked, "
                               f"{result.notes['children_ok']} behaved")
    if reused or parent_requests != parent.get("parent_requests"):
        result.problems.append("an (id, epoch, seq) was reused or the child sent the "
                               "parent's batches")
    result.details = {"reports": reports, "parent": parent, "kids": kids, "reused": reused,
                      "parent_requests_seen": parent_requests, "returncode": proc.returncode,
                      "stderr": proc.stderr, "foreign": [m for m in items
                                                         if m not in set(sent)]}
    return result


def run_cycles(base_url: str, cycles: int = 1000) -> Tally:
    """Create, use and close producers ``cycles`` times; no thread or socket may leak."""
    url = new_json_stream(base_url, "cycles")

    def one(i: int) -> None:
        p = IdempotentProducer(url, f"cycle-{i}", content_type=JSON, linger_ms=0)
        p.append(json.dumps(f"c:{i}"))
        p.close(timeout=30)

    for i in range(5):  # warm-up: imports, the first pools, logging handlers
        one(-1 - i)
    threads0, sockets0, fds0 = threading.active_count(), count_sockets(), count_fds()
    start = time.monotonic()
    for i in range(cycles):
        one(i)
    wall = time.monotonic() - start
    threads1, sockets1, fds1 = threading.active_count(), count_sockets(), count_fds()
    items, _ = read_json_stream(url)
    sent = [f"c:{i}" for i in range(cycles)]
    result = tally(f"5e {cycles} create/close", sent, items, acked=cycles, wall=wall,
                   ignore=lambda m: isinstance(m, str) and m.startswith("c:-"))
    result.notes = {"threads": f"{threads0}->{threads1}", "sockets": f"{sockets0}->{sockets1}",
                    "fds": f"{fds0}->{fds1}"}
    result.details = {"threads": (threads0, threads1), "sockets": (sockets0, sockets1),
                      "fds": (fds0, fds1)}
    if threads1 > threads0 or sockets1 > sockets0 or fds1 > fds0:
        result.problems.append("leak: " + str(result.notes))
    return result


# -- helpers for callers -------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any, BaseException | None]:
    start = time.monotonic()
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001
        return time.monotonic() - start, None, exc
    return time.monotonic() - start, value, None


@contextlib.contextmanager
def reference_server(**kw: Any) -> Any:
    server = ReferenceServer(**kw).start()
    try:
        yield server
    finally:
        server.stop()

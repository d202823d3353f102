"""Child programs for the process-life scenarios: ``python children.py <name> <args...>``.

Each one uses the producer the way an application would and reports on stdout, one JSON
object or ``WORD <n>`` marker per line. They import only ``durable_streams`` and the
standard library, so they run in a clean interpreter (no pytest state forked or inherited).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
import warnings
from typing import Any

from durable_streams import IdempotentProducer, ProducerForkedError

JSON = "application/json"


def say(obj: object) -> None:
    line = (obj if isinstance(obj, str) else json.dumps(obj)) + "\n"
    os.write(1, line.encode())  # unbuffered: survives kill -9 and fork


def crash_writer(url: str, producer_id: str, n: str) -> None:
    """Append A:0.. forever-ish; flush every 500 and say ACKED; the parent kills us (-9)."""
    p = IdempotentProducer(url, producer_id, auto_claim=True, content_type=JSON,
                           max_batch_items=10, linger_ms=1)
    for i in range(int(n)):
        p.append(json.dumps(f"A:{i}"))
        if i % 10 == 9:
            time.sleep(0.001)  # an application producing ~10k messages/s, not a burst
        if i % 50 == 49:
            say(f"APPENDED {i}")
        if i % 500 == 499:
            p.flush()
            say(f"ACKED {i}")
            if i == 499:
                say(f"EPOCH {p.epoch}")
    p.flush()
    say("DONE")
    time.sleep(60)  # bounded: the parent kills us long before


def resume_writer(url: str, producer_id: str, n: str) -> None:
    """The restarted process: same producer id, auto_claim; appends B:0..n-1 and closes."""
    p = IdempotentProducer(url, producer_id, auto_claim=True, content_type=JSON,
                           max_batch_items=10)
    for i in range(int(n)):
        p.append(json.dumps(f"B:{i}"))
    p.close()
    s = p.stats()
    say({"epoch": p.epoch, "claims": s.epoch_claims, "acked": s.messages_acked,
         "duplicates": s.duplicates})


def exit_no_flush(url: str, producer_id: str, n: str) -> None:
    """Append and fall off the end of the program: the atexit hook must deliver."""
    p = IdempotentProducer(url, producer_id, content_type=JSON, max_batch_items=10,
                           linger_ms=50)
    for i in range(int(n)):
        p.append(json.dumps(f"E:{i}"))
    say({"appended": int(n), "pending_at_exit": p.stats().pending_bytes})


def thread_exit(url: str, producer_id: str, n: str) -> None:
    """A worker thread owns the producer and leaves with sys.exit(); main returned before."""

    def work() -> None:
        p = IdempotentProducer(url, producer_id, content_type=JSON, max_batch_items=10,
                               linger_ms=50)
        for i in range(int(n)):
            p.append(json.dumps(f"T:{i}"))
        say({"appended": int(n), "pending_at_exit": p.stats().pending_bytes})
        sys.exit(0)  # ends this thread only; the interpreter exits when main is done

    threading.Thread(target=work, name="worker").start()


def sysexit_in_with(url: str, producer_id: str, n: str) -> None:
    """sys.exit(3) inside ``with producer:``: __exit__ flushes, the exit code stays 3."""
    with IdempotentProducer(url, producer_id, content_type=JSON, max_batch_items=10,
                            linger_ms=50) as p:
        for i in range(int(n)):
            p.append(json.dumps(f"W:{i}"))
        say({"appended": int(n), "pending_at_exit": p.stats().pending_bytes})
        sys.exit(3)


def exit_server_down(url: str, producer_id: str, n: str) -> None:
    """The server is unreachable at exit: the exit flush gives up after exit_timeout_ms."""
    p = IdempotentProducer(url, producer_id, content_type=JSON, exit_timeout_ms=1_000,
                           delivery_timeout_ms=600_000)
    for i in range(int(n)):
        p.append(json.dumps(f"D:{i}"))
    say({"appended": int(n)})


def fork(url: str, producer_id: str, n: str, forks: str, warm: str = "1") -> None:
    """Fork ``forks`` times while a thread keeps the parent's producer busy.

    With ``warm`` = "1" the parent has completed one flush before the first fork (see
    fork_during_first_request for what happens when it has not).

    Each child must get ProducerForkedError from the inherited producer (append and flush),
    close it without hanging, then write C<k>:0..99 with its own producer and exit through
    the normal interpreter exit (atexit must not send the inherited copy's messages).
    """
    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
    total, n_forks = int(n), int(forks)
    p = IdempotentProducer(url, producer_id, content_type=JSON, max_batch_items=10,
                           linger_ms=1)
    if warm == "1":
        p.append(json.dumps("W:0"))
        p.flush()
    marks = [threading.Event() for _ in range(n_forks)]
    step = max(total // (n_forks + 1), 1)

    def appender() -> None:
        for i in range(total):
            p.append(json.dumps(f"P:{i}"))
            k = i // step - 1
            if (i + 1) % step == 0 and 0 <= k < n_forks:
                marks[k].set()
        for mark in marks:
            mark.set()

    thread = threading.Thread(target=appender, name="appender")
    thread.start()
    children: list[int] = []
    for k in range(n_forks):
        marks[k].wait(60)
        pid = os.fork()
        if pid == 0:
            _fork_child(url, producer_id, p, k)
            sys.exit(0)  # a normal exit: atexit hooks run in the child
        children.append(pid)
    thread.join(60)
    outcome: dict[str, object] = {"children": {}}
    deadline = time.monotonic() + 20  # a child still running then is deadlocked
    for pid in children:
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = -1
        outcome["children"][str(pid)] = status  # type: ignore[index]
    p.close()
    s = p.stats()
    outcome.update(parent_appended=total, parent_acked=s.messages_acked,
                   parent_requests=s.requests_sent, parent_epoch=p.epoch)
    say(outcome)


def _fork_child(url: str, producer_id: str, inherited: IdempotentProducer, k: int) -> None:
    report: dict[str, object] = {"child": k}
    try:
        inherited.append(json.dumps("must-not-be-sent"))
        report["append"] = "accepted"
    except ProducerForkedError:
        report["append"] = "ProducerForkedError"
    try:
        inherited.flush(timeout=5)
        report["flush"] = "returned"
    except ProducerForkedError:
        report["flush"] = "ProducerForkedError"
    start = time.monotonic()
    inherited.close(timeout=5)
    report["close_s"] = round(time.monotonic() - start, 3)
    own = IdempotentProducer(url, f"{producer_id}-child{k}", content_type=JSON,
                             max_batch_items=10)
    for i in range(100):
        own.append(json.dumps(f"C{k}:{i}"))
    own.close()
    report["child_acked"] = own.stats().messages_acked
    say(report)


def fork_during_first_request(url: str, producer_id: str) -> None:
    """Deterministic repro: fork while the parent's sender thread is inside its first request.

    requests imports ``netrc`` lazily inside every request (``get_netrc_auth``). The first
    such import in the parent runs on a producer sender thread and holds the module's import
    lock; a fork at that moment leaves the lock held, by a thread that does not exist, in
    the child, and every HTTP request the child then makes blocks forever. To hit the window
    every time, a meta-path hook holds the parent's sender thread inside the execution of
    that module while we fork; the child then appends from its main thread (a thread id that
    cannot be the lock's recorded owner), under a 5 s watchdog. If ``netrc`` is already
    imported when the sender starts, the hook never fires and the fork is harmless: that is
    the fix.
    """
    import faulthandler

    from durable_streams import DurableStream

    parent = os.getpid()
    entered, release = threading.Event(), threading.Event()

    class StallNetrcImport:
        """Holds a sender thread inside the execution of ``netrc`` (module lock held,
        ``__spec__._initializing`` set, the global import lock free so fork can proceed)."""

        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if (name != "netrc" or os.getpid() != parent
                    or threading.current_thread() is threading.main_thread()):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            real = spec.loader

            class StallingLoader(importlib.abc.Loader):
                def create_module(self, spec: Any) -> Any:
                    return real.create_module(spec)

                def exec_module(self, module: Any) -> None:
                    entered.set()
                    release.wait(20)
                    real.exec_module(module)

            spec.loader = StallingLoader()
            return spec

    sys.meta_path.insert(0, StallNetrcImport())  # type: ignore[arg-type,unused-ignore]
    p = IdempotentProducer(url, producer_id, content_type=JSON)
    p.append(json.dumps("P:0"))  # the sender thread starts its first request
    stalled = entered.wait(2)
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(5, exit=True)  # a deadlock exits with status 1
        with DurableStream(url, content_type=JSON) as handle:
            handle.append(json.dumps("C:0"))
        faulthandler.cancel_dump_traceback_later()
        say({"child": "delivered"})
        os._exit(0)
    release.set()
    _, status = os.waitpid(pid, 0)
    p.close()
    say({"stalled_import_at_fork": stalled, "child_status": status})


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])

"""The log handler's background stream check, without a server."""

from __future__ import annotations

import threading

import pytest

from durable_streams._log_startup import FIRST_DELAY, MAX_DELAY, StreamCheck, retry_delay


def test_retry_delay_grows_and_is_capped() -> None:
    for failures in range(1, 40):
        base = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures - 1))
        wait = retry_delay(failures)
        assert base / 2 <= wait <= base
    assert retry_delay(10_000) <= MAX_DELAY  # no overflow after a long outage


def test_check_retries_until_it_succeeds_and_reports_each_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("durable_streams._log_startup.retry_delay", lambda n: 0.001)
    answers = [RuntimeError("down"), ValueError("404"), "application/json"]
    failures: list[tuple[str, int]] = []
    ready: list[str | None] = []
    done = threading.Event()

    def attempt() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def on_ready(content_type: str | None) -> None:
        ready.append(content_type)
        done.set()

    check = StreamCheck(attempt, on_ready=on_ready,
                        on_failure=lambda exc, n: failures.append((str(exc), n))).start()
    assert done.wait(10)
    assert check.join(10)
    assert failures == [("down", 1), ("404", 2)]
    assert ready == ["application/json"]


def test_stop_ends_the_waits_between_attempts() -> None:
    calls: list[int] = []
    failed = threading.Event()

    def attempt() -> str | None:
        calls.append(1)
        raise RuntimeError("down")

    def on_failure(exc: BaseException, n: int) -> None:
        failed.set()

    check = StreamCheck(attempt, on_ready=lambda ct: None, on_failure=on_failure,
                        first_delay=0.0).start()
    assert failed.wait(10)
    check.stop()
    assert check.join(5)  # woken from its (up to 0.5 s) wait, no further attempt
    assert calls == [1]

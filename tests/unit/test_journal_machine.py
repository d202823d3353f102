"""A hypothesis state machine of the producer journal: append, seal (with invalid messages
left out), ack, fail, split, epoch change (park, renumber), compaction, a crash at any byte
of the record being written, and reopen-and-go-on.

Invariant, checked after every step on a crash image of the files (the record of the step
torn at a drawn byte, program order: payload, then header) and on reopen: exactly the
accepted and unresolved messages are pending, in order, each sealed batch with its
(epoch, seq) and messages (so its body) as sealed."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from durable_streams._producer import journal_format as F

from .journal_driver import (
    Driver,
    Model,
    one_record_change,
    open_journal,
    replayed,
    snapshot,
    torn_images,
    write_image,
)

messages = st.binary(min_size=1, max_size=700)


class JournalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="ds-journal-")
        self.d = Driver(self.root + "/j", max_bytes=8 * 20 * 1024)
        self.before: dict[str, bytes] = {}
        self.model_before = Model()
        self.n = 0

    def teardown(self) -> None:
        self.d.j.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _begin(self) -> None:
        self.before = snapshot(self.d.path)
        self.model_before = self.d.model.copy()

    def _crash_check(self, cut_frac: float) -> None:
        """The writer dies during the step's record: the files then read back as the
        state before the step (or after it, once the record is whole)."""
        after = snapshot(self.d.path)
        change = one_record_change(self.before, after)
        if change is None:
            return  # no record, several, or a new segment: covered by reopen checks
        name, start, end = change
        _, length, _ = F.HEADER.unpack_from(after[name], start)
        if end > start + F.record_size(length):
            return  # several records (e.g. a split's seal and done): reopen checks
        images = torn_images(self.before, after, start, name)
        cut, image = images[int(cut_frac * (len(images) - 1))]
        path = self.root + "/img"
        write_image(path, image)
        j = open_journal(path)
        try:
            expect = self.d.model if image == after else self.model_before
            assert replayed(j.replay) == expect.expected(), cut
        finally:
            j.close()
            shutil.rmtree(path, ignore_errors=True)

    @rule(msg=messages, cut=st.floats(0, 1))
    def append(self, msg: bytes, cut: float) -> None:
        self._begin()
        self.n += 1
        # unique messages: equal ones are equally valid in the producer, while this
        # driver marks invalid ones by position
        self.d.append(msg + b"#%d" % self.n)
        self._crash_check(cut)

    @rule(count=st.integers(1, 8), bad=st.sets(st.integers(0, 7), max_size=3),
          json_body=st.booleans(), cut=st.floats(0, 1))
    def seal(self, count: int, bad: set[int], json_body: bool, cut: float) -> None:
        self._begin()
        self.d.take(count, bad, json_body)
        self._crash_check(cut)

    @precondition(lambda self: bool(self.d.live))
    @rule(pick=st.integers(0, 100), acked=st.booleans(), cut=st.floats(0, 1))
    def resolve(self, pick: int, acked: bool, cut: float) -> None:
        batches = [b for b, _ in self.d.live.values() if b not in self.d.parked]
        if not batches:
            return
        self._begin()
        self.d.resolve(batches[pick % len(batches)], acked)
        self._crash_check(cut)

    @precondition(lambda self: bool(self.d.live) and not self.d.draining)
    @rule(pick=st.integers(0, 100), bad=st.sets(st.integers(0, 7), min_size=1, max_size=2))
    def split(self, pick: int, bad: set[int]) -> None:
        batches = [b for b, _ in self.d.live.values() if len(b.messages) >= 2]
        if not batches:
            return
        b = batches[pick % len(batches)]
        bad = {k for k in bad if k < len(b.messages)}
        if not bad or len(bad) == len(b.messages):
            return
        self.d.split(b, bad)

    @precondition(lambda self: not self.d.draining)
    @rule()
    def start_claim(self) -> None:
        self.d.start_claim()

    @precondition(lambda self: self.d.draining)
    @rule(cut=st.floats(0, 1))
    def renumber(self, cut: float) -> None:
        self._begin()
        self.d.renumber()
        self._crash_check(cut)

    @rule()
    def crash_and_reopen(self) -> None:
        """The process dies between two steps; the next one replays and goes on."""
        expect = self.d.model.expected()
        r = self.d.crash_and_reopen()
        assert replayed(r) == expect
        # the total size respects the limit plus control records' allowance
        self.d.readopt()
        assert self.d.model.expected() == expect

    @invariant()
    def check_compaction(self) -> None:
        segs = self.d.j.files.segments
        pending = set(self.d.model.messages)
        if pending and len(segs) > 1:
            assert min(pending) >= segs[0].first_index


JournalMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestJournalMachine = JournalMachine.TestCase

"""The parts of :class:`durable_streams.IdempotentProducer` (the facade is ``producer.py``).

- ``options``      option checks, the public ``ProducerStats`` snapshot
- ``assembly``     the stream argument resolved, the parts built and wired on one lock
- ``batch``        a sealed batch, its state enum (final state set once), its body, counters
- ``accumulator``  the buffer: byte budget, blocking when full, sealing by bytes/items/linger,
                   the refusal of appends (one writer: ``refuse``, by precedence)
- ``outcome``      the pure classification of an HTTP answer (or failure) into an Outcome
- ``actions``      the sequencer's vocabulary: phases, transition table, tasks, decisions
- ``sequencer``    the pure state machine: epochs, seqs, probes, verification, bookkeeping
- ``rules``        what each outcome means (batches and close_stream): one copy of the rules
- ``transport``    the one object that makes HTTP calls for a producer
- ``sender``       the sender threads: typed tasks, sealing; the sequencer's sink
- ``delivery``     one batch on its way: send, turn and earlier-seq waits, retries, probes
- ``waits``        every Condition on the producer lock, one per wait, and who notifies it
- ``flushing``     ``flush()``: seal, wait until settled, report
- ``closing``      the shutdown after ``close()``'s flush, ``close_stream()``'s closing POST
- ``reporter``     failures to ``on_error`` on its own thread and to ``flush()``/``close()``
- ``lifecycle``    the module-level registry, exit flush, fork hook and errors, thread ownership
- ``journal``      the crash-safe journal (``journal=``): identity, the hooks of a batch's life
- ``journal_segments`` its files: lock, the mapped tail, the appender's fast path, compaction
- ``journal_format`` its on-disk records (framing, checksums, torn tails, corruption)
- ``journal_replay`` what a journal holds pending (folded from its records), read-only summaries
- ``journal_attach`` how a new producer opens its journal and takes over what it holds
"""

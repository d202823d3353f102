"""The parts of :class:`durable_streams.IdempotentProducer` (the facade is ``producer.py``).

- ``options``      option checks, the public ``ProducerStats`` snapshot
- ``batch``        a sealed batch, its state enum (final state set once), the counters
- ``accumulator``  the buffer: byte budget, blocking when full, sealing by bytes/items/linger
- ``outcome``      the pure classification of an HTTP answer (or failure) into an Outcome
- ``actions``      the sequencer's vocabulary: phases, transition table, tasks, decisions
- ``sequencer``    the pure state machine: epochs, seqs, probes, verification, bookkeeping
- ``rules``        what each outcome means (batches and close_stream): one copy of the rules
- ``transport``    the one object that makes HTTP calls for a producer
- ``sender``       the sender threads: typed tasks, HTTP, outcome -> sequencer
- ``reporter``     failures to ``on_error`` on its own thread and to ``flush()``/``close()``
- ``lifecycle``    the module-level registry, exit flush, fork hook and thread ownership
- ``journal``      the crash-safe journal (``journal=``): lock, segments, records, compaction
- ``journal_format`` its on-disk records (framing, checksums, torn tails, corruption)
- ``journal_replay`` what a journal holds pending, and how a new producer takes it over
"""

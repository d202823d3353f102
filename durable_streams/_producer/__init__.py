"""The parts of :class:`durable_streams.IdempotentProducer` (see ``producer.py``).

- ``batch``        a sealed batch, its state enum, the producer's counters
- ``accumulator``  the buffer: byte budget, blocking when full, sealing by bytes/items/linger
- ``outcome``      the pure classification of an HTTP answer (or failure) into an outcome
- ``sequencer``    the pure state machine: epochs, seqs, probes, verification, decisions
- ``transport``    the one object that makes HTTP calls for a producer
- ``sender``       the sender threads: typed work items, HTTP, outcome -> sequencer
- ``reporter``     failures to ``on_error`` on its own thread and to ``flush()``/``close()``
- ``lifecycle``    the module-level registry, exit flush, fork hook and thread ownership
"""

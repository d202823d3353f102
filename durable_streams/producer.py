"""Placeholder: the producer (issue 3) is being written."""
class IdempotentProducer:  # pragma: no cover
    pass
class ProducerStats:  # pragma: no cover
    pass

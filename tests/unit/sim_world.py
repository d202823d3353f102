"""A world for the state machine and the random walks: a simulated producer, its server,
maybe an earlier run's data and a second writer, and the application's three threads; plus
the mix of random steps (appends, sender steps, answers with faults, clock ticks, zombie
requests, server restarts, the second writer's claims and writes)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from durable_streams import _jitter, errors

from .sim_producer import PID, SimProducer
from .sim_server import Fault, OtherWriter, SimServer, previous_run


@dataclass
class Config:
    auto_claim: bool = False
    fresh: bool = False
    max_in_flight: int = 3
    json_mode: bool = False
    earlier_run: int = 0
    max_batch_bytes: int = 16
    linger: float = 0.01
    second_writer: bool = False
    delivery_timeout: float = 8.0
    close: bool = False  # close the stream at the end (close_stream)
    validate_json: bool = False  # JSON checked at seal time (the producer's default)

    @classmethod
    def draw(cls, rnd: random.Random) -> Config:
        auto_claim = rnd.random() < 0.5
        return cls(auto_claim=auto_claim, fresh=auto_claim and rnd.random() < 0.5,
                   max_in_flight=rnd.randint(1, 4), json_mode=rnd.random() < 0.4,
                   earlier_run=rnd.choice([0, 0, 0, 0, 1, 3]),
                   max_batch_bytes=rnd.choice([12, 16, 40, 1000]),
                   linger=rnd.choice([0.0, 0.01, 0.2]), second_writer=rnd.random() < 0.25,
                   close=rnd.random() < 0.5, validate_json=rnd.random() < 0.3)


FAULTS = [Fault.NONE] * 6 + [Fault.DROP, Fault.LOSE, Fault.UNAVAILABLE, Fault.RATE_LIMITED,
                             Fault.PROXY_502, Fault.ZOMBIE]
TICKS = [0.005, 0.05, 0.3, 1.0, 3.0, 9.0]


class World:
    """A producer, its server, a possible second writer and the application's threads."""

    def __init__(self, cfg: Config) -> None:
        server = SimServer(json_mode=cfg.json_mode)
        if cfg.earlier_run:
            previous_run(server, PID, 0, cfg.earlier_run)
        self.cfg = cfg
        self.p = SimProducer(server, epoch=1000 if cfg.fresh else 0, auto_claim=cfg.auto_claim,
                             fresh_epoch=cfg.fresh, max_in_flight=cfg.max_in_flight,
                             delivery_timeout=cfg.delivery_timeout, linger=cfg.linger,
                             max_batch_bytes=cfg.max_batch_bytes,
                             validate_json=cfg.validate_json)
        self.other = OtherWriter(server, PID) if cfg.second_writer else None
        self.counters = [0, 0, 0]
        self.steps = 0

    def append(self, thread: int, valid: bool = True) -> None:
        self.p.append(thread, self.counters[thread], valid=valid)
        self.counters[thread] += 1

    def random_steps(self, rnd: random.Random, n: int) -> None:
        """``n`` random steps with the machine's mix of rules."""
        p = self.p
        for _ in range(n):
            self.steps += 1
            r = rnd.random()
            if r < 0.18:
                self.append(rnd.randrange(3),
                            valid=not (p.server.json_mode and rnd.random() < 0.05))
            elif r < 0.55:
                runnable = p.runnable()
                if runnable:
                    p.resume(rnd.choice(runnable))
            elif r < 0.80:
                if p.wire:
                    p.handle(rnd.randrange(8), rnd.choice(FAULTS))
            elif r < 0.84:
                if p.wire:
                    p.write(rnd.randrange(8))
            elif r < 0.94:
                p.advance(rnd.choice(TICKS))
            elif r < 0.96:
                if p.zombies:
                    p.zombie_arrives(rnd.randrange(8))
            elif r < 0.97:
                if p.wire:
                    p.restart_server([rnd.random() < 0.5 for _ in range(3)])
            elif self.other is not None:
                if self.other.fenced or rnd.random() < 0.3:
                    self.other.claim()
                else:
                    self.other.write()

    def finish(self, close_faults: list[Fault] | None = None) -> None:
        p = self.p
        p.drain()
        p.check_final()
        if self.cfg.close:
            try:
                offset = p.close_stream(close_faults or [])
            except errors.DurableStreamError as exc:
                p.stats[f"close raised {type(exc).__name__}"] += 1
            else:
                p.stats["close done"] += 1
                p.check_closed(offset)


#: known sequencer bugs tolerated by the walks (B1-B7, test_sequencer_scenarios.py, fixed: none)
#: and two limits: Z1, a zombie request stored under an epoch the producer has already
#: left; Z2, a second writer at the same (id, epoch) whose state the server continued with
#: a later seq of ours while an earlier one was not stored (re-sent after the claim, so
#: delivered out of order)
LIMITS = ("Z1", "Z2")
KNOWN_BUGS = LIMITS


def random_walk(seed: int, steps: int = 60, trace: list[str] | None = None,
                tolerate: tuple[str, ...] = KNOWN_BUGS) -> World:
    rnd = random.Random(seed)
    state = _jitter.RNG.getstate()
    _jitter.RNG.seed(seed)  # the claim backoff's jitter: the same seed, the same walk
    try:
        world = World(Config.draw(rnd))
        if trace is not None:
            trace.append(repr(world.cfg))
            world.p.trace = world.p.seq.trace = trace
        world.p.tolerate = set(tolerate)
        world.random_steps(rnd, steps)
        world.finish([rnd.choice(FAULTS) for _ in range(3)])
    finally:
        _jitter.RNG.setstate(state)
    return world

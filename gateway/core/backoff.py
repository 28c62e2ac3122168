"""The one backoff policy: jittered exponential, used for every retry in the gateway."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# seeding a random.Random reads the OS entropy pool (~150 µs): every Backoff shares one
_JITTER = random.Random()


@dataclass
class Backoff:
    """Full-jitter exponential backoff: delay n is uniform in [base/2, min(cap, base*2**n)].

    ``reset()`` after a success long enough to count as recovered.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    attempt: int = 0
    _rng: random.Random = field(default=_JITTER, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

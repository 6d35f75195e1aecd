"""How long to wait before trying again: exponential backoff with jitter.

Used for reconnecting (every MQTT client) and for sending a command again to a terminal that has
not answered. Jitter matters here: when a broker restarts, a county's terminals all lose it at
once, and without it they would all come back, and be retried, in the same instant.
"""

import random

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
_RNG = random.Random()


def backoff_delay(
    attempt: int,
    first: float = BACKOFF_FIRST_S,
    maximum: float = BACKOFF_MAX_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds before attempt `attempt` (1, 2, ...): `first`, doubling up to `maximum`, times 0.5–1."""
    base = min(maximum, first * 2.0 ** (max(attempt, 1) - 1))
    return base * (rng or _RNG).uniform(0.5, 1.0)


def reconnect_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before reconnect attempt `attempt`: from 1 s, doubling up to 30 s, with jitter."""
    return backoff_delay(attempt, rng=rng)

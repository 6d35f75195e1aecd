"""How long to wait before reconnecting: exponential backoff with jitter, shared by every MQTT client.

Jitter matters here: when a broker restarts, a county's terminals all lose it at once, and
without it they would all come back in the same instant.
"""

import random

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
_RNG = random.Random()


def reconnect_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before reconnect attempt `attempt` (1, 2, ...): doubling up to 30 s, times 0.5–1."""
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (max(attempt, 1) - 1))
    return base * (rng or _RNG).uniform(0.5, 1.0)

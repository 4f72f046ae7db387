"""The one retry back-off: exponential, capped, with equal jitter. Pure given
its random source; used by every part that retries (git, GitHub, releases).
"""

from __future__ import annotations

import random

__all__ = [
    "backoff_delay",
]


def backoff_delay(
    failures: int,
    base: float = 2.0,
    cap: float = 300.0,
    rng: random.Random | None = None,
    *,
    jitter: float | None = None,
) -> float:
    """Seconds to wait after ``failures`` failures in a row: exponential, capped,
    with "equal jitter" (between half and all of the step) so many controllers
    that lost the same remote do not come back in lockstep. The random half is
    ``jitter`` (a fraction, clamped to [0, 1]) when given, else drawn from ``rng``.
    Pure given ``rng`` or ``jitter``.
    """
    if failures <= 0:
        return 0.0
    step = min(cap, base * 2 ** min(failures - 1, 30))
    if jitter is None:
        jitter = (rng or random.Random()).random()
    return float(step / 2 + step / 2 * min(max(jitter, 0.0), 1.0))

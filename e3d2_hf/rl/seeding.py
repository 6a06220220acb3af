"""Seeds derived from where the randomness is used, so that results do not depend on the order work is done in.

The demonstrations seed each rollout batch by (seed, split, noise level, batch), PPO each step's
buffer, rollouts and minibatch order by (seed, step, rank, ...), and the held-out evaluation every
policy's dances by (seed, -2): the same numbers for any number of processes, after a resume, and
for every policy that is compared. It sits this low because the held-out evaluation needs it as
much as the trainers do.
"""

from __future__ import annotations

import numpy as np


def seed_of(*parts: int) -> int:
    """A 63-bit seed derived from (seed, step, rank, ...) by `numpy.random.SeedSequence`."""
    return int(np.random.SeedSequence([int(part) % 2**63 for part in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


__all__ = ["seed_of"]

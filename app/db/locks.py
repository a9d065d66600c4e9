"""The key of a PostgreSQL advisory lock, from the lock's name.

PostgreSQL names an advisory lock by a signed 64-bit integer. Every process that takes one of
ours (the API, the workers, the scheduler) must turn the same name into the same key, or two of
them would hold "the same" lock at once; so the rule lives here, once, and every caller names its
lock and asks for the key: the leaderboards' writers (``app.services.leaderboards``), the job
claims and coalesced runs (``workers.jobs.steps``), and the zoo's announcement
(``workers.jobs.zoo``).
"""

from __future__ import annotations

import hashlib


def advisory_key(name: str) -> int:
    """The advisory lock key of ``name``: the 8 bytes of its BLAKE2b digest, read as a signed
    big-endian integer. A digest, not ``hash()``, which Python seeds afresh in every process;
    and fixed for good, since a key that changed between releases would let an old worker and
    a new one both hold a lock during an upgrade."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )

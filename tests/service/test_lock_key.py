"""The advisory lock keys: one rule (``app.db.locks.advisory_key``) for every caller, and the
keys each caller takes on PostgreSQL are the ones released workers take, in every process.

A worker of the previous release and one of this release run side by side during an upgrade;
if a key changed, both would hold "the same" claim at once. So the keys are pinned here to the
values the callers have always taken.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from app.db.locks import advisory_key
from app.db.session import Database
from app.services import leaderboards
from app.states import Task
from workers.jobs.steps import Claims

ROOT = Path(__file__).resolve().parents[2]

#: lock name -> the key every release so far has taken for it
PINNED = {
    "transferbench.leaderboard:ds-1": -8224935334229884332,  # leaderboards.lock(["ds-1"])
    "tb.extract:job-1:model-1": -4827497580111015814,  # a claim on extracting a job model
    "tb.refit_recommender:running": -3468619176627700027,  # the refit under way
    "tb.refit_recommender:waiting": -3595146021591006984,  # the refit waiting for it
    "tb.zoo.announce": 4981545716519912761,  # the zoo's announcement
}

_HELD = text(
    "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
    "AND objsubid = 1 AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _held(db: Database) -> set[int]:
    """The bigint advisory locks granted in this database, by key (PostgreSQL shows a key as
    its high and low 32 bits)."""
    with db.engine.connect() as conn:
        rows = conn.execute(_HELD).all()
    keys = {(high << 32) | low for high, low in rows}
    return {key - 2**64 if key >= 2**63 else key for key in keys}


def test_keys_are_the_pinned_ones_whatever_the_hash_seed():
    """Two interpreters with different ``hash()`` seeds compute the same keys, the pinned ones."""
    script = (
        "import sys\nfrom app.db.locks import advisory_key\n"
        "for name in sys.argv[1:]:\n    print(advisory_key(name))\n"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, *PINNED],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert [int(line) for line in out.split()] == list(PINNED.values())
    assert {name: advisory_key(name) for name in PINNED} == PINNED


def test_each_caller_holds_the_lock_its_name_keys(pg_url: str):
    """The leaderboards' writer lock, a job model's claim and a coalesced run hold, on
    PostgreSQL, the advisory locks of the pinned keys: the domain and the job runners key their
    locks by the one rule."""
    db = Database(pg_url, pool_size=3)
    try:
        with db.session() as s:
            leaderboards.lock(s, ["ds-1"])
            assert _held(db) == {PINNED["transferbench.leaderboard:ds-1"]}
        assert _held(db) == set()  # a transaction's lock ends with it
        claims = Claims(db)
        with claims.claim(Task.EXTRACT, "job-1", "model-1") as mine:
            assert mine
            assert _held(db) == {PINNED["tb.extract:job-1:model-1"]}
        with claims.coalesced(Task.REFIT_RECOMMENDER) as runs:
            assert runs
            assert _held(db) == {PINNED["tb.refit_recommender:running"]}
        assert _held(db) == set()
    finally:
        db.engine.dispose()


def _computes_its_own_key(path: Path) -> bool:
    """Whether a module hashes anything with BLAKE2b itself."""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.Attribute) and node.attr == "blake2b" for node in ast.walk(tree)
    )


def test_every_module_taking_an_advisory_lock_keys_it_by_the_one_rule():
    """A module of the service that takes an advisory lock imports ``advisory_key`` and hashes
    no lock name of its own: a second copy of the rule could drift from the first."""
    takers = [
        path
        for package in ("app", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "pg_advisory" in path.read_text() and path != ROOT / "app" / "db" / "locks.py"
    ]
    assert takers, "no module takes an advisory lock; this test looks in the wrong place"
    for path in takers:
        source = path.read_text()
        assert "from app.db.locks import advisory_key" in source, path
        assert not _computes_its_own_key(path), path

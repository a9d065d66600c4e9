"""``bench/shipped_scope.py``'s measured, unshipped variant and its random copies: the history's
spreads per group of models equal the shipped ones where every model met every other, and
each group's equal those of its table alone; copies repeat for a seed and keep what they
promise to keep."""

from __future__ import annotations

import numpy as np
import pytest

import scoring
from bench import shipped_scope as S
from scoring import recommend as rec
from scoring.recommend import RECOMMENDED, DatasetRecord


def _family(prefix: str, models: int, sets: int, persist: bool, seed: int) -> dict:
    """``sets`` datasets of ``models`` models: outcomes a shared skill plus noise (persisting)
    or a fresh permutation each time (swinging); LogME a noisy reading of them."""
    rng = np.random.default_rng(seed)
    names = [f"{prefix}{j}" for j in range(models)]
    skill = np.linspace(0, 3, models)
    out = {}
    for i in range(sets):
        y = skill + rng.normal(0, 0.5, models) if persist else rng.permutation(models) * 1.0
        scores = {"logme": {m: float(v + rng.normal(0, 1)) for m, v in zip(names, y, strict=True)}}
        out[f"{prefix}-set{i}"] = DatasetRecord(
            scores, dict(zip(names, map(float, y), strict=True))
        )
    return out


def test_per_group_is_the_shipped_evaluation_where_every_model_met_every_other() -> None:
    one = _family("a", 6, 5, persist=True, seed=0)
    shipped = scoring.evaluate_lodo(one)
    grouped = S.per_group(one, {"logme": True})
    for name in shipped.per_dataset:
        assert grouped.per_dataset[name][RECOMMENDED] == pytest.approx(
            shipped.per_dataset[name][RECOMMENDED], abs=1e-12, nan_ok=True
        )
    assert rec._history_variances is not S._per_group_variances  # put back


def test_each_groups_spreads_are_its_tables_alone() -> None:
    persist = _family("p", 5, 4, persist=True, seed=1)
    swing = _family("s", 4, 5, persist=False, seed=2)
    both = rec._table({**persist, **swing}, {"logme": True})
    mean, n, s2, tau2 = S._per_group_variances(both, both.labelled)
    pooled = rec._history_variances(both, both.labelled)
    for table in (persist, swing):
        alone = rec._table(table, {"logme": True})
        _, _, s2_alone, tau2_alone = rec._history_variances(alone, alone.labelled)
        cols = [both.models.index(m) for m in alone.models]
        assert s2[cols] == pytest.approx(s2_alone, abs=1e-12)
        assert tau2[cols] == pytest.approx(tau2_alone, abs=1e-12)
    np.testing.assert_allclose(mean, pooled[0], atol=1e-12)
    np.testing.assert_array_equal(n, pooled[1])
    swinging = [
        both.models.index(m) for m in sorted({m for r in swing.values() for m in r.outcomes})
    ]
    assert (tau2[swinging] < pooled[3]).all()  # one pool kept more of the swinging history


def test_the_family_variants_are_the_shipped_one_for_one_family_and_lie_between() -> None:
    """``within_family`` and ``family_shrunk`` equal the shipped evaluation where every model
    met every other; with two families, ``within_family`` keeps each family's s2 and one tau2,
    and ``family_shrunk``'s tau2 is (m - 1) parts the family's own to ``FAMILY_PRIOR`` parts
    the pooled one."""
    one = _family("a", 6, 5, persist=True, seed=0)
    shipped = scoring.evaluate_lodo(one)
    for variant in (S.within_family, S.family_shrunk):
        got = variant(one, {"logme": True})
        for name in shipped.per_dataset:
            assert got.per_dataset[name][RECOMMENDED] == pytest.approx(
                shipped.per_dataset[name][RECOMMENDED], abs=1e-12, nan_ok=True
            )
    assert rec._history_variances is S._POOLED  # put back
    persist = _family("p", 5, 4, persist=True, seed=1)
    swing = _family("s", 4, 5, persist=False, seed=2)
    both = rec._table({**persist, **swing}, {"logme": True})
    _, _, s2_own, tau2_own = S._per_group_variances(both, both.labelled)
    pooled = rec._history_variances(both, both.labelled)[3]
    _, _, s2, tau2 = S._within_family_variances(both, both.labelled)
    np.testing.assert_allclose(s2, s2_own, atol=1e-12)
    assert len(set(tau2.tolist())) == 1
    _, _, s2, tau2 = S._family_shrunk_variances(both, both.labelled)
    np.testing.assert_allclose(s2, s2_own, atol=1e-12)
    for table, m in ((persist, 5), (swing, 4)):
        cols = [
            both.models.index(x) for x in sorted({x for r in table.values() for x in r.outcomes})
        ]
        want = ((m - 1) * tau2_own[cols] + S.FAMILY_PRIOR * pooled) / (m - 1 + S.FAMILY_PRIOR)
        np.testing.assert_allclose(tau2[cols], want, atol=1e-12)


def test_copies_repeat_for_a_seed_and_keep_what_they_promise() -> None:
    records = {
        **_family("p", 10, 8, persist=True, seed=3),
        **_family("s", 4, 7, persist=False, seed=4),
    }
    tables = {name: name.split("-")[0] for name in records}

    def copies(seed: int, drop_models: bool) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [S.subsample(records, tables, rng, drop_models) for _ in range(6)]

    assert copies(0, True) == copies(0, True)
    assert copies(0, True) != copies(1, True)
    for copy in copies(0, True):
        for table, models in (("p", 10), ("s", 4)):
            kept = [r for name, r in copy.items() if tables[name] == table]
            assert len(kept) >= 3
            left = {m for r in kept for m in r.outcomes}
            assert models - 3 <= len(left) < models and len(left) >= models - models // 3
    for copy in copies(0, False):
        assert {m for r in copy.values() for m in r.outcomes} == {
            m for r in records.values() for m in r.outcomes
        }


def test_the_choice_per_family_reads_no_held_out_outcome() -> None:
    """``group_choice`` knows the held-out dataset by the models it scored: scrambling that
    dataset's outcomes moves neither its prediction nor its weights."""
    records = {
        **_family("p", 6, 5, persist=True, seed=5),
        **_family("s", 4, 5, persist=False, seed=6),
    }
    base = S.group_choice(records, {"logme": True})
    for name in ("p-set0", "s-set1"):
        r = records[name]
        scrambled = {m: -v for m, v in r.outcomes.items()}
        other = S.group_choice(
            {**records, name: DatasetRecord(r.scores, scrambled)}, {"logme": True}
        )
        assert dict(other.predictions[name]) == pytest.approx(
            dict(base.predictions[name]), abs=1e-12
        )
        assert dict(other.weights[name]) == pytest.approx(dict(base.weights[name]), abs=1e-12)
    assert rec._choose is not S._choose_in_group  # put back

"""rank_quality on the published Model-Spider table and at its edges."""

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import scoring
from scoring import TransferabilityError

TABLE = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "model_spider_image_zoo.csv"


@pytest.fixture(scope="module")
def table():
    if not TABLE.exists():
        pytest.fail(f"the published benchmark table is missing: {TABLE}")
    with TABLE.open() as fh:
        rows = list(csv.DictReader(fh))
    by_dataset = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    return by_dataset


def test_table_shape(table):
    assert len(table) == 8
    assert all(len(rows) == 10 for rows in table.values())


def test_values_match_scipy_and_hand_picked_top1(table):
    for name, rows in table.items():
        gt = np.array([float(r["finetune_top1"]) for r in rows])
        sc = np.array([float(r["LogME"]) for r in rows])
        q = scoring.rank_quality(gt, sc)
        assert q["kendall_tau"] == pytest.approx(stats.kendalltau(gt, sc).statistic)
        assert q["weighted_tau"] == pytest.approx(stats.weightedtau(gt, sc, rank=None).statistic)
        assert q["pearson"] == pytest.approx(stats.pearsonr(gt, sc).statistic)
        pick = int(np.argmax(sc))
        assert q["top1_regret"] == pytest.approx(gt.max() - gt[pick]), name
        assert q["top1_hit"] == float(gt[pick] == gt.max())


def test_cifar10_logme_by_hand(table):
    rows = {r["model"]: r for r in table["CIFAR10"]}
    gt = [float(r["finetune_top1"]) for r in rows.values()]
    sc = [float(r["LogME"]) for r in rows.values()]
    q = scoring.rank_quality(gt, sc)
    best_by_score = max(rows, key=lambda m: float(rows[m]["LogME"]))
    best_acc = max(float(r["finetune_top1"]) for r in rows.values())
    assert q["top1_regret"] == pytest.approx(best_acc - float(rows[best_by_score]["finetune_top1"]))


def test_logme_ranks_better_than_chance_on_average(table):
    """The literature's finding: LogME correlates positively with fine-tuned accuracy."""
    taus = [
        scoring.rank_quality(
            [float(r["finetune_top1"]) for r in rows], [float(r["LogME"]) for r in rows]
        )["weighted_tau"]
        for rows in table.values()
    ]
    assert np.mean(taus) > 0.2


def test_perfect_and_reversed_rankings():
    gt = [70.0, 80.0, 90.0, 60.0]
    perfect = scoring.rank_quality(gt, [2.0, 3.0, 4.0, 1.0])
    assert perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["weighted_tau"] == pytest.approx(1.0)
    assert perfect["top1_hit"] == 1.0 and perfect["top1_regret"] == 0.0
    reverse = scoring.rank_quality(gt, [3.0, 2.0, 1.0, 4.0])
    assert reverse["kendall_tau"] == pytest.approx(-1.0)
    assert reverse["top1_hit"] == 0.0 and reverse["top1_regret"] == pytest.approx(30.0)


def test_ties_in_the_top_score_resolve_pessimistically():
    q = scoring.rank_quality([90.0, 85.0, 70.0], [5.0, 5.0, 1.0])
    assert q["top1_hit"] == 0.0
    assert q["top1_regret"] == pytest.approx(5.0)


def test_fewer_than_three_models_and_constant_inputs():
    two = scoring.rank_quality([80.0, 90.0], [1.0, 2.0])
    assert (
        np.isnan(two["kendall_tau"]) and np.isnan(two["weighted_tau"]) and np.isnan(two["pearson"])
    )
    assert two["top1_hit"] == 1.0
    flat = scoring.rank_quality([80.0, 90.0, 70.0], [1.0, 1.0, 1.0])
    assert np.isnan(flat["kendall_tau"]) and np.isnan(flat["pearson"])
    assert flat["top1_regret"] == pytest.approx(20.0)


def test_nan_policy():
    gt, sc = [80.0, 90.0, 70.0, 60.0], [1.0, np.nan, 0.5, 0.2]
    with pytest.raises(TransferabilityError, match="nan_policy='omit'"):
        scoring.rank_quality(gt, sc)
    q = scoring.rank_quality(gt, sc, nan_policy="omit")
    assert q["kendall_tau"] == pytest.approx(1.0)
    assert q["top1_hit"] == 1.0  # of the three models that remain
    with pytest.raises(TransferabilityError, match="one per model"):
        scoring.rank_quality([1.0, 2.0], [1.0])
    with pytest.raises(TransferabilityError, match="no models"):
        scoring.rank_quality([np.nan], [1.0], nan_policy="omit")

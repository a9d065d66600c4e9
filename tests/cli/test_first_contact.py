"""What a newcomer meets first on the command line: evaluate after an import without
options, the closing line that says which model to use, plain labels in errors, metric names
in any case, a plot whose axis shows the differences, no negative zeros, and outcomes for a
dataset ranked locally."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import scoring
from workers.cli import main
from workers.pipeline.rank import RankRequest, run_rank


def _table(outcome: str, prefix: str, n_datasets: int = 4, seed: int = 0) -> str:
    """A wide benchmark table of five models named ``prefix0..4``: dataset, model, the
    outcome column, LogME (follows the outcome) and an external score (noise)."""
    rng = np.random.default_rng(seed)
    models = [f"{prefix}{i}" for i in range(5)]
    skill = np.linspace(0, 3, len(models))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["dataset", "model", outcome, "LogME", "Guess"])
    for d in range(n_datasets):
        top1 = 60 + 5 * skill + rng.normal(0, 2.0, len(models))
        for m, name in enumerate(models):
            logme = top1[m] / 100 + rng.normal(0, 0.03)
            writer.writerow([f"set{d}", name, round(top1[m], 3), round(logme, 4), rng.normal()])
    return out.getvalue()


def _write(tmp_path: Path, name: str, outcome: str) -> str:
    """The table of models ``NAME0..4`` under ``outcome``, as a file."""
    path = tmp_path / f"{name}.csv"
    path.write_text(_table(outcome, name))
    return str(path)


def test_evaluate_without_options_evaluates_the_scope_that_has_data(
    tmp_path, capsys, monkeypatch
) -> None:
    """A text table under its own outcome name: both evaluate commands find it unasked and
    say which scope they evaluated; options that match nothing list the scopes there are.
    (A database without the shipped reference tables: tests/service/test_reference_tables.py)"""
    monkeypatch.setenv("TB_REFERENCE_TABLES", "off")
    table = _write(tmp_path, "texts", "finetune_accuracy")
    argv = ["benchmark", "import", table, "--outcome", "finetune_accuracy", "--modality", "text"]
    assert main(argv) == 0
    imported = capsys.readouterr().out
    assert "--modality text --task classification --measure finetune_accuracy" in imported
    for command in (["benchmark", "evaluate"], ["evaluate"]):
        assert main(command) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert out.splitlines()[0] == "text/classification/finetune_accuracy"
        assert "mean over: 4 datasets, measure finetune_accuracy" in out
    assert main(["benchmark", "evaluate", "--modality", "image"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nothing to evaluate for image/*/*" in err
    assert "text/classification/finetune_accuracy (--modality text" in err


def test_evaluate_without_options_covers_every_scope(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TB_REFERENCE_TABLES", "off")  # only the two tables imported here
    for name, outcome, modality in (("a", "top1", "image"), ("b", "accuracy", "text")):
        table = _write(tmp_path, name, outcome)
        argv = ["benchmark", "import", table, "--outcome", outcome, "--modality", modality]
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["benchmark", "evaluate", "--format", "json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["scope"] for r in reports] == [
        "image/classification/top1",
        "text/classification/accuracy",
    ]
    assert main(["evaluate", "--measure", "accuracy", "--format", "json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["scope"] == "text/classification/accuracy" and one["datasets"] == 4
    # each mean's standard error and each figure's range over the datasets, as computed from
    # the table's own per-dataset figures
    rows = csv.DictReader(io.StringIO(_table("accuracy", "b")))
    by_hand = scoring.evaluate_lodo(scoring.datasets_from_rows(rows, outcome="accuracy"))
    taus = np.array([f["LogME"]["weighted_tau"] for f in by_hand.per_dataset.values()])
    assert one["sem"]["logme"]["weighted_tau"] == pytest.approx(taus.std(ddof=1) / 2)
    assert one["min"]["logme"]["weighted_tau"] == pytest.approx(taus.min())
    assert one["max"]["logme"]["weighted_tau"] == pytest.approx(taus.max())
    assert main(["evaluate", "--measure", "accuracy"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].endswith("± s.e. (w. tau)  datasets    covers")
    logme = next(line for line in table.splitlines() if line.startswith("logme "))
    assert logme.split()[-3:] == [f"{taus.std(ddof=1) / 2:.3f}", "4", "100%"]


def _features(path: Path, labels: np.ndarray, offsets: dict[str, float]) -> Path:
    """A feature file of several models: class means ``offset`` apart, so larger offsets
    separate the classes better (and rank higher)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(len(labels), 4))
    codes = np.unique(labels, return_inverse=True)[1]
    arrays = {f"{m}.features": base + off * codes[:, None] for m, off in offsets.items()}
    np.savez(path, labels=labels, **arrays)
    return path


@pytest.fixture
def three_models(tmp_path: Path) -> Path:
    labels = np.array(["bag", "shoe", "coat"] * 10)
    return _features(tmp_path / "three.npz", labels, {"far": 5.0, "mid": 2.0, "near": 1.0})


def test_rank_closes_with_which_model_to_use(three_models: Path, capsys) -> None:
    """No outcomes anywhere: the line names the first model, the metrics the uncalibrated
    order averages, and says it is untested."""
    assert main(["rank", str(three_models), "--metrics", "logme,gbc", "--quiet"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("Use far: first in the recommended order")
    assert "uncalibrated equal-weight mean of the ranks of gbc, logme" in last
    assert "how far to trust it: untested" in last
    # JSON on stdout stays JSON; the line goes to stderr
    argv = ["rank", str(three_models), "--metrics", "logme", "--format", "json", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["model"] == "far"
    assert "Use far:" in out.err


TEXTS = [("the cpu and the compiler", "computers"), ("my program crashed again", "computers"),
         ("a kernel panic at boot", "computers"), ("ram and disk are full", "computers"),
         ("the soup was too salty", "food"), ("bake the bread slowly", "food"),
         ("fresh tomatoes and basil", "food"), ("dessert after dinner", "food")]  # fmt: skip


def _texts(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows))
    return path


@pytest.mark.slow
def test_rank_closing_line_states_the_calibrated_quality(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """With outcomes of text datasets stored, the line says the order was fitted on them and
    quotes the leave-one-dataset-out figures `benchmark evaluate` reports for that scope: the
    metric-only order's, as none of the models ranked here has a history (the service's rule)."""
    monkeypatch.setenv("TB_REFERENCE_TABLES", "off")  # only this table's scope
    table = _write(tmp_path, "texts", "finetune_top1")
    argv = ["benchmark", "import", table, "--outcome", "finetune_top1", "--modality", "text"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["benchmark", "evaluate", "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)["metric_only"]
    texts = _texts(tmp_path / "t.csv", TEXTS)
    assert main(["rank", str(texts), "--metrics", "logme", "--quiet"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert re.match(r"Use minilm-\S+( or minilm-\S+ \(tied\))?: first in the recommended", last)
    assert "as fitted on the fine-tuning outcomes of 4 dataset(s)" in last
    assert f"on 4 held-out dataset(s), weighted tau {expected['weighted_tau']:.2f}" in last
    assert f"mean top-1 regret {expected['top1_regret']:.2f}" in last and "points" in last
    assert "track record" not in last  # the table's models are others: no history weighed
    # a metric no model here could compute (LEEP needs a head) is left out of the fit
    argv = ["rank", str(texts), "--models", "minilm-l6", "--metrics", "logme,leep", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1].startswith("Use minilm-l6: first")


def test_errors_name_labels_plainly(tmp_path: Path, capsys) -> None:
    one_class = _features(tmp_path / "one.npz", np.array(["bag"] * 6), {"m": 1.0})
    assert main(["rank", str(one_class), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "only one class ('bag')" in err and "np." not in err
    # a metric that needs two samples per class says which class has fewer, plainly
    labels = np.array(["bag", "shoe"] * 6 + ["coat"])
    lonely = _features(tmp_path / "lonely.npz", labels, {"m": 1.0})
    assert main(["rank", str(lonely), "--metrics", "logme,gbc", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "gbc not computed" in err and "'coat'" in err and "np." not in err


def test_metric_names_in_any_case(three_models: Path, capsys) -> None:
    argv = ["rank", str(three_models), "--metrics", "LogME,GBC", "--format", "csv", "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == "rank,model,recommended,logme,gbc"
    assert main(["rank", str(three_models), "--metrics", "LogME,bogus", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric bogus" in err and "logme, logme_regression" in err


def test_plot_axis_spans_the_data_not_zero(three_models: Path, tmp_path: Path) -> None:
    """LogME of these models differ in the second decimal around -0.6: an axis from zero
    would draw three equal bars."""
    from workers.cli.report import bar_chart

    result = run_rank(RankRequest(dataset=str(three_models), metrics=["logme"]))
    values = [r.scores["logme"] for r in result.rows]
    assert all(v is not None for v in values)
    low, high = min(values), max(values)  # type: ignore[type-var]
    figure = bar_chart(result.rows, ["logme"], "three")
    (ax,) = figure.axes
    left, right = ax.get_xlim()
    assert low - (high - low) <= left < low and high < right <= high + (high - low)
    assert not left <= 0 <= right
    assert "not 0" in ax.get_xlabel()
    png = tmp_path / "r.png"
    assert (
        main(["rank", str(three_models), "--metrics", "logme", "--plot", str(png), "--quiet"]) == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_no_negative_zero(three_models: Path, capsys) -> None:
    """GBC of well-separated classes is a tiny negative number (about -3e-7 for ``far``)."""
    assert main(["rank", str(three_models), "--metrics", "logme,gbc", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "-0.0000" not in out
    far = next(line for line in out.splitlines() if " far " in line)
    assert far.split()[4] == "0.0000"
    argv = ["rank", str(three_models), "--metrics", "gbc", "--format", "json", "--quiet"]
    assert main(argv) == 0
    gbc = {r["model"]: r["scores"]["gbc"] for r in json.loads(capsys.readouterr().out)}
    assert -1e-3 < gbc["far"] < 0  # the full value, sign and all, where digits show it


@pytest.mark.slow
def test_an_uncalibrated_text_ranking_says_why(tmp_path: Path, capsys) -> None:
    """The shipped text table holds outcomes, but for fewer models per dataset than an order
    needs: the first text ranking says so (not "no outcomes yet"), counting the table's
    datasets."""
    from app.reference import __file__ as reference

    with open(Path(reference).parent / "zoo_groundtruth_text.csv") as f:
        per: dict[str, set[str]] = {}
        for row in csv.DictReader(f):
            per.setdefault(row["dataset"], set()).add(row["model"])
    assert per and max(map(len, per.values())) < scoring.recommend.MIN_OUTCOMES
    texts = _texts(tmp_path / "reviews.csv", TEXTS)
    argv = ["rank", str(texts), "--metrics", "logme", "--quiet"]
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert (
        f"how far to trust it: untested, a default from the literature, uncalibrated because "
        f"the {len(per)} datasets with fine-tuning outcomes of this kind cannot measure an "
        "order of models (all have outcomes for fewer than 3 models) (record outcomes of at "
        "least 3 models of a dataset"
    ) in last, last


@pytest.mark.slow
def test_outcomes_add_after_a_local_rank(tmp_path: Path, capsys) -> None:
    """A local ranking is kept in the local database: its dataset takes outcomes by name, and
    ranking the same data again updates it rather than adding another."""
    texts = _texts(tmp_path / "reviews.csv", TEXTS)
    argv = ["rank", str(texts), "--metrics", "logme,leep", "--format", "json", "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "kept as dataset reviews" in err and "transferbench outcomes add" in err
    assert main(["outcomes", "add", "reviews", "minilm-intent", "88.5"]) == 0, capsys.readouterr()
    assert main(["outcomes", "add", "reviews", "minilm-l6", "91"]) == 0
    assert main(argv) == 0  # the same data again: the same dataset, its outcomes kept
    capsys.readouterr()
    assert main(["outcomes", "list", "reviews"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(listed) == ["minilm-intent\tfinetune_top1\t88.5", "minilm-l6\tfinetune_top1\t91"]


@pytest.mark.slow
def test_outcomes_add_names_the_ids_of_datasets_sharing_a_name(tmp_path: Path, capsys) -> None:
    first = _texts(tmp_path / "a" / "reviews.csv", TEXTS)
    second = _texts(tmp_path / "b" / "reviews.csv", [*TEXTS[:-1], ("pie after dinner", "food")])
    for path in (first, second):
        assert main(["rank", str(path), "--metrics", "logme", "--quiet"]) == 0
    kept = re.findall(r"\(id (\w+)\)", capsys.readouterr().err)
    assert len(set(kept)) == 2
    assert main(["outcomes", "add", "reviews", "minilm-l6", "91"]) == 2
    err = capsys.readouterr().err
    assert "2 datasets are named 'reviews'" in err and all(i in err for i in kept)
    assert main(["outcomes", "add", kept[1], "minilm-l6", "91"]) == 0


def _shipped_image_datasets(metrics: set[str]) -> dict[str, scoring.DatasetRecord]:
    """The shipped image tables read straight from their files, their columns under the
    registry's names, with ``metrics`` only and the outcomes' standard errors where a table
    gives them: what the first local ranking must learn from."""
    from app.reference import shipped
    from scoring.registry import metric_name

    rows = []
    for table in shipped():
        if table.modality != "image":
            continue
        for row in csv.DictReader(io.StringIO(table.text())):
            named = {metric_name(k): v for k, v in row.items() if k not in ("dataset", "model")}
            rows.append(
                {"dataset": f"{table.name}/{row['dataset']}", "model": row["model"]}
                | {k: v for k, v in named.items() if k in metrics}
                | {"outcome": row[table.outcome]}
                | {"outcome_se": row.get(f"{table.outcome}_se") or ""}
            )
    return scoring.datasets_from_rows(rows, outcome="outcome")


@pytest.mark.slow
def test_the_first_ranking_on_a_new_machine_is_calibrated_by_the_shipped_tables(
    image_folder: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """No local database yet: the first ranking creates it with the shipped reference tables,
    so its closing line is already the calibrated order, quoting the leave-one-dataset-out
    figures of these metrics measured on the tables' files. Without the tables
    (TB_REFERENCE_TABLES=off) it stays the uncalibrated default, and a database that cannot
    be opened says so and still prints the ranking."""
    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path / "new"))
    argv = ["rank", str(image_folder), "--models", "mobilenet-v2,open-nsfw",
            "--metrics", "logme,leep", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "as fitted on the fine-tuning outcomes of" in last and "untested" not in last, last
    quoted = re.search(r"on (\d+) held-out dataset\(s\), weighted tau (-?[0-9.]+)", last)
    assert quoted is not None, last
    expected = scoring.evaluate_lodo(
        _shipped_image_datasets({"logme", "leep"}),
        directions={m: scoring.REGISTRY[m].higher_is_better for m in ("logme", "leep")},
    )
    assert int(quoted[1]) == expected.count["metric_only"]["weighted_tau"] > 3
    assert quoted[2] == f"{expected.mean['metric_only']['weighted_tau']:.2f}"
    se, low, high = (expected.sem, expected.low, expected.high)
    spread = (
        f" ± {se['metric_only']['weighted_tau']:.2f} (1: the true order; ± one standard error; "
        f"single datasets {low['metric_only']['weighted_tau']:.2f} to "
        f"{high['metric_only']['weighted_tau']:.2f})"
    )
    assert f"weighted tau {quoted[2]}{spread}" in last, last
    assert (tmp_path / "new" / "transferbench.db").is_file()

    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path / "off"))
    monkeypatch.setenv("TB_REFERENCE_TABLES", "off")
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "how far to trust it: untested" in last
    assert "uncalibrated because no fine-tuning outcomes are recorded for datasets of this " in last

    monkeypatch.setenv("TB_DATA_DIR", str(tmp_path / "closed"))
    monkeypatch.setenv("TB_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "how far to trust it: untested" in out.out.splitlines()[-1]
    assert (
        "uncalibrated because the local database, where outcomes are kept, could not"
        in (out.out.splitlines()[-1])
    )
    assert "the local database could not be opened" in out.err
    assert "the recommended order is the uncalibrated default" in out.err


def test_outcome_mistakes_are_refused_or_flagged_before_anything_is_stored(
    tmp_path: Path, capsys
) -> None:
    """On a shipped reference dataset (no ranking needed): a measure the API would refuse was
    stored by the CLI (an empty one became a scope no option could select); a short row of an
    import was a traceback; a header alone said its columns were missing; and a top-1 given as
    a fraction (as ``transferbench finetune`` prints it) was stored as under 1% unremarked."""

    def stored() -> list[str]:
        capsys.readouterr()
        assert main(["outcomes", "list", "Aircraft"]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if "bad" in line]

    for measure in ("", "bad measure", "x" * 65):
        assert (
            main(["outcomes", "add", "Aircraft", "ref:resnet50", "91", "--measure", measure]) == 2
        )
        assert "is not a measure name" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text(
        "dataset,model,value,measure\nAircraft,ref:resnet50,90,bad_1\nAircraft,ref:resnet101\n"
    )
    assert main(["outcomes", "import", str(short)]) == 2
    assert f"{short}:3: no value" in capsys.readouterr().err
    assert stored() == []  # one bad row stores none
    header = tmp_path / "header.csv"
    header.write_text("dataset,model,value\n")
    assert main(["outcomes", "import", str(header)]) == 2
    assert "a header and no rows" in capsys.readouterr().err
    assert main(["outcomes", "add", "Aircraft", "ref:resnet50", "0.912", "--measure",
                 "finetune_top1"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "0.912 means 0.912%" in err and "record 91.2 instead" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rank", "digits", "--seed", "-1"], "a seed is from 0 to 4294967295, not -1"),
        (["finetune", "digits", "--models", "mobilenet-v2", "--seed", "2**40"], "not a whole"),
        (["serve", "--port", "99999"], "a port is from 0 to 65535, not 99999"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(argv: list[str], says: str, capsys) -> None:
    """A negative seed was a numpy traceback after the dataset loaded; a port over 65535 was
    logged as taken while the server listened on another."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_an_output_or_plot_that_cannot_be_written_is_refused_before_any_scoring(
    tmp_path: Path, capsys
) -> None:
    """Each was a traceback after the ranking was scored (and not kept): a folder on the way
    that is a file, an existing folder in the file's place, a plot suffix no format has."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (["--output", str(blocker / "x.json")], f"{blocker} is a file, not a folder"),
        (["--plot", str(blocker / "sub" / "p.png")], f"{blocker} is a file, not a folder"),
        (["--output", str(tmp_path / "adir")], "is a folder; give a file name in it"),
        (["--plot", str(tmp_path / "chart.txt")], "no image format is called 'txt'"),
    ]
    for extra, says in cases:
        argv = ["rank", "no-such-dataset-is-read-first", "--metrics", "logme", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and "no-such-dataset" not in err, err


def test_model_typos_are_refused_before_anything_loads_and_never_suggest_a_table_model(
    capsys,
) -> None:
    """``finetune --models nosuch`` loaded the dataset, then printed a failed row (exit 1);
    ``rank --server`` listed an imported table's models, which have no weights to run, among
    those to choose from."""
    from datetime import UTC, datetime

    from app.schemas import ModelOut
    from workers.cli.remote import _check_models

    assert main(["finetune", "no-such-dataset", "--models", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nosuch'" in err and "no-such-dataset" not in err

    def model(name: str, source: dict[str, str]) -> ModelOut:
        return ModelOut(id=name, name=name, status="ready", error=None, tenant=None,
                        modality="image", source=source, has_head=True, num_source_classes=None,
                        fingerprint=None, builtin=False, created_at=datetime.now(UTC))  # fmt: skip

    known = [model("mobilenet-v2", {"spec": "mobilenet-v2"}),
             model("ref:resnet50", {"reference": "resnet50"})]  # fmt: skip
    with pytest.raises(Exception, match="it has mobilenet-v2 \\(or drop") as refused:
        _check_models(["mobilenet-v3"], known, "http://server")
    assert "ref:" not in str(refused.value)

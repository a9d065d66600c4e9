"""Migrations on real PostgreSQL: the schema goes up and down again, 0007 drops the stored
leaderboards (derived data built by rules that changed), which the next read builds anew, and
0011 puts the fine-tuning outcomes a run recorded in percent."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.db.migrate import downgrade, upgrade
from app.db.models import DatasetRow, ModelRow, OutcomeRow


def test_every_migration_goes_up_and_down(pg_url: str) -> None:
    upgrade(pg_url)
    downgrade(pg_url, "base")
    upgrade(pg_url)


def test_0007_drops_the_stored_boards(pg_url: str) -> None:
    upgrade(pg_url, "0006")
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, name, modality, task, content_hash, tenant, "
                    "size_bytes, n_samples, classes, path, created_at) VALUES ('d1', 'd', "
                    "'image', 'classification', 'h', 'default', 1, 1, '[]', '/x', now())"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO leaderboards (dataset_id, metric, body, updated_at) "
                    "VALUES ('d1', 'recommended', 'old', now())"
                )
            )
        upgrade(pg_url, "0007")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM leaderboards")) == 0
            assert conn.scalar(text("SELECT count(*) FROM datasets")) == 1
    finally:
        engine.dispose()


def test_0011_puts_the_outcomes_a_run_recorded_in_percent(pg_url: str) -> None:
    """A fine-tuning job (its details name the job) and a verification stored a fraction
    under finetune_top1; the tables and outcomes typed in give percent. Only the runs'
    outcomes move, with their standard errors; and back down again."""
    upgrade(pg_url, "0010")
    engine = create_engine(pg_url)
    run = {"finetune_id": "f1", "se": 0.087, "n_validation": 20}
    verified = {"verification": {"round": 1}, "se": 0.1}
    entries = [  # model, measure, value, details
        ("m1", "finetune_top1", 0.8125, run),
        ("m2", "finetune_top1", 0.5, verified),
        ("m3", "finetune_top1", 91.2, {}),  # typed in: already percent
        ("m4", "loss", 0.3, {"finetune_id": "f1"}),  # another measure
    ]
    try:
        with Session(engine) as s, s.begin():
            s.add(DatasetRow(id="d1", tenant="default", name="d", modality="image",
                             task="classification", content_hash="h", n_samples=1,
                             classes=[], path="/x"))  # fmt: skip
            for model, measure, value, details in entries:
                s.add(ModelRow(id=model, tenant="default", name=model, source={}))
                s.flush()
                s.add(OutcomeRow(dataset_id="d1", model_id=model, measure=measure, value=value,
                                 details=details))  # fmt: skip

        def stored() -> dict[str, tuple[float, object]]:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT model_id, value, details FROM outcomes"))
                return {m: (v, (d or {}).get("se")) for m, v, d in rows}

        upgrade(pg_url, "0011")
        assert stored() == {
            "m1": (81.25, 8.7),
            "m2": (50.0, 10.0),
            "m3": (91.2, None),
            "m4": (0.3, None),
        }
        downgrade(pg_url, "0010")
        assert stored() == {
            "m1": (0.8125, 0.087),
            "m2": (0.5, 0.1),
            "m3": (91.2, None),
            "m4": (0.3, None),
        }
    finally:
        engine.dispose()

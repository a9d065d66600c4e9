"""The reference tables that ship with transferbench (package data, see README.md here).

Each is a wide table (``dataset, model, <outcome>, <score columns>``) the service imports as
shared reference benchmarks when its database is created or migrated
(``app.services.reference``). ``scripts/reference_tables.py`` (``make reference-tables``)
copies the current files here; a table's version is the digest of its bytes, so a new copy is
a new version and replaces the old rows on the next start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ReferenceTable:
    """One shipped table: its file here, the name its datasets are imported under, the
    outcome column, the modality and task of its datasets, its lower-is-better columns and
    where it comes from."""

    file: str
    name: str
    outcome: str
    modality: str
    task: str
    source: str
    lower_is_better: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return HERE / self.file

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def version(self) -> str:
        """The sha256 of the file: a changed table is a new version."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


#: Every table that may ship; ``shipped()`` keeps those whose file is here.
TABLES: tuple[ReferenceTable, ...] = (
    ReferenceTable(
        file="model_spider_image_zoo.csv",
        name="model_spider_image_zoo",
        outcome="finetune_top1",
        modality="image",
        task="classification",
        source="Model-Spider (zhangyikaii/Model-Spider, NeurIPS 2023, MIT licence): see README.md",
    ),
    ReferenceTable(
        file="zoo_groundtruth_image.csv",
        name="zoo_groundtruth_image",
        outcome="finetune_top1",
        modality="image",
        task="classification",
        source="bench/groundtruth.py: the zoo's image models fine-tuned on offline tasks",
    ),
    ReferenceTable(
        file="zoo_groundtruth_text.csv",
        name="zoo_groundtruth_text",
        outcome="finetune_top1",
        modality="text",
        task="classification",
        source="bench/groundtruth.py: the zoo's text models fine-tuned on offline tasks",
    ),
)


def shipped() -> list[ReferenceTable]:
    """The tables whose file is in the installed package."""
    return [t for t in TABLES if t.path.exists()]

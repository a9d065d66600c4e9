"""A model source is declared once, in ``workers.pipeline.specs.SOURCE_TABLE``: the grammar,
the loaders and the check of what a remote client may name all follow that declaration."""

from __future__ import annotations

import pytest

from workers.pipeline import remote_sources, specs
from workers.pipeline.models.sources import LOADERS
from workers.pipeline.remote_sources import SourceRefused
from workers.pipeline.specs import SOURCE_TABLE, Source, sources_of_kind


def test_every_declared_source_has_a_loader_and_every_loader_a_declaration() -> None:
    assert list(LOADERS) == [s.name for s in SOURCE_TABLE]


def test_the_grammar_reads_the_declaration() -> None:
    assert tuple(s.name for s in SOURCE_TABLE) == specs.SOURCES
    assert {s.name: s.options for s in SOURCE_TABLE} == specs.OPTIONS
    assert len(set(specs.SOURCES)) == len(specs.SOURCES)


def test_the_remote_check_reads_each_source_s_kind() -> None:
    assert sources_of_kind("file") == remote_sources.FILE_SOURCES
    assert sources_of_kind("hub_or_dir") == remote_sources.HUB_OR_DIR_SOURCES
    assert set(remote_sources.HUB_NAMES) == set(sources_of_kind("hub"))
    assert set(sources_of_kind("hub", "hub_or_dir", "file")) == set(specs.SOURCES)


def test_a_new_hub_source_without_a_rule_for_its_names_is_closed_to_remote_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Declared but not yet given a rule in ``HUB_NAMES``: refused, not let through with a
    path for its REF."""
    new = Source("newhub", "hub", ())
    monkeypatch.setattr(specs, "SOURCE_TABLE", (*SOURCE_TABLE, new))
    monkeypatch.setattr(specs, "SOURCES", (*specs.SOURCES, new.name))
    monkeypatch.setattr(specs, "OPTIONS", {**specs.OPTIONS, new.name: new.options})
    assert specs.parse_spec("newhub:/srv/models/x").source == "newhub"
    with pytest.raises(SourceRefused, match="newhub: not open to remote clients"):
        remote_sources.check("newhub:/srv/models/x", model_dir_set=True)

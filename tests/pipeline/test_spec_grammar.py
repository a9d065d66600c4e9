"""One grammar for model specs: what the API's check approves is exactly what the worker loads.

The check (``remote_sources.check``), the worker's confinement (``remote_sources.resolve``) and
the loader (``load_model`` -> ``parse_spec``) all read a spec with ``workers.pipeline.specs``;
these tests feed them %-encoded, double-encoded, mixed-case and otherwise disguised forms of
every source and of every option that names another source or a path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from workers.pipeline import remote_sources
from workers.pipeline.errors import PipelineError
from workers.pipeline.models import load_model
from workers.pipeline.remote_sources import SourceRefused
from workers.pipeline.specs import SOURCES, ModelSpec, SpecError, parse_spec

#: specs whose plain form names a path, a local directory or another source where a remote
#: client may not: each must be refused in every disguise
ESCAPES = [
    "statedict:w.pt?arch=timm:local-dir:/srv/models",
    "statedict:w.pt?arch=timm:file:/srv/models",
    "statedict:w.pt?arch=hf:/srv/models",
    "statedict:w.pt?arch=/srv/models/arch",
    "timm:local-dir:/srv/models",
    "timm:file:///srv/models",
    "hf:/srv/models/bert",
    "hf:../bert",
    "st:/srv/models/minilm",
    "st:~/minilm",
    "onnx:/etc/passwd",
    "torchscript:../../x.pt",
    "statedict:/srv/w.pt?arch=mobilenet_v2",
]
#: specs a remote client may name: each disguise must be refused or load exactly this
ALLOWED = [
    "statedict:w.pt?arch=mobilenet_v2",
    "statedict:w.pt?arch=timm:resnet18",
    "statedict:w.pt?arch=timm:hf-hub:org/name",
    "timm:resnet18",
    "timm:hf-hub:org/name",
    "torchvision:resnet18?weights=IMAGENET1K_V1",
    "hf:org/name?max_length=64",
    "st:org/name",
    "onnx:team/net.onnx?layer=/head/Gemm&size=224",
    "torchscript:team/net.pt?head=1",
]


def _percent(text: str, chars: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in chars else c for c in text)


def _disguises(spec: str) -> list[str]:
    """``spec`` %-encoded (its letters, its ':' and '/'), double-encoded, in other cases, with
    '+' for a character, with ';' or '#' or a repeated key smuggling a second value."""
    source, _, rest = spec.partition(":")
    forms = [
        _percent(spec, "t"),
        _percent(spec, ":"),
        _percent(spec, "/"),
        _percent(spec, "lh"),
        _percent(spec, "t").replace("%", "%25"),  # double-encoded
        _percent(spec, ":/").replace("%", "%25"),
        f"{source.upper()}:{rest}",
        f"{source.title()}:{rest}",
        spec.upper(),
        spec.replace("timm:", "TIMM:").replace("hf-hub:", "HF-HUB:"),
        spec.replace("local-dir:", "Local-Dir:").replace("arch=", "ARCH="),
        spec.replace("/", "+"),
        spec.replace("?", "#?"),
        spec + "#fragment",
    ]
    query = "?" if "?" not in spec else "&"
    for smuggled in (
        "arch=timm:local-dir:/srv",
        "arch=%74imm:local-dir:/srv",
        "layer=x;arch=timm:local-dir:/srv",
    ):
        forms.append(f"{spec}{query}{smuggled}")
        forms.append(f"{spec}{query.replace('&', ';')}{smuggled}")
    return forms


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An operator's TB_MODEL_DIR holding the files ALLOWED names."""
    root = tmp_path / "models"
    (root / "team").mkdir(parents=True)
    for name in ("w.pt", "team/net.onnx", "team/net.pt"):
        (root / name).write_bytes(b"not loaded here")
    return root


def _approved_is_loaded(spec: str, model_dir: Path) -> ModelSpec | None:
    """The spec the worker hands the loader for a spec the check approves (None: refused),
    asserting it is the check's own parse: same source and options, same model."""
    try:
        approved = remote_sources.check(spec, model_dir_set=True)
        handed = remote_sources.resolve(spec, model_dir)
    except SourceRefused:
        return None
    loaded = parse_spec(handed) if ":" in handed else None
    if approved is None:  # a zoo name: loaded by name, as given
        assert handed == spec
        return None
    assert loaded is not None
    assert (loaded.source, loaded.options) == (approved.source, approved.options), spec
    real = os.path.realpath(model_dir / approved.ref)
    assert loaded.ref in (approved.ref, real), spec
    # and the values the loader reads pass the check themselves
    assert remote_sources.check(str(ModelSpec(loaded.source, approved.ref, loaded.options)),
                                model_dir_set=True) == approved  # fmt: skip
    return loaded


@pytest.mark.parametrize("spec", ESCAPES)
def test_a_path_or_another_source_is_refused_in_every_disguise(spec: str, model_dir: Path):
    for form in [spec, *_disguises(spec)]:
        assert _approved_is_loaded(form, model_dir) is None, form


@pytest.mark.parametrize("spec", ALLOWED)
def test_an_allowed_spec_loads_as_approved_in_every_disguise(spec: str, model_dir: Path):
    loaded = _approved_is_loaded(spec, model_dir)
    assert loaded is not None and parse_spec(str(loaded)) == loaded
    for form in _disguises(spec):  # refused, or (a harmless variant) loaded as approved
        outcome = _approved_is_loaded(form, model_dir)
        assert outcome is None or "%" not in form, form  # never read two ways: refused


def test_the_percent_escaped_arch_of_the_report_is_refused_by_check_and_loader(model_dir: Path):
    spec = "statedict:w.pt?arch=%74imm:local-dir:/any/server/folder"
    with pytest.raises(SourceRefused, match="%"):
        remote_sources.check(spec, model_dir_set=True)
    with pytest.raises(SourceRefused, match="%"):
        remote_sources.resolve(spec, model_dir)
    with pytest.raises(PipelineError, match="never %-decoded"):
        load_model(f"statedict:{model_dir / 'w.pt'}?arch=%74imm:local-dir:{model_dir}")


def test_the_grammar_reads_plus_semicolon_and_hash_literally():
    spec = parse_spec("onnx:/m.onnx?layer=a+b;c#d&mean=1e+2,2,3")
    assert spec.options == {"layer": "a+b;c#d", "mean": "1e+2,2,3"}
    assert spec.option_triple("mean", (0.0, 0.0, 0.0)) == (100.0, 2.0, 3.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("TIMM:resnet18", "lower case: timm:"),
        ("Onnx:/m.onnx", "lower case: onnx:"),
        ("statedict:/w.pt?arch=a&arch=b", "given twice"),
        ("statedict:/w.pt?ARCH=resnet18", "takes no option 'ARCH'"),
        ("timm:resnet18?arch=mobilenet_v2", "takes no option 'arch'"),
        ("st:org/name?max_length=8", "its options: none"),
        ("onnx:/m.onnx?layer=", "has no value"),
        ("onnx:/m.onnx?layer=a%2Fb", "never %-decoded"),
        ("onnx:/m\n.onnx", "control character"),
        ("hf:", "names no model"),
    ],
)
def test_what_the_grammar_refuses_says_what_to_write(text: str, words: str):
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    assert words in str(caught.value)


_PIECES = st.sampled_from(
    [*SOURCES, "TIMM", ":", "?", "&", "=", "%", "%25", "%74", "+", ";", "#", "/", "..", "~",
     "arch", "arch=", "layer=", "size", "head", "timm:", "local-dir:", "hf-hub:", "org", "w.pt",
     "t", "x", "74"]
)  # fmt: skip


@given(pieces=st.lists(_PIECES, max_size=12))
@example(pieces=["statedict", ":", "w.pt", "?", "arch=", "%74", "imm:", "local-dir:", "/", "x"])
def test_whatever_the_check_approves_is_what_the_loader_loads(tmp_path_factory, pieces):
    model_dir = tmp_path_factory.mktemp("models")
    (model_dir / "w.pt").write_bytes(b"")
    _approved_is_loaded("".join(pieces), model_dir)


@given(pieces=st.lists(_PIECES, max_size=12))
@example(pieces=["onnx", ":", "x", "?", "layer=", "%25", "74"])
def test_a_parsed_spec_written_back_reads_back_equal(pieces):
    try:
        spec = parse_spec("".join(pieces))
    except SpecError:
        return
    assert parse_spec(str(spec)) == spec

"""``scoring``'s public surface is exactly ``__all__``, and every name in it is documented."""

from __future__ import annotations

import inspect

import scoring


def test_all_lists_every_public_member_once() -> None:
    assert len(scoring.__all__) == len(set(scoring.__all__))
    assert scoring.__all__ == sorted(scoring.__all__, key=lambda n: (not n.isupper(), n))
    public = {
        name
        for name, value in vars(scoring).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in {"annotations"}
    }
    assert public == set(scoring.__all__)


def test_every_exported_callable_has_a_docstring() -> None:
    for name in scoring.__all__:
        member = getattr(scoring, name)
        if callable(member) and not isinstance(member, type(scoring.Target)):
            assert inspect.getdoc(member), f"scoring.{name} has no docstring"

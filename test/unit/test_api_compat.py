"""Drop-in compatibility: python-slimta 5.0.5's public API still holds.

``test/data/python_slimta_api.json`` (the relay layer) and
``python_slimta_api_upper.json`` (the queue, bounces, policies and logging modules
implemented so far) are snapshots of the original's public names,
class members and parameters, written by ``scripts/api_snapshot.py`` from an installed
python-slimta. Every module must export the same names; every class keeps its members;
every function and method keeps its parameters in order, with the same kinds and
defaults. New parameters may only be appended.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os

import pytest

ORIGINAL: dict = {}
for _snapshot in ("python_slimta_api.json", "python_slimta_api_upper.json"):
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", _snapshot)) as _f:
        ORIGINAL.update(json.load(_f))

#: Names python-slimta programs import from these modules although the original
#: leaves them out of ``__all__``: they must stay importable.
EXTRA_NAMES = {
    "slimta.relay": ["RelayError"],
    "slimta.relay.smtp": ["SmtpTransientRelayError", "SmtpPermanentRelayError"],
    "slimta.relay.smtp.mx": ["NoDomainError", "MxRecord"],
    "slimta.relay.http": ["HttpRelayClient"],
    "slimta.smtp.auth": ["ServerAuthError", "InvalidMechanismError"],
    "slimta.smtp.io": ["IO"],
    "slimta.core": ["__version__"],
}

#: Private members that python-slimta programs override or call as hooks (they are kept
#: like public ones); other private members are internals.
PRIVATE_HOOKS = {"__init__", "_attempt", "_run", "_flush_pipeline", "_client_class",
                 "_default_class"}


def _params(obj: object) -> list[list[str]] | None:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return [
        [p.name, p.kind.name, repr(p.default) if p.default is not p.empty else ""]
        for p in sig.parameters.values()
    ]


def _compatible(orig: list[list[str]], ours: list[list[str]]) -> str | None:
    """None when ``ours`` keeps every parameter of ``orig`` in place; else why not."""
    ours_by_pos = list(ours)
    has_var_kw = any(kind == "VAR_KEYWORD" for _, kind, _ in ours)
    for index, (name, kind, default) in enumerate(orig):
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            if not any(k == kind for _, k, _ in ours):
                if kind == "VAR_KEYWORD" and has_var_kw:
                    continue
                return f"lost *{name}" if kind == "VAR_POSITIONAL" else f"lost **{name}"
            continue
        if index >= len(ours_by_pos):
            return f"missing parameter {name}"
        o_name, o_kind, o_default = ours_by_pos[index]
        if o_name != name:
            return f"parameter {index} is {o_name!r}, was {name!r}"
        if kind == "POSITIONAL_OR_KEYWORD" and o_kind != kind:
            return f"{name} became {o_kind}"
        if default and default != o_default and not _same_default(default, o_default):
            return f"{name} default {o_default}, was {default}"
        if not default and o_default and kind == "POSITIONAL_OR_KEYWORD":
            continue  # a new default only widens what callers may pass
    return None


def _same_default(a: str, b: str) -> bool:
    # Float/int spellings of the same number (10 vs 10.0) are the same default.
    if not b:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return False


CASES = [
    (module, name)
    for module, info in sorted(ORIGINAL.items())
    for name in info["all"]
]


@pytest.mark.parametrize("module_name", sorted(ORIGINAL))
def test_module_exports_the_same_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = [n for n in ORIGINAL[module_name]["all"] if n not in module.__all__]
    assert missing == []
    for name in EXTRA_NAMES.get(module_name, []):
        assert hasattr(module, name), name


@pytest.mark.parametrize("module_name", sorted(EXTRA_NAMES))
def test_extra_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in EXTRA_NAMES[module_name]:
        assert hasattr(module, name), name


@pytest.mark.parametrize(("module_name", "name"), CASES)
def test_signatures_and_members(module_name: str, name: str) -> None:
    entry = ORIGINAL[module_name]["names"][name]
    ours = getattr(importlib.import_module(module_name), name)
    problems = []
    if entry["kind"] == "function":
        why = _compatible(entry["params"] or [], _params(ours) or [])
        if why:
            problems.append(why)
    elif entry["kind"] == "class":
        assert inspect.isclass(ours)
        for member, spec in entry["members"].items():
            if member.startswith("_") and member not in PRIVATE_HOOKS:
                continue
            if not hasattr(ours, member):
                problems.append(f"missing member {member}")
                continue
            if isinstance(spec, list):
                value = inspect.getattr_static(ours, member)
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                why = _compatible(spec, _params(value) or [])
                if why:
                    problems.append(f"{member}: {why}")
    assert problems == [], f"{module_name}.{name}: {problems}"

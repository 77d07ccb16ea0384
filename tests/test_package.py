"""The package as a user meets it: every module an attribute, nothing private in `dir`, imports one way."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import convattn

SRC = Path(convattn.__file__).parent
# Each package may import only from the packages before it (and itself): imports flow one way.
ORDER = ["utils", "layers", "models", "ssl", "functional", "attention", "convert", "data", "train",
         "analysis", "study", "cli"]  # fmt: skip


def _modules() -> list[str]:
    found = pkgutil.walk_packages([str(SRC)], prefix="convattn.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))  # __main__ runs the CLI


@pytest.mark.parametrize("name", _modules())
def test_every_module_is_reachable_as_an_attribute_chain(name):
    obj = convattn
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    assert obj is importlib.import_module(name)


def test_dir_lists_only_public_names():
    names = dir(convattn)
    assert not [n for n in names if n.startswith("_") and n != "__version__"]
    assert not {"Any", "importlib", "annotations"} & set(names)
    assert {"analysis", "study", "utils", "layers", "models", "create_model", "conv_to_attention"} <= set(
        names
    )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = convattn.nope


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    return ORDER.index(top) if top in ORDER else -1


def test_imports_flow_one_way():
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        here = "convattn." + ".".join(rel.parts)
        mine = _layer(here)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.startswith("convattn.") and _layer(t) > mine >= 0:
                    wrong.append(f"{here} imports {t}")
    assert not wrong, "\n".join(wrong)

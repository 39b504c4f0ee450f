"""docs/distributed.md's lists of which model families shard which way, checked against the
installed mlx-lm: tensor parallel where the family's `Model` has `shard`, pipeline where
`model.model` has `pipeline` (mlx_lm.utils.sharded_load's own checks, which
engines/distributed/shard.py makes too). The classes are resolved from the sources without
building any model (`self.model = X(...)` in `__init__`, or a property returning `self.a.b`),
and the resolution is checked against real tiny models of two families."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import mlx_lm.models
import pytest

from tests.tiny import tiny_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def attribute_class(cls: Any, name: str, depth: int = 0) -> Any:
    """The class of `instance.<name>` for an instance of `cls`, as its source says."""
    if depth > 4 or cls is None:
        return None
    prop = inspect.getattr_static(cls, name, None)
    if isinstance(prop, property) and prop.fget is not None:
        returned = re.search(r"return\s+self\.([\w.]+)", inspect.getsource(prop.fget))
        target = cls if returned else None
        for part in returned.group(1).split(".") if returned else []:
            target = attribute_class(target, part, depth + 1)
        return target
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if inspect.isfunction(init):
            built = re.search(rf"self\.{name}\s*=\s*(\w+)\(", inspect.getsource(init))
            if built:
                found = init.__globals__.get(built.group(1))
                return found if inspect.isclass(found) else None
    return None


def placements() -> tuple[set[str], set[str]]:
    """(tensor parallel, pipeline) model modules of the installed mlx-lm."""
    tensor, pipeline = set(), set()
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        try:
            module = importlib.import_module(f"mlx_lm.models.{info.name}")
        except (ImportError, SystemExit):  # olmo exits when its optional package is missing
            continue
        model = getattr(module, "Model", None)
        if not inspect.isclass(model):
            continue
        if hasattr(model, "shard"):
            tensor.add(info.name)
        inner = attribute_class(model, "model")
        if inner is not None and hasattr(inner, "pipeline"):
            pipeline.add(info.name)
    return tensor, pipeline


def documented(kind: str) -> set[str]:
    """The backticked names between `<!-- families:KIND -->` and the next `<!--`."""
    text = DOCS.read_text()
    start = text.index(f"<!-- families:{kind} -->")
    section = text[start + 1 : text.index("<!--", start + 1)]
    return set(re.findall(r"`([a-z0-9_]+)`", section))


def test_the_resolution_matches_real_models() -> None:
    for arch, pipelines in (("llama", False), ("qwen2", True)):
        model = tiny_model(arch)
        inner = attribute_class(type(model), "model")
        assert inner is type(model.model)
        assert hasattr(inner, "pipeline") == hasattr(model.model, "pipeline") == pipelines


@pytest.fixture(scope="module")
def installed() -> tuple[set[str], set[str]]:
    return placements()


def test_docs_list_the_tensor_parallel_families(installed: tuple[set[str], set[str]]) -> None:
    assert documented("tensor-parallel") == installed[0]


def test_docs_list_the_pipeline_families(installed: tuple[set[str], set[str]]) -> None:
    assert documented("pipeline") == installed[1]

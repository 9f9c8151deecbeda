"""The import rules of the package layout: the tree reads like the data flow only while the arrows point
one way. Checked on the source (ast), transitively, so a rule cannot be broken through a helper module.

* ``pipeline.rules`` is pure: nothing from the HTTP side, the stream runtime, Kafka or the store, and no
  I/O library, however indirectly;
* ``pipeline.wire`` (the types on Kafka) depends on no side that reads or writes them;
* ``pipeline.kafka`` is plumbing: it knows topics and clients, not what flows through them;
* the HTTP side (``pipeline.api``) and the stream (``pipeline.stream``) do not import each other: what
  they share is on the wire, in the rules or in the contract registry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
IO_LIBRARIES = ("aiokafka", "aiohttp", "faust", "mode", "asyncpg", "aiosqlite", "prometheus_client", "kafka")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The pipeline module ``name`` refers to (``pipeline.x.y`` may be a module or a name in one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports (pipeline modules resolved, others by their top-level name)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: Iterable[str] = ()
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] == "pipeline":
                target = resolve(name)
                if target is not None and target != module:
                    found.add(target)
            else:
                found.add(name.split(".")[0])
    return frozenset(found)


def closure(module: str) -> set[str]:
    """``module``'s imports, transitively (``pipeline`` itself only lazily exports the publisher)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in direct_imports(todo.pop()):
            if target not in seen and target != "pipeline":
                seen.add(target)
                if target in MODULES:
                    todo.append(target)
    return seen


def in_package(module: str, *packages: str) -> bool:
    return any(module == f"pipeline.{p}" or module.startswith(f"pipeline.{p}.") for p in packages)


def modules_of(package: str) -> list[str]:
    return sorted(m for m in MODULES if in_package(m, package))


def test_the_layout_is_what_the_rules_speak_of() -> None:
    for package in ("api", "rules", "wire", "stream", "kafka", "store"):
        assert len(modules_of(package)) > 1, f"pipeline.{package} has no modules"


@pytest.mark.parametrize("module", modules_of("rules"))
def test_rules_are_pure(module: str) -> None:
    reached = closure(module)
    banned = sorted(m for m in reached if in_package(m, "api", "stream", "kafka", "store", "contracts"))
    assert not banned, f"{module} reaches {banned}"
    io = sorted(m for m in reached if m in IO_LIBRARIES)
    assert not io, f"{module} reaches I/O libraries {io}"


@pytest.mark.parametrize("module", [m for m in modules_of("wire") if m != "pipeline.wire.schemas"])
def test_wire_types_depend_on_no_reader_or_writer(module: str) -> None:
    banned = sorted(m for m in closure(module) if in_package(m, "api", "stream", "store", "contracts"))
    assert not banned, f"{module} reaches {banned}"


@pytest.mark.parametrize("module", modules_of("kafka"))
def test_kafka_plumbing_knows_no_payloads(module: str) -> None:
    banned = sorted(
        m for m in direct_imports(module) if in_package(m, "api", "stream", "rules", "wire", "contracts")
    )
    assert not banned, f"{module} imports {banned}"


@pytest.mark.parametrize(("side", "other"), [("api", "stream"), ("stream", "api")])
def test_http_side_and_stream_do_not_import_each_other(side: str, other: str) -> None:
    crossing = {m: sorted(t for t in direct_imports(m) if in_package(t, other)) for m in modules_of(side)}
    assert not {m: t for m, t in crossing.items() if t}, f"pipeline.{side} imports pipeline.{other}"


def test_the_checker_sees_a_violation() -> None:
    """The rules above are not vacuous: the checker does find the imports that exist."""
    assert "pipeline.rules.triplets" in closure("pipeline.stream.expand")
    assert "aiokafka" in closure("pipeline.stream.runtime")

"""The architecture, checked: each module imports only from its own layer or below, and no module grows past ~400
lines. Layers (README "How to extend"): foundations → tasks and readers → verifiers → engine → stages → cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distill"
LAYERS = [
    ("errors", "redact", "_compat", "_guard", "recipe", "config", "prompts", "templates", "tiny", "models", "data",
     "data.record", "data.io"),
    ("tasks", "data.adapters", "data.reader"),
    ("verify",),
    ("engine",),
    ("generate", "replicas", "filters", "train", "eval", "data.publish", "data.card", "pipeline"),
    ("demo", "cli", "__main__", "__init__"),
]
MAX_LINES = 420


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    assert layer is not None, f"distill.{module} is in no layer of tests/test_layers.py: add it"
    return layer


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def imports_of(path: Path, module: str) -> set[str]:
    """Every distill module this file imports, at the top or inside a function."""
    found = set()
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distill")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["distill", *package.split(".")][: len(package.split(".")) + 2 - node.level]) + (
                    f".{base}" if base else "")
            if base == "distill":
                found |= {f"distill.{a.name}" for a in node.names}
            elif base.startswith("distill."):
                found.add(base)
    return {name.removeprefix("distill.") for name in found if name != "distill"}


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_only_go_down_a_layer(module, path):
    mine = layer_of(module)
    for imported in sorted(imports_of(path, module)):
        if imported.split(".")[0] not in {p.split(".")[0] for layer in LAYERS for p in layer}:
            continue  # a package data name, e.g. `from distill import __version__`
        assert layer_of(imported) <= mine, f"distill.{module} (layer {mine}) imports distill.{imported} " \
                                           f"(layer {layer_of(imported)})"


def test_no_module_is_too_long():
    long = {m: n for m, p in modules() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"

"""The package's layers (docs/architecture.md, "Layers"): no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medad_monai"

# bottom to top; a module may import from its own layer and the layers below it
LAYERS: list[set[str]] = [
    {"errors", "io", "rng", "provenance", "scores", "options", "bundle", "benchmarking", "distributed"},
    {"networks", "losses", "anomaly_maps"},
    {"data", "transforms", "metrics", "visualize", "html_report"},
    {"handlers", "engines"},
    {"inference"},
    {"label", "deploy", "comparison"},
    {"cli", "__main__"},
]


def _layer(module: str) -> int:
    """The layer of ``medad_monai.<top>...``; the package's ``__init__`` (only ``__version__``) is the ground floor."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its top-level name to LAYERS and docs/architecture.md")


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medad_monai"):
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("medad_monai")]
    return found


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target, line in _imports(path):
            if _layer(target) > _layer(module):
                upward.append(f"{module} -> {target} (line {line})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_every_top_level_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    tops -= {"__init__", "__pycache__"}
    known = set().union(*LAYERS)
    assert tops <= known, f"modules in no layer: {sorted(tops - known)}"


def test_the_package_init_imports_nothing_of_the_package():
    assert not _imports(PACKAGE / "__init__.py")  # so that every layer may read __version__

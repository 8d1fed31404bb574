"""The layers of README "Layers", held: every import statement of every module (at the top or inside a
function), parsed with `ast`, points to a package its layer may use."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pipeline", "engines", "calibration", "training", "benchmarks")

# module prefix -> group; the longest matching prefix wins
GROUPS = {
    "core": "core",
    # where frames come from, and the option parsing they share with the stages: below engines and
    # calibration, which render and read frames with them (int8 calibration, calibration from footage)
    "pipeline.synthetic": "media",
    "pipeline.sources": "media",
    "pipeline.stage": "media",
    "pipeline.sidecar": "media",
    "engines": "engines",
    "calibration": "calibration",
    "pipeline": "pipeline",
    "training": "training",
    "benchmarks": "benchmarks",
}
MAY_IMPORT = {
    "core": {"core"},
    "media": {"core", "media"},
    "engines": {"core", "media", "engines"},
    "calibration": {"core", "media", "calibration"},
    "pipeline": {"core", "media", "engines", "calibration", "pipeline"},
    "training": {"core", "media", "engines", "calibration", "training"},
    "benchmarks": {"core", "media", "engines", "calibration", "pipeline", "training", "benchmarks"},
}

def group_of(module: str) -> str | None:
    matches = [prefix for prefix in GROUPS if module == prefix or module.startswith(prefix + ".")]
    return GROUPS[max(matches, key=len)] if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved (`from . import x` counts as package.x)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update([target] if node.module else [f"{target}.{alias.name}" for alias in node.names])
    return found


def project_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_imports_only_from_its_own_layer_or_below():
    broken = []
    for path in project_modules():
        module = module_name(path)
        allowed = MAY_IMPORT[group_of(module)]
        for target in sorted(imports_of(path)):
            group = group_of(target)
            if group is not None and group not in allowed:
                broken.append(f"{module} ({group_of(module)}) imports {target} ({group})")
    assert not broken, "\n".join(broken)


def test_the_map_knows_every_package_and_the_parser_resolves_relative_imports():
    assert {group_of(module_name(p)) for p in project_modules()} <= set(MAY_IMPORT)
    assert "pipeline.agc" in imports_of(ROOT / "pipeline" / "fuse.py")
    assert "core.errors" in imports_of(ROOT / "core" / "rig.py")


def test_the_runtime_needs_none_of_the_training_tools():
    """tqdm and matplotlib come with the `train` extra only: the stages, engines and calibration run
    without them."""
    runtime = [p for p in project_modules() if group_of(module_name(p)) not in ("training", "benchmarks")]
    tools = {module_name(p): {t.split(".")[0] for t in imports_of(p)} & {"tqdm", "matplotlib"}
             for p in runtime}
    assert not {module: used for module, used in tools.items() if used}

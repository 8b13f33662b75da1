"""The package declares what its code imports, under an SPDX licence, with the linters pinned."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalised(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])


def imported_modules() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "asr_daemon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "asr_daemon"}


def test_every_third_party_import_is_declared() -> None:
    declared = {requirement_name(r) for r in PROJECT["dependencies"]}
    for extra in PROJECT["optional-dependencies"].values():
        declared |= {requirement_name(r) for r in extra}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(imported_modules()):
        names = {normalised(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_spdx_licence_with_its_file() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "Copyright (c) 2026 The asr-daemon authors" in (ROOT / "LICENSE").read_text(encoding="utf-8")


def test_linters_are_pinned_to_exact_versions() -> None:
    pinned = {requirement_name(r): r for r in PROJECT["optional-dependencies"]["test"]}
    for linter in ("ruff", "mypy", "types-pyyaml"):
        assert "==" in pinned[linter], pinned[linter]

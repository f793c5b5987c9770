"""The dependency rules of the house, read off the source (every import, also those inside functions):
`policy` imports no env, hardware, control, CLI or training code; `hardware` imports no torch (nor anything that
does); `control` imports no training or CLI code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RTDP = Path(__file__).resolve().parents[1] / "rtdp"
TORCH = ("torch", "torchvision", "rtdp.policy", "rtdp.normalizer", "rtdp.train")
RULES = {
    "policy": ("rtdp.envs", "rtdp.hardware", "rtdp.control", "rtdp.cli", "rtdp.train"),
    "hardware": (*TORCH, "rtdp.cli", "rtdp.control", "rtdp.envs"),
    "control": ("rtdp.train", "rtdp.cli"),
    "datasets": ("rtdp.policy", "rtdp.train", "rtdp.cli", "rtdp.control", "rtdp.envs"),
}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(RTDP.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(subpackage: str, banned: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((RTDP / subpackage).rglob("*.py")):
        for name in sorted(imports_of(path)):
            if any(name == b or name.startswith(b + ".") for b in banned):
                out.append(f"{path.relative_to(RTDP.parent)} imports {name}")
    return out


@pytest.mark.parametrize("subpackage", list(RULES))
def test_each_subpackage_imports_only_what_the_dependency_rules_allow(subpackage):
    assert violations(subpackage, RULES[subpackage]) == []


def test_the_rule_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    pkg = tmp_path / "rtdp" / "policy"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from rtdp.envs import make\n    from ..train import trainer\n")
    monkeypatch.setattr(f"{__name__}.RTDP", tmp_path / "rtdp")
    assert violations("policy", RULES["policy"]) == ["rtdp/policy/bad.py imports rtdp.envs",
                                                    "rtdp/policy/bad.py imports rtdp.envs.make",
                                                    "rtdp/policy/bad.py imports rtdp.train",
                                                    "rtdp/policy/bad.py imports rtdp.train.trainer"]

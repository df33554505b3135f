"""The house rules of the package layout (issue 8), checked on the source itself.

- the layers of the folder tree hold (import-linter contracts in pyproject.toml);
- no ``_private`` name crosses a module boundary (imported, or read as ``module._name``);
- no direct submodule of ``reefmap`` is named like one of its public functions (``reefmap.query`` would turn into a
  module after the first import of the submodule).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import reefmap

PKG = Path(reefmap.__file__).parent


def _modname(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_crossings(pkg: Path = PKG) -> list[str]:
    """``module:line name`` for every ``_private`` name of one reefmap module used in another."""
    files = {_modname(p, pkg): p for p in pkg.rglob("*.py")}
    found = []
    for mod, path in sorted(files.items()):
        tree = ast.parse(path.read_text())
        modules = {}  # local name → reefmap module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if not src.startswith("reefmap"):
                    continue
                for a in node.names:
                    if f"{src}.{a.name}" in files:
                        modules[a.asname or a.name] = f"{src}.{a.name}"
                    elif a.name.startswith("_") and not a.name.startswith("__") and src != mod:
                        found.append(f"{mod}:{node.lineno} {src}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("reefmap") and a.asname:
                        modules[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and modules[node.value.id] != mod):
                found.append(f"{mod}:{node.lineno} {modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    assert private_crossings() == []


def test_the_private_name_check_finds_a_crossing(tmp_path):
    pkg = tmp_path / "reefmap"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("_secret = 1\ndef public(): return _secret\n")
    (pkg / "a" / "two.py").write_text("from reefmap.a.one import _secret\nfrom reefmap.a import one\nx = one._secret\n")
    assert private_crossings(pkg) == ["reefmap.a.two:1 reefmap.a.one._secret", "reefmap.a.two:3 reefmap.a.one._secret"]


def test_the_import_layers_hold():
    """The import-linter contracts of pyproject.toml (layers; torch and numba only where they belong)."""
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--config", str(PKG.parent / "pyproject.toml")], capture_output=True, text=True,
                       cwd=PKG.parent, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_submodule_shadows_a_public_name():
    submodules = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
                  if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("_")}
    assert not submodules & set(reefmap.__all__)

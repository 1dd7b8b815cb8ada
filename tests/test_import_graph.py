"""The import graph points one way: export -> checkpoint -> modifiers; no Hugging Face in modifiers.

Static (the AST of every source file) and at run time (what importing a package pulls in).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sparseforge"


def imported_modules(path: Path) -> set[str]:
    """Absolute module names `path` imports (relative imports resolved), anywhere in the file."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offenders(files: list[Path], forbidden: str) -> dict[str, list[str]]:
    found = {}
    for path in files:
        bad = sorted(
            name
            for name in imported_modules(path)
            if name == forbidden or name.startswith(forbidden + ".")
        )
        if bad:
            found[str(path.relative_to(SRC))] = bad
    return found


def test_export_and_checkpoint_never_import_the_hugging_face_layer():
    files = sorted((SRC / "export").glob("*.py")) + [SRC / "checkpoint.py"]
    assert len(files) > 5
    assert offenders(files, "sparseforge.transformers") == {}


def test_recipe_and_modifiers_import_no_hugging_face_transformers():
    files = sorted((SRC / "recipe").rglob("*.py")) + sorted((SRC / "modifiers").rglob("*.py"))
    assert offenders(files, "transformers") == {}
    assert offenders(files, "sparseforge.transformers") == {}


def test_the_checker_sees_an_offending_import(tmp_path):
    fake = SRC / "export" / "deployment.py"
    assert "sparseforge.checkpoint" in imported_modules(fake)
    assert "sparseforge.export.verify" in imported_modules(fake)


@pytest.mark.slow
def test_importing_export_loads_neither_trainer_nor_loading():
    code = (
        "import sys, sparseforge.export, sparseforge.checkpoint, sparseforge.modifiers, sparseforge.recipe\n"
        "bad = [m for m in ('sparseforge.transformers.trainer', 'sparseforge.transformers.loading', "
        "'transformers') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=None
    )
    assert out.stdout.strip() == ""

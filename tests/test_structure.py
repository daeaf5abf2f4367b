"""The rules of the code's layout (issue #12): services meet only on NATS and through shared/.

- A service's modules import no other service's modules (`services.<a>` never imports `services.<b>`);
  what several services need (the submission contract, the wire format) lives in `shared/`.
- `shared/` imports no service.
- The API process does not load torch (or the upscaler) to validate a submission.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def imports_of(folder: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imported_modules(p) for p in sorted((ROOT / folder).rglob("*.py"))}


def service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def test_the_rule_sees_an_import_of_another_service(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from services.upscaler import weights\nimport services.uploader.s3\n")
    assert {service_of(m) for m in imported_modules(source)} == {"upscaler", "uploader"}


def test_no_service_imports_another() -> None:
    crossings = [
        f"{path} imports {module}"
        for path, modules in imports_of("services").items()
        for module in sorted(modules)
        if service_of(module) not in (None, Path(path).parts[1])
    ]
    assert not crossings, "services meet only on NATS and through shared/:\n" + "\n".join(crossings)


def test_shared_imports_no_service() -> None:
    crossings = [
        f"{path} imports {module}"
        for path, modules in imports_of("shared").items()
        for module in sorted(modules)
        if service_of(module) is not None or module == "services"
    ]
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize(
    "entry", ["services.api.app", "services.cli.__main__"], ids=["api", "cli (models list/download)"]
)
def test_a_process_that_runs_no_network_does_not_load_torch(entry: str) -> None:
    probe = (
        f"import sys, importlib; importlib.import_module({entry!r}); "
        "from services.api.app import create_app; create_app(); "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
        "or m.startswith('services.upscaler')); print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


WIRE_PREFIXES = ("tm.", "task.changes", "task.events", "$KV.")


def wire_literals(path: Path) -> list[str]:
    """String literals (f-string parts included, docstrings not) that spell one of the project's subjects."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f"{path.name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value.startswith(WIRE_PREFIXES)
    ]


def test_subjects_are_spelled_only_in_the_wire_module() -> None:
    sources = [p for folder in ("shared", "services") for p in sorted((ROOT / folder).rglob("*.py"))]
    spelled = [
        f"{path.parent.relative_to(ROOT)}/{hit}"
        for path in sources
        if path != ROOT / "shared" / "wire.py"
        for hit in wire_literals(path)
    ]
    assert not spelled, "subjects are written once, in shared/wire.py:\n" + "\n".join(spelled)


def test_the_wire_rule_sees_a_subject_in_an_f_string_not_in_a_docstring(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('"""Docs may say tm.work.p1."""\n\n\ndef f(p):\n    return f"tm.work.p{p}.>"\n')
    assert wire_literals(source) == ["m.py:5: 'tm.work.p'"]

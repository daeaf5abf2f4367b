"""Docs that stay true about the code's layout: every project path they name exists.

README.md, docs/, bench/ and deploy/ READMEs and the code's own docstrings and comments name files
(`shared/taskstate/store.py`, `services/api/tasks/intake.py`); a move that leaves one behind fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("services/", "shared/", "tests/", "bench/", "deploy/", "docs/")
PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)+[\w-]+\.(?:py|md|yaml|yml|json|sh|toml))")


def named_paths(text: str) -> set[str]:
    return {m.group(1) for m in PATH.finditer(text) if m.group(1).startswith(PROJECT_DIRS)}


def test_the_path_pattern_finds_project_paths_only() -> None:
    text = "see `shared/wire.py`, tests/servers/http.py and realesrgan/utils.py; ../shared/models/x.md"
    assert named_paths(text) == {"shared/wire.py", "tests/servers/http.py"}


def test_every_project_path_named_in_docs_and_code_exists() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "Dockerfile*", "*.yml", "*.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    sources = [ROOT / name for name in tracked.stdout.split() if (ROOT / name).is_file()]
    missing = sorted(
        f"{source.relative_to(ROOT)} names {path}"
        for source in sources
        for path in named_paths(source.read_text())
        if not (ROOT / path).exists() and not (source.parent / path).exists()
    )
    assert not missing, "\n".join(missing)

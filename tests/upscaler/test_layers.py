"""The upscaler reads one way (issue #12): worker -> engine -> batcher (tile scheduler) -> plan (one image) ->
inference (the device), and the engine's model cache -> weights. No module imports one above it, not even
inside a function, so there is no cycle to dodge with a lazy import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_structure import ROOT, imported_modules

UPSCALER = ROOT / "services" / "upscaler"
LAYERS = ["inference", "plan", "batcher", "engine", "worker"]  # bottom first
MODELS = ["weights", "modelcache", "engine", "worker"]


def upward_imports(chain: list[str], folder: Path = UPSCALER) -> list[str]:
    """'low.py imports high' for each module of `chain` importing one later in it."""
    found = []
    for i, low in enumerate(chain):
        modules = imported_modules(folder / f"{low}.py")
        for high in chain[i + 1 :]:
            target = f"services.upscaler.{high}"
            if any(m == target or m.startswith(f"{target}.") for m in modules):
                found.append(f"{low}.py imports {high}")
    return found


@pytest.mark.parametrize("chain", [LAYERS, MODELS], ids=["tiles", "models"])
def test_upscaler_modules_import_only_downwards(chain: list[str]) -> None:
    assert not upward_imports(chain), "\n".join(upward_imports(chain))


def test_the_rule_sees_a_lazy_import_inside_a_method(tmp_path: Path) -> None:
    (tmp_path / "low.py").write_text(
        "class Runner:\n    def run(self):\n        from services.upscaler.high import Scheduler\n"
    )
    (tmp_path / "mid.py").write_text("from services.upscaler import high\n")
    (tmp_path / "high.py").write_text("from services.upscaler.low import Runner\n")
    assert upward_imports(["low", "mid", "high"], tmp_path) == ["low.py imports high", "mid.py imports high"]

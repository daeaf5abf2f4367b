"""Dockerfile, Dockerfile.cuda and .dockerignore: parsed and checked for the basics (no Docker needed)."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass

import pytest

from tests.deploy.manifests import ROOT


@dataclass
class Instruction:
    keyword: str
    args: str


def parse(name: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for these files)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (ROOT / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{name}: dangling continuation"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args)


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern.lstrip("/")) for pattern in dockerignore())


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_common_sanity(name: str) -> None:
    instructions = parse(name)
    assert instructions[0].keyword in {"FROM", "ARG"}
    final = final_stage(instructions)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the service must not run as root"
    cmd = next(i.args for i in reversed(final) if i.keyword == "CMD")
    assert json.loads(cmd)[:2] == ["python", "-m"], "exec form: the service is PID 1 and gets SIGTERM"
    for copy in (i for i in instructions if i.keyword == "COPY" and "--from" not in i.args):
        *sources, _ = copy.args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
            assert not ignored(source), f"{name}: COPY {source} is excluded by .dockerignore"


def test_cpu_image() -> None:
    instructions = parse("Dockerfile")
    args = arg_defaults(instructions)
    bases = [expand(i.args.split()[0], args) for i in instructions if i.keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert '--index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"' in runs
    assert 'pip install ".[otel]"' in runs  # the images can trace (docs/operations.md, "Tracing")
    # The same torch as ./task-manager pins for local installs.
    pinned = re.search(r"TM_TORCH_VERSION:-([\d.]+)", (ROOT / "task-manager").read_text())
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
    health = next(i.args for i in final_stage(instructions) if i.keyword == "HEALTHCHECK")
    assert "/health" in health


def test_cuda_image() -> None:
    instructions = parse("Dockerfile.cuda")
    args = arg_defaults(instructions)
    bases = [expand(i.args.split()[0], args) for i in instructions if i.keyword == "FROM"]
    assert all(base.startswith("nvidia/cuda:") for base in bases)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert 'pip install ".[gpu,otel]"' in runs


def test_dockerignore_keeps_the_context_small() -> None:
    for path in [".venv", ".git", "tests", ".data", "RealESRGAN_x4plus.pth", "services/__pycache__"]:
        assert ignored(path), path
    for path in ["pyproject.toml", "README.md", "shared", "services", "services/api/app.py"]:
        assert not ignored(path), path

"""`task-manager models list|download` through a bare argparse parser (the CLI wires `register` the same way)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import pytest

from services.cli import models
from shared.contracts import catalog


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="task-manager")
    models.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_list_shows_every_model_and_whether_it_is_installed(tmp_path: Path, capsys) -> None:
    (tmp_path / "realesr-animevideov3.pth").write_bytes(b"x")
    assert _run("models", "list", "--dir", str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SCALE", "SIZE", "INSTALLED", "PATH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows.keys() == catalog.MODELS.keys()
    assert rows["realesr-animevideov3"][-2:] == ["yes", str(tmp_path / "realesr-animevideov3.pth")]
    assert rows["RealESRGAN_x4plus"][1:5] == ["x4", "67.0", "MB", "no"]


def test_download_from_mirror(monkeypatch, http_root, tmp_path: Path, capsys) -> None:
    root, base = http_root
    payload = b"weights" * 10
    spec = catalog.get("RealESRGAN_x4plus_anime_6B")
    fake = dataclasses.replace(spec, size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(catalog.MODELS, spec.name, fake)
    (root / "v0.2.2.4").mkdir()
    (root / "v0.2.2.4" / spec.filename).write_bytes(payload)
    monkeypatch.setenv("TM_MODEL_DIR", str(tmp_path / "models"))
    assert _run("models", "download", spec.name, "--mirror", base) == 0
    assert (tmp_path / "models" / spec.filename).read_bytes() == payload
    assert "sha256 verified" in capsys.readouterr().out


def test_download_several_from_the_mirror_in_the_environment(monkeypatch, http_root, tmp_path: Path) -> None:
    root, base = http_root
    for name in ("RealESRGAN_x4plus_anime_6B", "RealESRGAN_x4plus"):
        payload = name.encode() * 10
        spec = catalog.get(name)
        fake = dataclasses.replace(spec, size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        monkeypatch.setitem(catalog.MODELS, name, fake)
        (root / spec.url.removeprefix(catalog.OFFICIAL_URL_PREFIX)).parent.mkdir(exist_ok=True)
        (root / spec.url.removeprefix(catalog.OFFICIAL_URL_PREFIX)).write_bytes(payload)
    monkeypatch.setenv("TM_MODEL_MIRROR", base)  # what `up`'s one line tells to set
    model_dir = tmp_path / "models"
    assert _run("models", "download", "RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "--dir", str(model_dir)) == 0
    assert sorted(p.name for p in model_dir.iterdir()) == ["RealESRGAN_x4plus.pth", "RealESRGAN_x4plus_anime_6B.pth"]


def test_download_failure_exits_nonzero(http_root, tmp_path: Path) -> None:
    _, base = http_root
    with pytest.raises(SystemExit, match="1 of 1 downloads failed"):
        _run("models", "download", "RealESRGAN_x2plus", "--dir", str(tmp_path), "--mirror", base)


def test_download_needs_a_name_or_all(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="either NAME ... or --all"):
        _run("models", "download", "--dir", str(tmp_path))

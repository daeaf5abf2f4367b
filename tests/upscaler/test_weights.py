"""Locating, reading, blending and downloading weight files (keeping the loaded nets: test_modelcache.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from services.upscaler import weights
from shared import modelfiles
from shared.contracts import catalog
from shared.runtime.errors import ConfigurationError
from tests.upscaler.conftest import ANIMEVIDEO, shared_file, small_compact

CPU = torch.device("cpu")


def test_read_state_dict_prefers_params_ema_then_params(tmp_path: Path) -> None:
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    for name, checkpoint, expected in [
        ("ema.pth", {"params_ema": a, "params": b}, a),
        ("params.pth", {"params": b}, b),
        ("bare.pth", a, a),
    ]:
        torch.save(checkpoint, tmp_path / name)
        assert torch.equal(weights.read_state_dict(tmp_path / name)["w"], expected["w"])


def test_missing_weights_name_file_dir_and_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        modelfiles.require("RealESRGAN_x4plus", tmp_path)
    message = str(info.value)
    assert "RealESRGAN_x4plus.pth" in message and str(tmp_path) in message
    assert "task-manager models download RealESRGAN_x4plus" in message


def test_load_model_reads_the_architecture_and_dtype(install) -> None:
    model_dir = install("realesr-animevideov3", small_compact())
    model = weights.load_model("realesr-animevideov3", model_dir, CPU)
    assert model.scale == 4 and model.arch == "SRVGGNetCompact" and model.in_channels == 3
    torch.testing.assert_close(model.net.state_dict(), small_compact().state_dict())
    double = weights.load_model("realesr-animevideov3", model_dir, CPU, torch.float64)
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in double.net.parameters())


def test_weight_files_add_the_wdn_helper_only_when_blending(install) -> None:
    install("realesr-general-x4v3", small_compact(seed=1))
    model_dir = install("realesr-general-wdn-x4v3", small_compact(seed=2))
    helper = model_dir / catalog.get("realesr-general-wdn-x4v3").filename
    assert weights.weight_files("realesr-general-x4v3", model_dir, 0.5)[1:] == (helper,)
    assert len(weights.weight_files("realesr-general-x4v3", model_dir, 1.0)) == 1
    assert len(weights.weight_files("realesr-general-x4v3", model_dir)) == 1


def test_load_model_rejects_foreign_checkpoints(tmp_path: Path) -> None:
    torch.save({"params": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "realesr-animevideov3.pth")
    with pytest.raises(ConfigurationError, match="not a Real-ESRGAN checkpoint"):
        weights.load_model("realesr-animevideov3", tmp_path, CPU)


def test_denoise_strength_blends_x4v3_with_wdn(install) -> None:
    install("realesr-general-x4v3", small_compact(seed=1))
    model_dir = install("realesr-general-wdn-x4v3", small_compact(seed=2))
    a, b = small_compact(seed=1).state_dict(), small_compact(seed=2).state_dict()
    blended = weights.load_model("realesr-general-x4v3", model_dir, CPU, denoise_strength=0.25).net.state_dict()
    for key in a:
        torch.testing.assert_close(blended[key], 0.25 * a[key] + 0.75 * b[key])
    plain = weights.load_model("realesr-general-x4v3", model_dir, CPU, denoise_strength=1.0).net.state_dict()
    torch.testing.assert_close(plain["body.0.weight"], a["body.0.weight"])


def test_default_model_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TM_MODEL_DIR", str(tmp_path))
    assert modelfiles.default_model_dir() == tmp_path
    monkeypatch.delenv("TM_MODEL_DIR")
    assert modelfiles.default_model_dir() == Path.home() / ".cache" / "task-manager" / "models"


def test_mirror_replaces_the_official_prefix() -> None:
    url = modelfiles.download_url("realesr-animevideov3", "http://mirror.internal/real-esrgan/")
    assert url == "http://mirror.internal/real-esrgan/v0.2.5.0/realesr-animevideov3.pth"
    assert modelfiles.download_url("realesr-animevideov3") == catalog.get("realesr-animevideov3").url


def _serve_fake(monkeypatch: pytest.MonkeyPatch, root: Path, name: str, payload: bytes, sha256: str) -> None:
    spec = catalog.get(name)
    monkeypatch.setitem(catalog.MODELS, name, dataclasses.replace(spec, size_bytes=len(payload), sha256=sha256))
    served = root / spec.url.removeprefix(catalog.OFFICIAL_URL_PREFIX)
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(payload)


def test_download_verifies_and_renames(monkeypatch, http_root, tmp_path: Path) -> None:
    root, base = http_root
    payload = b"not really weights\n" * 1000
    _serve_fake(monkeypatch, root, "RealESRGAN_x4plus", payload, hashlib.sha256(payload).hexdigest())
    seen: list[int] = []
    path = modelfiles.download(
        "RealESRGAN_x4plus", tmp_path / "models", base, progress=lambda done, total: seen.append(done)
    )
    assert path == tmp_path / "models" / "RealESRGAN_x4plus.pth"
    assert path.read_bytes() == payload and seen[-1] == len(payload)
    assert sorted(p.name for p in path.parent.iterdir()) == ["RealESRGAN_x4plus.pth"]
    # A verified file is kept without asking the server again.
    (root / "v0.1.0" / "RealESRGAN_x4plus.pth").unlink()
    assert modelfiles.download("RealESRGAN_x4plus", tmp_path / "models", base) == path


def test_download_with_wrong_hash_leaves_nothing(monkeypatch, http_root, tmp_path: Path) -> None:
    root, base = http_root
    _serve_fake(monkeypatch, root, "RealESRGAN_x4plus", b"tampered" * 100, "0" * 64)
    model_dir = tmp_path / "models"
    with pytest.raises(modelfiles.DownloadError, match="sha256 mismatch"):
        modelfiles.download("RealESRGAN_x4plus", model_dir, base)
    assert list(model_dir.iterdir()) == []


def test_download_reports_http_errors(http_root, tmp_path: Path) -> None:
    _, base = http_root
    with pytest.raises(modelfiles.DownloadError, match="HTTP 404"):
        modelfiles.download("RealESRGAN_x2plus", tmp_path / "models", base)
    assert list((tmp_path / "models").iterdir()) == []


def test_download_real_file_from_mirror(http_root, tmp_path: Path) -> None:
    root, base = http_root
    served = root / "v0.2.5.0" / "realesr-animevideov3.pth"
    served.parent.mkdir()
    served.write_bytes(shared_file(ANIMEVIDEO).read_bytes())
    path = modelfiles.download("realesr-animevideov3", tmp_path, base)
    assert path.stat().st_size == catalog.get("realesr-animevideov3").size_bytes

"""`task-manager up`'s model weights: the background download (progress, resume, installed) and the one line
that says what is off when weights cannot be had."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from services.cli import modelfetch
from shared import modelfiles
from shared.config import Settings
from shared.contracts import catalog
from tests.upscaler.conftest import ANIMEVIDEO, shared_file
from tests.upscaler.mirror import ReleaseMirror, fake_model

ANIME = "realesr-animevideov3"
DEFAULTS = modelfiles.default_models()


@pytest.fixture
def mirror() -> Iterator[ReleaseMirror]:
    server = ReleaseMirror()
    yield server
    server.close()


def _settings(model_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=model_dir, **overrides)  # type: ignore[arg-type]


def _fetch(settings: Settings) -> tuple[modelfetch.Downloads, list[dict]]:
    with capture_logs() as logs:
        downloads = modelfetch.start(settings)
        assert downloads is not None
        assert downloads.finished.wait(30), "downloads did not finish"
    return downloads, logs


def test_missing_defaults_are_downloaded_with_progress_every_10_percent(
    monkeypatch: pytest.MonkeyPatch, mirror: ReleaseMirror, tmp_path: Path
) -> None:
    for name in DEFAULTS:
        payload = os.urandom(1_000_000)  # 16 chunks: every 10% is passed once
        fake_model(monkeypatch, name, payload)
        mirror.add(name, payload)
    downloads, logs = _fetch(_settings(tmp_path, model_mirror=mirror.url))

    assert downloads.failures == {}
    assert all(modelfiles.is_installed(name, tmp_path) for name in DEFAULTS)
    assert [e["models"] for e in logs if e["event"] == "models_downloading"] == [DEFAULTS]
    assert sorted(e["model"] for e in logs if e["event"] == "model_installed") == sorted(DEFAULTS)
    for name in DEFAULTS:
        percents = [e["percent"] for e in logs if e["event"] == "model_download" and e["model"] == name]
        assert percents == list(range(10, 100, 10)), name
    assert not [e for e in logs if e["event"] == "models_unavailable"]
    assert modelfetch.start(_settings(tmp_path)) is None  # all there: nothing to do


def test_a_dropped_connection_is_resumed_in_the_background(
    monkeypatch: pytest.MonkeyPatch, mirror: ReleaseMirror, tmp_path: Path
) -> None:
    official = shared_file(ANIMEVIDEO).read_bytes()
    monkeypatch.setattr(modelfiles, "default_models", lambda: [ANIME])
    mirror.add(ANIME, official)
    mirror.drop_after = 1_200_000
    downloads, logs = _fetch(_settings(tmp_path, model_mirror=mirror.url))
    assert downloads.failures == {}
    assert modelfiles.weight_path(ANIME, tmp_path).read_bytes() == official
    assert mirror.ranges_asked[0] is None and mirror.ranges_asked[1].startswith("bytes=")
    assert [e["event"] for e in logs if e["event"].startswith("model_download_resum")] == ["model_download_resuming"]


def test_a_failing_mirror_is_said_in_one_line(mirror: ReleaseMirror, tmp_path: Path) -> None:
    downloads, logs = _fetch(_settings(tmp_path, model_mirror=mirror.url))  # serves nothing: HTTP 404
    assert sorted(downloads.failures) == sorted(DEFAULTS)
    lines = [e["message"] for e in logs if e["event"] == "models_unavailable"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "HTTP 404" in lines[0] and f"TM_MODEL_MIRROR={mirror.url}" in lines[0]
    fix = "fix: task-manager models download RealESRGAN_x4plus RealESRGAN_x4plus_anime_6B realesr-general-x4v3 "
    assert fix + f"{ANIME} (" in lines[0]  # the denoise helper comes with the general model
    assert list(tmp_path.iterdir()) == []  # no part files left behind


def test_the_line_says_what_runs_meanwhile_and_the_fix(tmp_path: Path) -> None:
    failures = dict.fromkeys(DEFAULTS, "RealESRGAN_x4plus: downloading https://github.com/... failed: no network")
    line = modelfetch.unavailable_line(failures, tmp_path, None)
    assert line == (
        "model weights missing: RealESRGAN_x4plus, RealESRGAN_x4plus_anime_6B, realesr-general-x4v3, "
        "realesr-general-wdn-x4v3 and realesr-animevideov3 "
        "(RealESRGAN_x4plus: downloading https://github.com/... failed: no network); "
        "meanwhile portrait, photo, anime and text tasks run a Lanczos resize; "
        "fix: task-manager models download RealESRGAN_x4plus RealESRGAN_x4plus_anime_6B realesr-general-x4v3 "
        "realesr-animevideov3 "
        f"(where GitHub is out of reach, set TM_MODEL_MIRROR to a copy of {catalog.OFFICIAL_URL_PREFIX})"
    )
    (tmp_path / catalog.get(ANIME).filename).write_bytes(b"x")
    line = modelfetch.unavailable_line({"RealESRGAN_x4plus": "HTTP 404"}, tmp_path, "http://mirror.internal/")
    assert line == (
        "model weights missing: RealESRGAN_x4plus (HTTP 404); meanwhile portrait and photo tasks run "
        "realesr-animevideov3; fix: task-manager models download RealESRGAN_x4plus "
        "(check that TM_MODEL_MIRROR=http://mirror.internal/ serves the release layout (<release>/<file>.pth))"
    )


def test_auto_download_off_only_says_so(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert modelfetch.start(_settings(tmp_path, model_auto_download=False)) is None
    assert [e["event"] for e in logs] == ["models_unavailable"]
    assert "(TM_MODEL_AUTO_DOWNLOAD=0)" in logs[0]["message"] and list(tmp_path.iterdir()) == []

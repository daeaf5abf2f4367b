"""The engine when the routed model's weights are missing: it waits for a download under way (within
`model_wait_s`), else runs the closest installed network, else Lanczos, and `model_used` says which and why."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.upscaler.engine import Upscaler
from services.upscaler.picture import from_pil
from services.upscaler.plan import Cancelled
from shared import modelfiles
from shared.messages import Category, UpscaleOptions
from tests.upscaler.conftest import ANIMEVIDEO, shared_file, small_compact, small_rrdb
from tests.upscaler.mirror import ReleaseMirror, fake_model

ANIME = "realesr-animevideov3"
PHOTO_MODEL = "RealESRGAN_x4plus"


def _image(width: int = 40, height: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _weights(net: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({"params": net.state_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture
def mirror() -> Iterator[ReleaseMirror]:
    server = ReleaseMirror()
    yield server
    server.close()


def test_a_routed_model_downloaded_within_the_bound_is_used(
    monkeypatch: pytest.MonkeyPatch, mirror: ReleaseMirror, tmp_path: Path
) -> None:
    payload = _weights(small_rrdb())
    fake_model(monkeypatch, PHOTO_MODEL, payload)
    mirror.add(PHOTO_MODEL, payload)
    mirror.bytes_per_s = len(payload) // 2  # on the wire for about 2 s
    download = threading.Thread(target=modelfiles.download, args=(PHOTO_MODEL, tmp_path, mirror.url))
    download.start()
    deadline = time.monotonic() + 5
    while not modelfiles.downloading(PHOTO_MODEL, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    result = Upscaler(tmp_path, device="cpu", model_wait_s=60).upscale(_image(), Category.PHOTO, UpscaleOptions())
    download.join(timeout=10)
    assert (result.model_used, result.fallback, result.image.size) == (PHOTO_MODEL, False, (160, 128))
    assert 0.5 < time.monotonic() - began < 30  # it waited for the file, not for the whole bound


def test_without_a_download_under_way_nothing_waits(tmp_path: Path) -> None:
    began = time.monotonic()
    result = Upscaler(tmp_path, device="cpu", model_wait_s=60).upscale(_image(), Category.PHOTO, UpscaleOptions())
    assert time.monotonic() - began < 5
    assert result.model_used == f"lanczos (fallback: {PHOTO_MODEL} weights not installed)" and result.fallback
    old = time.time() - modelfiles.DOWNLOAD_FRESH_S - 1
    part = modelfiles.part_path(PHOTO_MODEL, tmp_path)
    part.write_bytes(b"x")
    os.utime(part, (old, old))  # an interrupted download: not waited for either
    began = time.monotonic()
    Upscaler(tmp_path, device="cpu", model_wait_s=60).upscale(_image(), Category.PHOTO, UpscaleOptions())
    assert time.monotonic() - began < 5


def test_a_download_that_outlasts_the_bound_falls_back_labelled(tmp_path: Path) -> None:
    modelfiles.part_path(PHOTO_MODEL, tmp_path).write_bytes(b"x")  # fresh: a download under way
    began = time.monotonic()
    result = Upscaler(tmp_path, device="cpu", model_wait_s=0.5).upscale(_image(), Category.PHOTO, UpscaleOptions())
    assert 0.5 <= time.monotonic() - began < 5
    assert result.model_used == f"lanczos (fallback: {PHOTO_MODEL} weights still downloading)"
    assert result.image.size == (160, 128)


def test_cancel_ends_the_wait(tmp_path: Path) -> None:
    modelfiles.part_path(PHOTO_MODEL, tmp_path).write_bytes(b"x")
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    engine = Upscaler(tmp_path, device="cpu", model_wait_s=60)
    began = time.monotonic()
    with pytest.raises(Cancelled):  # revoked, stalled or shutting down: the handler gives up waiting at once
        engine.upscale_picture(from_pil(_image()), Category.PHOTO, UpscaleOptions(), cancel=cancel)
    assert time.monotonic() - began < 5


def test_an_explicit_model_being_downloaded_is_waited_for(install, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    modelfiles.part_path(ANIME, model_dir).write_bytes(b"x")
    threading.Timer(0.5, lambda: install(ANIME, small_compact())).start()  # the download completes
    engine = Upscaler(model_dir, device="cpu", model_wait_s=60)
    result = engine.upscale(_image(), Category.PHOTO, UpscaleOptions(model=ANIME))
    assert (result.model_used, result.fallback) == (ANIME, False)


def test_an_installed_network_stands_in_for_the_routed_one(install) -> None:
    model_dir = install(ANIME, small_compact())
    engine = Upscaler(model_dir, device="cpu")
    result = engine.upscale(_image(), Category.PHOTO, UpscaleOptions())
    assert (result.model_used, result.fallback) == (f"{ANIME} ({PHOTO_MODEL} not installed)", True)
    assert result.image.size == (160, 128)
    assert engine.upscale(_image(41, 33), Category.PHOTO, UpscaleOptions(outscale=1.5)).image.size == (61, 49)


def test_a_x2_stand_in_keeps_the_routed_x4(install) -> None:
    model_dir = install("RealESRGAN_x2plus", small_rrdb(scale=2))
    engine = Upscaler(model_dir, device="cpu")
    result = engine.upscale(_image(), Category.ANIME, UpscaleOptions())
    assert result.model_used == "RealESRGAN_x2plus (RealESRGAN_x4plus_anime_6B not installed)"
    assert result.image.size == (160, 128)  # x2 network, then Lanczos to the x4 the routed model gives
    assert engine.upscale(_image(), Category.ANIME, UpscaleOptions(outscale=2)).image.size == (80, 64)


def test_the_official_animevideov3_stands_in_for_a_photo() -> None:
    engine = Upscaler(shared_file(ANIMEVIDEO).parent, device="cpu")
    result = engine.upscale(_image(24, 16), Category.PHOTO, UpscaleOptions())
    assert result.model_used == f"{ANIME} ({PHOTO_MODEL} not installed)"
    assert result.image.size == (96, 64) and not np.array_equal(
        np.asarray(result.image), np.asarray(_image(24, 16).resize((96, 64), Image.Resampling.LANCZOS))
    )


def test_the_dashboard_sees_a_download_under_way_with_its_progress(tmp_path: Path) -> None:
    engine = Upscaler(tmp_path, device="cpu")
    assert engine.describe()["downloading"] == ""
    size = modelfiles.catalog.get(PHOTO_MODEL).size_bytes
    modelfiles.part_path(PHOTO_MODEL, tmp_path).write_bytes(b"x" * (size // 4))  # fresh: a download under way
    assert modelfiles.downloads_under_way(tmp_path) == {PHOTO_MODEL: (size // 4, size)}
    assert (
        engine.describe()["downloading"]
        == f"{PHOTO_MODEL} {size // 4 * 100 // size}% ({size / 4e6:.0f} of {size / 1e6:.0f} MB)"
    )
    old = time.time() - modelfiles.DOWNLOAD_FRESH_S - 1
    os.utime(modelfiles.part_path(PHOTO_MODEL, tmp_path), (old, old))  # interrupted: not under way
    assert engine.describe()["downloading"] == ""


def test_a_stand_in_being_downloaded_is_waited_for_rather_than_lanczos(tmp_path: Path) -> None:
    official = shared_file(ANIMEVIDEO)
    part = modelfiles.part_path(ANIME, tmp_path)
    part.write_bytes(official.read_bytes()[:1000])  # fresh: its download is under way; the photo model's is not

    def finish() -> None:
        part.write_bytes(official.read_bytes())
        os.replace(part, tmp_path / official.name)

    threading.Timer(0.5, finish).start()
    began = time.monotonic()
    result = Upscaler(tmp_path, device="cpu", model_wait_s=30).upscale(_image(24, 16), Category.PHOTO, UpscaleOptions())
    assert result.model_used == f"{ANIME} ({PHOTO_MODEL} not installed)"
    assert time.monotonic() - began < 20

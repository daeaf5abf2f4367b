"""Downloading weight files that survive the network: a part file continued with Range, a server that ignores
it, a corrupt part, two downloaders of one file; which downloads count as under way; which network stands in."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import modelfiles
from shared.contracts import catalog
from tests.upscaler.conftest import ANIMEVIDEO, shared_file
from tests.upscaler.mirror import ReleaseMirror, fake_model

ANIME = "realesr-animevideov3"


@pytest.fixture
def mirror() -> Iterator[ReleaseMirror]:
    server = ReleaseMirror()
    yield server
    server.close()


@pytest.fixture
def official(mirror: ReleaseMirror) -> bytes:
    """The official realesr-animevideov3.pth, served by the mirror under its release path."""
    payload = shared_file(ANIMEVIDEO).read_bytes()
    mirror.add(ANIME, payload)
    return payload


def test_a_dropped_connection_is_continued_with_range(mirror: ReleaseMirror, official: bytes, tmp_path: Path) -> None:
    mirror.drop_after = 1_000_000
    with pytest.raises(modelfiles.DownloadError, match="kept to resume"):
        modelfiles.download(ANIME, tmp_path, mirror.url)
    kept = modelfiles.part_path(ANIME, tmp_path).stat().st_size  # whole chunks that reached the disk
    assert 500_000 < kept <= 1_000_000 and not modelfiles.is_installed(ANIME, tmp_path)

    seen: list[int] = []
    path = modelfiles.download(ANIME, tmp_path, mirror.url, progress=lambda done, total: seen.append(done))
    assert mirror.ranges_asked == [None, f"bytes={kept}-"]
    assert path.read_bytes() == official and seen[0] > kept and seen[-1] == len(official)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the part became the file


def test_resuming_needs_no_official_file(
    monkeypatch: pytest.MonkeyPatch, mirror: ReleaseMirror, tmp_path: Path
) -> None:
    payload = os.urandom(700_000)
    fake_model(monkeypatch, ANIME, payload)
    mirror.add(ANIME, payload)
    mirror.drop_after = 300_000
    with pytest.raises(modelfiles.DownloadError, match="kept to resume"):
        modelfiles.download(ANIME, tmp_path, mirror.url)
    kept = modelfiles.part_path(ANIME, tmp_path).stat().st_size
    assert modelfiles.download(ANIME, tmp_path, mirror.url).read_bytes() == payload
    assert mirror.ranges_asked == [None, f"bytes={kept}-"] and kept > 0


def test_a_truncated_part_left_by_an_earlier_run_is_continued(
    mirror: ReleaseMirror, official: bytes, tmp_path: Path
) -> None:
    modelfiles.part_path(ANIME, tmp_path).write_bytes(official[:777_777])
    assert modelfiles.download(ANIME, tmp_path, mirror.url).read_bytes() == official
    assert mirror.ranges_asked == ["bytes=777777-"]


def test_a_server_that_ignores_range_sends_the_whole_file_again(
    mirror: ReleaseMirror, official: bytes, tmp_path: Path
) -> None:
    mirror.honour_range = False
    modelfiles.part_path(ANIME, tmp_path).write_bytes(official[:500_000])
    assert modelfiles.download(ANIME, tmp_path, mirror.url).read_bytes() == official
    assert mirror.ranges_asked == ["bytes=500000-"]  # asked, answered 200: started over


def test_a_complete_part_is_verified_without_asking(mirror: ReleaseMirror, official: bytes, tmp_path: Path) -> None:
    modelfiles.part_path(ANIME, tmp_path).write_bytes(official)  # the last run stopped before the rename
    assert modelfiles.download(ANIME, tmp_path, mirror.url).read_bytes() == official
    assert mirror.ranges_asked == []


def test_a_corrupt_part_fails_the_hash_and_is_dropped(mirror: ReleaseMirror, official: bytes, tmp_path: Path) -> None:
    modelfiles.part_path(ANIME, tmp_path).write_bytes(b"\0" * 300_000)
    with pytest.raises(modelfiles.DownloadError, match="sha256 mismatch"):
        modelfiles.download(ANIME, tmp_path, mirror.url)
    assert list(tmp_path.iterdir()) == []  # nothing to resume from: the next run starts over
    assert modelfiles.download(ANIME, tmp_path, mirror.url).read_bytes() == official


def test_a_second_downloader_waits_for_the_first(
    monkeypatch: pytest.MonkeyPatch, mirror: ReleaseMirror, tmp_path: Path
) -> None:
    payload = os.urandom(400_000)
    fake_model(monkeypatch, ANIME, payload)
    mirror.add(ANIME, payload)
    mirror.bytes_per_s = 1_000_000  # 0.4 s: the second starts while the first is on the wire
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(modelfiles.download(ANIME, tmp_path, mirror.url)))]
    threads[0].start()
    deadline = time.monotonic() + 5
    while not modelfiles.part_path(ANIME, tmp_path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the first has claimed the part file
    threads.append(threading.Thread(target=lambda: results.append(modelfiles.download(ANIME, tmp_path, mirror.url))))
    threads[1].start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == payload
    assert mirror.ranges_asked == [None]  # one transfer: the second found the file done
    assert sorted(p.name for p in tmp_path.iterdir()) == [results[0].name]


def test_a_fresh_part_is_a_download_under_way(tmp_path: Path) -> None:
    assert not modelfiles.downloading(ANIME, tmp_path)
    part = modelfiles.part_path(ANIME, tmp_path)
    part.write_bytes(b"x")
    assert modelfiles.downloading(ANIME, tmp_path)
    old = time.time() - modelfiles.DOWNLOAD_FRESH_S - 1
    os.utime(part, (old, old))  # an interrupted download's leftover
    assert not modelfiles.downloading(ANIME, tmp_path)


def test_up_fetches_the_routed_models_the_denoise_helper_and_the_first_run_model() -> None:
    assert modelfiles.default_models() == [
        "RealESRGAN_x4plus",
        "RealESRGAN_x4plus_anime_6B",
        "realesr-general-x4v3",
        "realesr-general-wdn-x4v3",
        "realesr-animevideov3",  # README's first example names it; 2.5 MB, it stands in first
    ]


def test_the_closest_installed_network_stands_in(tmp_path: Path) -> None:
    assert sorted(modelfiles.STAND_IN_ORDER) == sorted(catalog.selectable_names())  # every network, once
    assert modelfiles.stand_in("RealESRGAN_x4plus", tmp_path) is None  # nothing installed: Lanczos
    for name in ("RealESRGAN_x2plus", ANIME, "realesr-general-x4v3"):
        (tmp_path / catalog.get(name).filename).write_bytes(b"x")
    assert modelfiles.stand_in("RealESRGAN_x4plus", tmp_path) == "realesr-general-x4v3"  # photo-like first
    assert modelfiles.stand_in("RealESRGAN_x4plus_anime_6B", tmp_path) == ANIME  # anime-like first
    assert modelfiles.stand_in("realesr-general-x4v3", tmp_path) == ANIME  # never itself
    (tmp_path / catalog.get(ANIME).filename).unlink()
    (tmp_path / catalog.get("realesr-general-x4v3").filename).unlink()
    assert modelfiles.stand_in("RealESRGAN_x4plus_anime_6B", tmp_path) == "RealESRGAN_x2plus"  # x2 last

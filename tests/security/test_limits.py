"""Resource limits on inputs: bytes, time, pixels (before decoding), formats by magic bytes, output pixels."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import ImageFile

from services.classifier.worker import classify_bytes
from services.fetcher.sources import read_input
from services.upscaler.arch import SRVGGNetCompact
from services.upscaler.engine import Upscaler
from services.upscaler.picture import Picture
from shared.egress.netguard import AddressPolicy
from shared.egress.transport import guarded_client
from shared.images import open_image, sniff_format
from shared.messages import Category, UpscaleOptions
from shared.runtime.errors import InputError, RetryableError
from tests.security import hostile
from tests.security.servers import HostileHTTPServer
from tests.servers import StaticHTTPServer

LOCAL = AddressPolicy.build(allowlist=["127.0.0.1"])
MAX_PIXELS = 40_000_000
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def trickle() -> Iterator[HostileHTTPServer]:
    with HostileHTTPServer() as server:
        yield server


async def read(url: str, *, timeout: httpx.Timeout, **kwargs: Any) -> bytes:
    async with guarded_client(LOCAL, role="input", timeout=timeout) as http:
        return await read_input(url, http=http, policy=LOCAL, **kwargs)


async def test_a_declared_length_over_the_limit_is_refused_before_reading(trickle: HostileHTTPServer) -> None:
    began = time.monotonic()
    with pytest.raises(InputError, match=r"larger than the 1000-byte limit \(TM_FETCH_MAX_BYTES\)"):
        await read(trickle.url(f"trickle/x?length={10**9}"), timeout=httpx.Timeout(5), max_bytes=1000)
    assert time.monotonic() - began < 2  # the body (10^9 bytes, one every 50 ms) is not waited for


async def test_a_slow_loris_body_hits_the_total_deadline(trickle: HostileHTTPServer) -> None:
    # A byte every 50 ms never trips a 1 s read timeout; the 0.6 s deadline for the whole download does.
    began = time.monotonic()
    with pytest.raises(InputError, match=r"did not finish downloading within the 0.6 s limit \(TM_FETCH_TIMEOUT_S\)"):
        await read(trickle.url("trickle/x"), timeout=httpx.Timeout(1), max_bytes=10**10, deadline_s=0.6)
    assert time.monotonic() - began < 3


async def test_slow_headers_hit_the_deadline(http_server: StaticHTTPServer) -> None:
    name = f"{uuid.uuid4().hex}.bin"
    http_server.add(name, b"late")
    with pytest.raises(InputError, match="within the 0.3 s limit"):
        await read(http_server.url(f"slow/3000/{name}"), timeout=httpx.Timeout(10), max_bytes=100, deadline_s=0.3)


async def test_a_connect_timeout_is_retried_and_names_its_limit() -> None:
    # A listening socket whose one-slot backlog is full: the kernel drops further SYNs, so connects hang.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        with socket.socket() as probe:
            probe.settimeout(0.2)
            try:
                probe.connect(listener.getsockname())
                pytest.skip(reason="this kernel accepts connections past a full backlog")
            except TimeoutError:
                pass
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
        timeout = httpx.Timeout(5, connect=0.3)
        with pytest.raises(RetryableError, match=r"no connection within 0.3 s \(TM_FETCH_CONNECT_TIMEOUT_S\)"):
            await read(url, timeout=timeout, max_bytes=100, deadline_s=5)


BOMBS = {
    "png 20000x20000": (hostile.png_bomb, "20000x20000 (400 MP)"),
    "jpeg 60000x60000": (hostile.jpeg_bomb, "60000x60000 (3600 MP)"),
    "gif 60000x60000": (hostile.gif_bomb, "60000x60000 (3600 MP)"),
    "bmp 50000x50000": (hostile.bmp_bomb, "50000x50000 (2500 MP)"),
    "webp 16383x16383": (hostile.webp_bomb, "16383x16383 (268.4 MP)"),
}


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode or verify pixel data fails the test."""

    def forbidden(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.format} data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    monkeypatch.setattr(ImageFile.ImageFile, "verify", forbidden)


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.usefixtures("no_decoding")
def test_pixel_bombs_are_refused_from_the_header(bomb: str) -> None:
    make, size = BOMBS[bomb]
    data = make()
    message = f"input image is {size}, over the 40 MP limit (TM_MAX_INPUT_PIXELS); refused before decoding"
    for check in (
        lambda: open_image(data, load=False, max_pixels=MAX_PIXELS),  # the fetcher
        lambda: classify_bytes(data, MAX_PIXELS),  # the classifier
    ):
        with pytest.raises(InputError) as caught:
            check()
        assert str(caught.value) == message


def test_the_png_bomb_is_real_and_costs_no_memory() -> None:
    data = hostile.png_bomb()
    assert len(data) < 100_000  # 400 MP in under 100 KB
    # A fresh interpreter, so that its peak RSS says what this check cost (decoding would be >= 400 MB).
    script = (
        "import json, resource, sys\n"
        "from shared.images import open_image\n"
        "from tests.security.hostile import png_bomb\n"
        "data = png_bomb()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    open_image(data, max_pixels=40_000_000)\n"
        "except Exception as exc:\n"
        "    error = str(exc)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'error': error, 'grew_kb': after - before}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "20000x20000 (400 MP), over the 40 MP limit" in result["error"]
    assert result["grew_kb"] < 20_000


def test_a_pixel_bomb_under_the_limit_is_decoded() -> None:
    assert open_image(hostile.png_bomb(2000, 2000), max_pixels=MAX_PIXELS).size == (2000, 2000)


@pytest.mark.parametrize(
    ("data", "formats", "message"),
    [
        (hostile.HTML, None, "input format html is not accepted (not an image); accepted: bmp, gif, jpeg, png"),
        (hostile.PDF, None, "input format pdf is not accepted (not an image); accepted: bmp, gif, jpeg, png"),
        (hostile.SVG, None, "input format svg is not accepted (not decodable here); accepted: bmp, gif, jpeg"),
        (hostile.TEXT, None, "input is not an image in a known format (36 bytes); accepted: bmp"),
        (b"", None, "input is empty (0 bytes)"),
        (hostile.encoded("TIFF"), "png,jpeg,webp", "input format tiff is not accepted; accepted: jpeg, png, webp"),
        (hostile.encoded("JPEG"), "png", "input format jpeg is not accepted; accepted: png"),
        (hostile.encoded("ICO"), None, "input format ico is not accepted (not decodable here)"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", None, "input format postscript is not accepted (not an image)"),
    ],
)
def test_formats_are_judged_by_magic_bytes(data: bytes, formats: str | None, message: str) -> None:
    accepted = formats.split(",") if formats else ["png", "jpeg", "webp", "gif", "bmp", "tiff"]
    with pytest.raises(InputError) as caught:
        open_image(data, load=False, max_pixels=MAX_PIXELS, formats=accepted)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_formats_open_whatever_the_name_claims(fmt: str) -> None:
    data = hostile.encoded(fmt, mode="L" if fmt == "GIF" else "RGB")
    assert sniff_format(data) == fmt.lower()
    assert open_image(data, max_pixels=MAX_PIXELS, formats=["png", "jpg", "webp", "gif", "bmp", "tif"]).size == (
        32,
        24,
    )


def test_output_pixels_are_refused_before_inference(tmp_path: Path) -> None:
    engine = Upscaler(tmp_path, device="cpu", max_output_pixels=256_000_000)  # no weights: the Lanczos route
    picture = Picture(np.zeros((4500, 6000, 3), np.uint8))  # 27 MP, under the input limit
    calls: list[float] = []
    began = time.monotonic()
    with pytest.raises(InputError) as caught:
        engine.upscale_picture(picture, Category.PHOTO, UpscaleOptions(outscale=4), progress=calls.append)
    assert str(caught.value) == ("output would be 24000x18000 (432 MP), over the 256 MP limit (TM_MAX_OUTPUT_PIXELS)")
    assert calls == [] and time.monotonic() - began < 1  # refused, not computed
    small = engine.upscale_picture(Picture(np.zeros((30, 40, 3), np.uint8)), Category.PHOTO, UpscaleOptions())
    assert small.picture.size == (160, 120)


def test_the_network_output_counts_even_when_outscale_shrinks_it(tmp_path: Path) -> None:
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4)  # random weights: inference never runs anyway
    torch.save({"params": net.state_dict()}, tmp_path / "realesr-animevideov3.pth")
    engine = Upscaler(tmp_path, device="cpu", max_output_pixels=10_000_000)
    picture = Picture(np.zeros((1000, 1000, 3), np.uint8))  # x4 in the network: 16 MP, then 0.5x: 0.25 MP
    options = UpscaleOptions(model="realesr-animevideov3", outscale=0.5)
    with pytest.raises(InputError, match=r"the x4 network output would be 4000x4000 \(16 MP\), over the 10 MP limit"):
        engine.upscale_picture(picture, Category.ANIME, options)

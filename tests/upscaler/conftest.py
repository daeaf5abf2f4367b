"""Upscaler test fixtures: shared real data, small random nets saved as weight files, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from services.upscaler import arch
from shared.contracts import catalog

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
ANIMEVIDEO = SHARED / "models" / "realesr-animevideov3.pth"
IMAGES = SHARED / "images"


def shared_file(path: Path) -> Path:
    """`path` under /work/shared, or a clean skip when the shared data is not there."""
    if not path.is_file():
        pytest.skip(reason=f"shared test data not available: {path}")
    return path


def small_compact(upscale: int = 4, seed: int = 0) -> arch.SRVGGNetCompact:
    torch.manual_seed(seed)
    return arch.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=upscale).eval()


def small_rrdb(scale: int = 4, seed: int = 0) -> arch.RRDBNet:
    torch.manual_seed(seed)
    return arch.RRDBNet(3, 3, num_feat=16, num_block=2, num_grow_ch=8, scale=scale).eval()


@pytest.fixture
def install(tmp_path: Path) -> Callable[[str, nn.Module], Path]:
    """Save a net as the weight file of official model `name` in tmp_path / "models" (official layout)."""
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)

    def save(name: str, net: nn.Module) -> Path:
        path = model_dir / catalog.get(name).filename
        torch.save({"params": net.state_dict()}, path)
        return model_dir

    return save


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(directory served, base URL) of a static HTTP server on 127.0.0.1 running in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""Automatic tile size and batch from the model's cost per pixel and the memory budget."""

from __future__ import annotations

import pytest
import torch

from services.upscaler import arch, memory
from tests.upscaler.conftest import small_compact

CPU = torch.device("cpu")


def test_heavier_models_cost_more_per_pixel() -> None:
    compact = arch.SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4).eval()
    rrdb = arch.RRDBNet(3, 3, num_feat=64, num_block=1, num_grow_ch=32, scale=4).eval()
    compact_cost = memory.bytes_per_pixel(compact, CPU, torch.float32)
    rrdb_cost = memory.bytes_per_pixel(rrdb, CPU, torch.float32)
    # Compact: 64 channels at input resolution; RRDB: 64 channels at 16x the pixels after upsampling.
    assert 64 * 4 <= compact_cost < 4096 and rrdb_cost >= 8 * compact_cost
    assert memory.bytes_per_pixel(compact, CPU, torch.float32) == compact_cost  # cached per net


def test_cpu_tiles_are_bounded_and_balanced() -> None:
    net = small_compact()
    sizing = memory.choose(net, CPU, torch.float32, (1080, 1920), tile=None, tile_pad=10)
    assert sizing.batch == 1
    assert sizing.tile[0] <= memory.MAX_TILE["cpu"] and sizing.tile[1] <= memory.MAX_TILE["cpu"]
    # Balanced: the last tile is not a sliver.
    assert 1080 % sizing.tile[0] == 0 or 1080 % sizing.tile[0] > sizing.tile[0] // 2


def test_a_small_budget_shrinks_the_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    rrdb = arch.RRDBNet(3, 3, num_feat=64, num_block=1, num_grow_ch=32, scale=4).eval()
    monkeypatch.setattr(memory, "CPU_BUDGET_BYTES", 64 << 20)
    sizing = memory.choose(rrdb, CPU, torch.float32, (4000, 4000), tile=None, tile_pad=10)
    window = sizing.tile[0] + 20
    assert memory.MIN_TILE <= sizing.tile[0] < memory.MAX_TILE["cpu"]
    assert window * window * memory.bytes_per_pixel(rrdb, CPU, torch.float32) <= 64 << 20


def test_explicit_tile_and_batch_are_kept() -> None:
    net = small_compact()
    assert memory.choose(net, CPU, torch.float32, (500, 500), tile=128, tile_pad=10, batch=3).tile == (128, 128)
    assert memory.choose(net, CPU, torch.float32, (500, 500), tile=0, tile_pad=10).tile == (0, 0)

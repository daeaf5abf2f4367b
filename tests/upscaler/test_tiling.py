"""Tile geometry and host assembly: RealESRGANer's grid, equal windows, feathered seams, exact partition of unity."""

from __future__ import annotations

import numpy as np
import pytest

from services.upscaler.tiling import Canvas, balanced_tile, plan_axis, ramp


def test_cores_follow_the_reference_grid_and_windows_stay_inside() -> None:
    spans = plan_axis(100, 32, 10, feather=5)
    assert [s.core for s in spans] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    # Every window has the same size (batchable), lies inside the axis and holds core +- pad where possible.
    assert {s.window[1] - s.window[0] for s in spans} == {52}
    for s in spans:
        assert 0 <= s.window[0] and s.window[1] <= 100
        assert s.window[0] <= max(s.core[0] - 10, 0) and s.window[1] >= min(s.core[1] + 10, 100)
    # Feathers reach 5 pixels past inner edges, clipped to half of the 4-pixel last core.
    assert [s.keep for s in spans] == [(0, 37), (27, 69), (59, 98), (94, 100)]


@pytest.mark.parametrize("mod", [1, 2, 4])
def test_every_kept_pixel_sees_pad_minus_feather_of_context(mod: int) -> None:
    # What makes a pad that covers the receptive field beyond the feather exact (options.tile_overlap):
    # every window holds its kept range +- (pad - feather), cut only by the image border.
    rng = np.random.default_rng(0)
    for _ in range(300):
        length = int(rng.integers(1, 120)) * mod
        tile, pad, feather = int(rng.integers(1, 70)), int(rng.integers(0, 40)), int(rng.integers(0, 20))
        for s in plan_axis(length, tile, pad, feather, mod=mod):
            reach = pad - feather
            assert s.window[0] <= max(s.keep[0] - reach, 0) and s.window[1] >= min(s.keep[1] + reach, length)


@pytest.mark.parametrize(("length", "tile"), [(40, 0), (40, 40), (40, 64)])
def test_one_span_when_the_tile_covers_the_axis(length: int, tile: int) -> None:
    assert [(s.core, s.window, s.keep) for s in plan_axis(length, tile, 10, 5)] == [((0, 40),) * 3]


def test_mod_rounds_tiles_and_pads_to_the_fold_grid() -> None:
    spans = plan_axis(48, 13, 5, mod=4)
    assert [s.core for s in spans] == [(0, 16), (16, 32), (32, 48)]
    assert all(s.window[0] % 4 == 0 and s.window[1] % 4 == 0 for s in spans)
    with pytest.raises(ValueError, match="multiple"):
        plan_axis(50, 13, 5, mod=4)


def test_balanced_tiles_waste_less() -> None:
    assert balanced_tile(1080, 512) == 360 and balanced_tile(1920, 512) == 480
    assert balanced_tile(300, 512) == 512 and balanced_tile(1001, 500, mod=4) == 336


def test_ramps_are_complementary() -> None:
    for size in (1, 2, 7, 40):
        np.testing.assert_allclose(ramp(size) + ramp(size)[::-1], 1.0, rtol=0, atol=1e-6)


def _assemble(target: np.ndarray, rows: list, cols: list, scale: int, offset: float = 0.0) -> np.ndarray:
    """Paste tiles cut from `target` (+ offset per tile, to make disagreeing neighbours)."""
    height, width = target.shape[:2]
    canvas = Canvas(rows, cols, scale, height, width, target.shape[2], np.uint8)
    padded = np.pad(target, ((0, rows[-1].core[1] * scale - height), (0, cols[-1].core[1] * scale - width), (0, 0)))
    for r, ys in enumerate(rows):
        for c, xs in enumerate(cols):
            piece = padded[ys.keep[0] * scale : ys.keep[1] * scale, xs.keep[0] * scale : xs.keep[1] * scale]
            canvas.paste(r, c, np.clip(piece + offset * ((r + c) % 2), 0, 255).astype(np.uint8))
    assert canvas.done()
    return canvas.pixels


@pytest.mark.parametrize("feather", [0, 3, 5])
def test_tiles_that_agree_reassemble_exactly(feather: int) -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (2 * 71, 2 * 90, 3), dtype=np.uint8)  # scale 2, a canvas cut below the grid
    rows, cols = plan_axis(72, 16, 8, feather), plan_axis(92, 24, 8, feather)
    np.testing.assert_array_equal(_assemble(target, rows, cols, 2), target)


def test_feathering_turns_a_step_between_tiles_into_a_ramp() -> None:
    flat = np.full((64, 64, 1), 100, np.uint8)
    hard = _assemble(flat, plan_axis(64, 32, 8, 0), plan_axis(64, 32, 8, 0), 1, offset=40)
    soft = _assemble(flat, plan_axis(64, 32, 8, 8), plan_axis(64, 32, 8, 8), 1, offset=40)
    assert np.abs(np.diff(hard[10, :, 0].astype(int))).max() == 40
    assert np.abs(np.diff(soft[10, :, 0].astype(int))).max() <= 3  # 40 over 16 pixels
    assert soft[10, 0, 0] == 100 and soft[10, 40, 0] == 140


def test_tiles_must_come_in_row_major_order() -> None:
    spans = plan_axis(64, 32, 8, 4)
    canvas = Canvas(spans, spans, 1, 64, 64, 1, np.uint8)
    with pytest.raises(ValueError, match="row-major"):
        canvas.paste(0, 1, np.zeros((36, 40, 1), np.uint8))

"""What the classifier spends, pinned without a clock: which steps run, on how many pixels, and that the
fast filters compute exactly what the rules are defined by. The CPU figures are in bench/classify_cost.py."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage as ndi

from services.classifier import classify as rules
from services.classifier import faces, features, filters, worker
from shared.messages import Category
from shared.runtime.errors import InputError
from tests.classifier.images import draw_cartoon, draw_text_page, skimage_image


class _CascadeSpy:
    """Stands in for the face cascade: records the size of every image it is asked to scan."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.scanned: list[tuple[int, ...]] = []

    def detect_multi_scale(self, image: np.ndarray, **kwargs: Any) -> Any:
        self.scanned.append(image.shape)
        return self.real.detect_multi_scale(image, **kwargs)


@pytest.fixture
def cascade(monkeypatch: pytest.MonkeyPatch) -> _CascadeSpy:
    spy = _CascadeSpy(faces._cascade())
    monkeypatch.setattr(faces, "_cascade", lambda: spy)
    return spy


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        draw_text_page(),
        draw_cartoon(),
        draw_cartoon((4000, 3000)),
        Image.new("RGB", (40, 400), "gray"),  # under 48 px a side: too small to show the cascade a face
        Image.new("RGBA", (400, 300), (0, 0, 0, 0)),  # nothing opaque to judge
    ],
    ids=["text", "cartoon", "large cartoon", "narrow", "transparent"],
)
def test_no_face_scan_where_an_earlier_rule_decides(cascade: _CascadeSpy, image: Image.Image) -> None:
    rules.classify(image)
    assert cascade.scanned == []


@pytest.mark.parametrize(
    ("size", "scanned_shape"),
    [((4000, 3000), (128, 171)), ((128, 96), (128, 171)), ((3000, 500), (64, 384)), ((500, 3000), (384, 64))],
)
def test_a_photo_is_scanned_on_one_small_copy(
    cascade: _CascadeSpy, size: tuple[int, int], scanned_shape: tuple[int, int]
) -> None:
    # Whatever the input's size, the cascade sees one copy of 128 px on the short side, at most 384 on the
    # long one (a panorama is scanned smaller), and then at most crops of it around candidate windows:
    # its cost does not grow with the image.
    rules.classify(skimage_image("coffee.png").convert("RGB").resize(size))
    assert cascade.scanned[0] == scanned_shape
    assert all(shape[0] < scanned_shape[0] or shape[1] < scanned_shape[1] for shape in cascade.scanned[1:])
    assert max(scanned_shape) <= rules.FACE_MAX_LONG_SIDE_PX


def test_a_photo_fails_the_cheap_tests_first() -> None:
    # A colourful photo fails the text rule on colour alone (no lighting model, no ink marks) and the
    # flat-art rule on flatness alone (no edge dilation, no colour histogram).
    sample = features.sample(skimage_image("coffee.png"), 1, rules.ANALYSIS_MAX_SIDE_PX)
    paper_ink, flatness = features.PaperInk(sample), features.Flatness(sample)
    assert not rules._is_text(paper_ink)
    assert not rules._is_flat_art(flatness)
    assert set(vars(paper_ink)) == {"_s", "colourful"}
    assert not {"soft", "top16"} & set(vars(flatness))


def test_large_jpeg_is_decoded_small(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    real_classify = worker.classify

    def spy(image: Image.Image, stored_size: tuple[int, int] | None = None) -> Any:
        decoded.append(image.size)
        return real_classify(image, stored_size=stored_size)

    monkeypatch.setattr(worker, "classify", spy)
    result = worker.classify_bytes(_jpeg(skimage_image("coffee.png").resize((4000, 3000))))
    # libjpeg's 1/4 scale: the least power-of-two reduction that still covers the 512 x 384 analysis copy.
    assert decoded == [(1000, 750)]
    assert (result.width, result.height, result.category) == (4000, 3000, Category.PHOTO)


@pytest.mark.parametrize(
    ("name", "size"),
    [("astronaut.png", (2048, 2048)), ("coffee.png", (1920, 1080)), ("chelsea.png", (1800, 1200))],
)
def test_draft_decoding_keeps_the_category(name: str, size: tuple[int, int]) -> None:
    data = _jpeg(skimage_image(name).resize(size, Image.Resampling.BICUBIC))
    assert worker.classify_bytes(data) == rules.classify(Image.open(io.BytesIO(data)))


def test_draft_decoding_keeps_the_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown 1500 wide, 2000 high
    buffer = io.BytesIO()
    skimage_image("astronaut.png").resize((2000, 1500)).convert("RGB").save(buffer, "JPEG", exif=exif)
    result = worker.classify_bytes(buffer.getvalue())
    assert (result.width, result.height, result.aspect_ratio) == (1500, 2000, 0.75)


def test_truncated_large_jpeg_is_an_input_error() -> None:
    data = _jpeg(skimage_image("coffee.png").resize((2000, 1500)))
    with pytest.raises(InputError, match="corrupt or truncated"):
        worker.classify_bytes(data[: len(data) // 2])


def test_draft_size_covers_the_analysis_copy() -> None:
    assert rules.draft_size((900, 600)) == (512, 342)  # libjpeg reduces by powers of two: none fits, so none
    assert rules.draft_size((40, 3000)) == (48, 512)  # never under the face scan's minimum side
    assert rules.draft_size((300, 200)) == (300, 200)


def _random_planes(seed: int, shape: tuple[int, int] = (37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(3, *shape), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(3))
def test_median_is_pillows(seed: int) -> None:
    planes = _random_planes(seed)
    rgb = Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)))
    expected = np.asarray(rgb.filter(ImageFilter.MedianFilter(3))).transpose(2, 0, 1)
    assert np.array_equal(filters.median3(planes), expected)


@pytest.mark.parametrize("seed", range(3))
def test_closing_is_scipys(seed: int) -> None:
    gray = _random_planes(seed)[0].astype(np.float32) * np.float32(0.7)
    assert np.array_equal(filters.closing(gray, 9), ndi.grey_closing(gray, size=(9, 9)))


@pytest.mark.parametrize("seed", range(3))
def test_dilation_is_scipys(seed: int) -> None:
    edges = _random_planes(seed)[0] > 240
    dilated = filters.dilation(edges, 5)
    assert np.array_equal(dilated, ndi.binary_dilation(edges, structure=np.ones((5, 5), dtype=bool)))

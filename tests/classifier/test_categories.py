"""The category of real photographs, documents and illustrations, and of drawn ones."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.classifier.classify import classify
from shared.messages import Category
from tests.classifier.images import draw_cartoon, draw_text_page, shared_image, skimage_image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("astronaut.png", Category.PORTRAIT),  # Eileen Collins, face ~20% of the frame
        ("chelsea.png", Category.PHOTO),  # a cat: the face cascade must not take it for a person
        ("coffee.png", Category.PHOTO),
        ("rocket.jpg", Category.PHOTO),
        ("motorcycle_left.png", Category.PHOTO),
        ("hubble_deep_field.jpg", Category.PHOTO),  # dark, flat sky with sharp dots: closest to flat art
        ("camera.png", Category.PHOTO),  # greyscale
        ("page.png", Category.TEXT),  # a scanned page with a lighting gradient
        ("text.png", Category.TEXT),  # handwriting photographed at an angle: the hardest text here
    ],
)
def test_skimage_samples(name: str, expected: Category) -> None:
    assert classify(skimage_image(name)).category is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("00017_gray.png", Category.PORTRAIT),  # two people, greyscale
        ("children-alpha.png", Category.PORTRAIT),  # five children cut out on a transparent background
        ("OST_009.png", Category.PHOTO),
        ("00003.png", Category.PHOTO),  # bare twigs against a white sky: thin dark strokes, but not text
        ("wolf_gray.jpg", Category.PHOTO),
        ("tree_alpha_16bit.png", Category.PHOTO),
        ("pairs/baboon_hr.png", Category.PHOTO),
    ],
)
def test_shared_images(name: str, expected: Category) -> None:
    assert classify(shared_image(name)).category is expected


@pytest.mark.xfail(
    strict=True,
    reason="painted / soft-shaded or JPEG-noisy illustrations are not flat enough for the flat-art rule",
)
@pytest.mark.parametrize("name", ["pairs/comic_hr.png", "0014.jpg", "0030.jpg"])
def test_illustrations_with_soft_shading_are_anime(name: str) -> None:
    assert classify(shared_image(name)).category is Category.ANIME


@pytest.mark.parametrize("name", ["pairs/comic_hr.png", "0014.jpg", "0030.jpg"])
def test_illustrations_are_never_text(name: str) -> None:
    assert classify(shared_image(name)).category is not Category.TEXT


def test_drawn_cartoon_is_anime() -> None:
    assert classify(draw_cartoon()).category is Category.ANIME


@pytest.mark.parametrize("quality", [95, 75])
def test_cartoon_survives_jpeg(quality: int) -> None:
    assert classify(_jpeg(draw_cartoon(), quality)).category is Category.ANIME


@pytest.mark.parametrize("size", [(160, 120), (1600, 1200), (4000, 3000)])
def test_cartoon_at_any_size_is_anime(size: tuple[int, int]) -> None:
    assert classify(draw_cartoon(size)).category is Category.ANIME


@pytest.mark.parametrize("font_px", [14, 20, 32])
def test_rendered_text_is_text(font_px: int) -> None:
    assert classify(draw_text_page(font_px=font_px)).category is Category.TEXT


def test_rendered_text_survives_jpeg() -> None:
    assert classify(_jpeg(draw_text_page(), 60)).category is Category.TEXT


def test_blank_page_is_not_text() -> None:
    assert classify(Image.new("RGB", (640, 480), "white")).category is Category.PHOTO


def _variants(image: Image.Image) -> list[tuple[str, Image.Image]]:
    """The picture at other sizes, as JPEG, and shifted by a few px (the face scan's grid lands elsewhere)."""
    out = []
    for long_side in (160, 384, 800, 1600):
        scale = long_side / max(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        out += [(f"{long_side}px", resized), (f"{long_side}px jpeg", _jpeg(resized, 80))]
    for dx, dy in ((7, 0), (0, 7), (13, 13), (20, 5)):
        out.append((f"shifted {dx},{dy}", image.crop((dx, dy, image.width, image.height))))
    return out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("astronaut.png", Category.PORTRAIT),
        ("00017_gray.png", Category.PORTRAIT),
        ("children-alpha.png", Category.PORTRAIT),
        ("chelsea.png", Category.PHOTO),
        ("motorcycle_left.png", Category.PHOTO),
        ("OST_009.png", Category.PHOTO),
        ("pairs/baboon_hr.png", Category.PHOTO),
    ],
)
def test_faces_are_found_whatever_the_size_format_and_framing(name: str, expected: Category) -> None:
    image = (
        skimage_image(name) if name in ("astronaut.png", "chelsea.png", "motorcycle_left.png") else shared_image(name)
    )
    wrong = [label for label, variant in _variants(image) if classify(variant).category is not expected]
    assert wrong == []

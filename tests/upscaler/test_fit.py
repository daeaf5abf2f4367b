"""Target sizes (target_width / target_height, fit): the size arithmetic, then the engine on real pictures.

The engine tests run a compact net whose last convolution is zero: its output is then exactly the input
upsampled x4 by nearest neighbour (the net adds that to its residual), so what the fit step did to the
picture can be checked pixel by pixel, and compared with Pillow's own ImageOps on real photos.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from services.upscaler import codec
from services.upscaler.engine import Upscaler
from services.upscaler.fit import Placement, output_size, place, scaled_size
from services.upscaler.picture import Picture
from shared.contracts.options import FITS, validate_options
from shared.images import encode_image
from shared.messages import Category, UpscaleOptions
from shared.runtime.errors import InputError
from tests.upscaler.conftest import IMAGES, shared_file, small_compact

ANIME = "realesr-animevideov3"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)

# -- the arithmetic ------------------------------------------------------------------------------------------


def test_one_side_keeps_the_aspect_ratio_rounded_to_the_nearest_pixel() -> None:
    whole = (0.0, 0.0, 60.0, 20.0)
    assert place((60, 20), 90, None, None) == Placement((90, 30), (90, 30), (0, 0), whole)
    assert place((60, 20), None, 50, "cover") == Placement((150, 50), (150, 50), (0, 0), whole)  # fit plays no part
    assert place((3, 2), 5, None, None).size == (5, 3)  # 3.33 -> 3
    assert place((2, 3), 5, None, None).size == (5, 8)  # 7.5 -> 8: halves go up
    assert place((1000, 1), 10, None, None).size == (10, 1)  # 0.01 -> never below one pixel


def test_both_sides_give_exactly_the_box_in_every_mode() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h, width, height = (int(n) for n in rng.integers(1, 3000, 4))
        for fit in FITS:
            p = place((w, h), width, height, fit)
            assert p.size == (width, height)
            assert 1 <= p.content[0] <= width and 1 <= p.content[1] <= height
            assert p.offset[0] + p.content[0] <= width and p.offset[1] + p.content[1] <= height
            left, top, right, bottom = p.crop
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            if fit == "cover":  # the crop has the box's shape, centred
                assert (right - left) * height == pytest.approx((bottom - top) * width)
                assert left == pytest.approx(w - right) and top == pytest.approx(h - bottom)
            if fit == "contain":  # one side fills the box, the other keeps the aspect ratio within a pixel
                assert width in (p.content[0],) or height in (p.content[1],)
                assert abs(p.content[0] * h - p.content[1] * w) <= max(w, h)


def test_cover_crops_the_overflowing_side_equally() -> None:
    assert place((60, 20), 40, 40, "cover").crop == (20.0, 0.0, 40.0, 20.0)  # wide picture: columns go
    assert place((20, 60), 40, 40, "cover").crop == (0.0, 20.0, 20.0, 40.0)  # tall picture: rows go
    assert place((60, 20), 40, 40, "stretch") == Placement((40, 40), (40, 40), (0, 0), (0.0, 0.0, 60.0, 20.0))


def test_contain_centres_the_picture_and_pads_the_rest() -> None:
    assert place((60, 20), 40, 40, None) == place((60, 20), 40, 40, "contain")  # the default
    assert place((60, 20), 40, 40, "contain") == Placement((40, 40), (40, 13), (0, 13), (0.0, 0.0, 60.0, 20.0))
    assert place((20, 60), 40, 40, "contain").offset == (13, 0)  # 27 columns of padding: 13 left, 14 right
    for fit in FITS:  # same aspect ratio: one plain resize
        assert place((30, 20), 90, 60, fit) == Placement((90, 60), (90, 60), (0, 0), (0.0, 0.0, 30.0, 20.0))


def test_output_size_is_the_target_else_the_scale() -> None:
    assert output_size((41, 33), UpscaleOptions(), 4.0) == (164, 132)
    assert output_size((41, 33), UpscaleOptions(), 1.5) == scaled_size((41, 33), 1.5) == (61, 49)  # int(), as before
    assert output_size((41, 33), UpscaleOptions(target_height=66), 4.0) == (82, 66)
    assert output_size((41, 33), UpscaleOptions(target_width=7, target_height=9, fit="cover"), 4.0) == (7, 9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_width": 0}, r"^kwargs\.target_width: must be 1\.\.65535, got 0"),
        ({"target_height": 70000}, r"^kwargs\.target_height: must be 1\.\.65535"),
        ({"target_width": 10, "fit": "fill"}, r"^kwargs\.fit: must be one of contain, cover, stretch, got 'fill'"),
        ({"fit": "cover"}, r"^kwargs\.fit: applies only to a target size"),
        ({"target_width": 10, "outscale": 2}, r"^kwargs\.outscale: cannot be combined with kwargs\.target_width"),
    ],
)
def test_bad_targets_are_refused_naming_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_options(UpscaleOptions.model_validate(options))


def test_a_target_box_over_the_output_limit_is_refused_when_the_limit_is_known() -> None:
    box = UpscaleOptions(target_width=2000, target_height=1000)
    validate_options(box)  # the engine checks it against the input, whatever the limit
    validate_options(box, max_output_pixels=2_000_000)
    with pytest.raises(ValueError, match=r"^kwargs\.target_width/target_height: output would be 2000x1000"):
        validate_options(box, max_output_pixels=1_999_999)
    validate_options(UpscaleOptions(target_width=2000), max_output_pixels=1000)  # the height is not known yet


# -- the engine ---------------------------------------------------------------------------------------------------


def _nearest_x4() -> nn.Module:
    """A compact x4 net that outputs its input upsampled by nearest neighbour, exactly."""
    net = small_compact()
    last = net.body[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return net


@pytest.fixture
def engine(install: Callable[[str, nn.Module], Path]) -> Upscaler:
    return Upscaler(install(ANIME, _nearest_x4()), device="cpu")


def _bands(mode: str = "RGB") -> Image.Image:
    """60 x 20: a red, a green and a blue band, 20 pixels each, left to right."""
    pixels = np.zeros((20, 60, 3), np.uint8)
    for i, colour in enumerate((RED, GREEN, BLUE)):
        pixels[:, 20 * i : 20 * (i + 1)] = colour
    return Image.fromarray(pixels).convert(mode)


def _target(width: int | None, height: int | None, fit: str | None = None) -> UpscaleOptions:
    return UpscaleOptions(model=ANIME, target_width=width, target_height=height, fit=fit)


def test_cover_keeps_the_centre(engine: Upscaler) -> None:
    result = engine.upscale(_bands(), Category.PHOTO, _target(40, 40, "cover"))
    out = np.asarray(result.image).astype(int)
    assert result.image.size == (result.width, result.height) == (40, 40) and result.image.mode == "RGB"
    # Only the green band is left; Lanczos reads a few source pixels past the crop, so the outer columns blend.
    assert np.abs(out[:, 4:36] - GREEN).max() <= 1
    assert np.abs(out.mean(axis=(0, 1)) - GREEN).max() < 12


def test_contain_letterboxes_with_transparent_padding(engine: Upscaler) -> None:
    result = engine.upscale(_bands(), Category.PHOTO, _target(40, 40, "contain"))
    out = np.asarray(result.image).astype(int)
    assert result.image.size == (40, 40) and result.image.mode == "RGBA"  # alpha added for the padding
    assert (out[:13] == 0).all() and (out[26:] == 0).all()  # rows 0-12 and 26-39: transparent (and black)
    content = out[13:26]
    assert (content[:, :, 3] == 255).all()
    assert np.abs(content[:, 1:10, :3] - RED).max() <= 1 and np.abs(content[:, 17:23, :3] - GREEN).max() <= 1
    assert np.abs(content[:, 30:39, :3] - BLUE).max() <= 1
    # A JPEG holds no alpha: the padding comes out white, the picture as it was.
    jpeg = np.asarray(Image.open(io.BytesIO(encode_image(result.image, "jpeg")))).astype(int)
    bars = np.concatenate([jpeg[:8], jpeg[32:]])  # chroma is 16 x 16 blocks: the green bleeds in a little
    assert jpeg.shape == (40, 40, 3) and bars.mean() > 252 and bars.min() >= 235, (bars.mean(), bars.min())
    assert np.abs(jpeg[16:23, 17:23] - GREEN).max() <= 8


def test_stretch_fills_the_box_keeping_every_band(engine: Upscaler) -> None:
    result = engine.upscale(_bands(), Category.PHOTO, _target(30, 50, "stretch"))
    out = np.asarray(result.image).astype(int)
    assert result.image.size == (30, 50)
    for i, colour in enumerate((RED, GREEN, BLUE)):
        assert np.abs(out[:, 10 * i + 3 : 10 * i + 7] - colour).max() <= 1


def test_one_side_keeps_the_aspect_ratio_and_an_alpha_picture_keeps_its_alpha(engine: Upscaler) -> None:
    assert engine.upscale(_bands(), Category.PHOTO, _target(None, 50)).image.size == (150, 50)
    rgba = _bands("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    result = engine.upscale(rgba, Category.PHOTO, _target(90, None, "stretch"))
    assert result.image.size == (90, 30) and result.image.mode == "RGBA"
    assert np.abs(np.asarray(result.image.getchannel("A")).astype(int) - 128).max() <= 1
    padded = engine.upscale(rgba, Category.PHOTO, _target(60, 60)).image  # contain: padding alpha 0 under 128
    alpha = np.asarray(padded.getchannel("A"))
    assert (alpha[:20] == 0).all() and np.abs(alpha[21:39].astype(int) - 128).max() <= 1


@pytest.mark.parametrize("fit", FITS)
def test_real_photo_matches_pillows_own_fit(engine: Upscaler, fit: str) -> None:
    photo = Image.open(shared_file(IMAGES / "0014.jpg")).convert("RGB").resize((64, 40), Image.Resampling.LANCZOS)
    result = engine.upscale(photo, Category.PHOTO, _target(120, 120, fit))
    assert (result.width, result.height) == (120, 120) and result.model_used == ANIME
    size = (120, 120)
    network = photo.resize((256, 160), Image.Resampling.NEAREST)  # what the net made, by Pillow
    if fit == "cover":
        expected = ImageOps.fit(network, size, Image.Resampling.LANCZOS)
    elif fit == "contain":
        expected = ImageOps.pad(network.convert("RGBA"), size, Image.Resampling.LANCZOS, color=(0, 0, 0, 0))
        assert np.asarray(expected.getchannel("A"))[40:80].min() == 255  # Pillow puts the 120 x 75 content at 22
    else:
        expected = network.resize(size, Image.Resampling.LANCZOS)
    diff = np.asarray(result.image.convert(expected.mode)).astype(int) - np.asarray(expected).astype(int)
    assert np.abs(diff).max() <= 1


def test_sixteen_bit_and_grey_stay_so(engine: Upscaler) -> None:
    picture = codec.decode(shared_file(IMAGES / "tree_alpha_16bit.png").read_bytes())
    picture = picture.with_pixels(picture.pixels[100:140, 150:200])
    out = engine.upscale_picture(picture, Category.PHOTO, _target(90, 90, "contain")).picture
    assert (out.mode, out.bit_depth, out.size) == ("RGBA", 16, (90, 90))
    assert (out.pixels[:9] == 0).all() and (out.pixels[81:] == 0).all()  # 90 x 72 content, 9 rows above
    assert len(np.unique(out.pixels[9:81, :, :3] & 0xFF)) > 200  # 16 bits of detail, not 8 widened
    grey = Picture(np.full((20, 30, 1), 30000, np.uint16))
    cover = engine.upscale_picture(grey, Category.PHOTO, _target(50, 50, "cover")).picture
    assert (cover.mode, cover.bit_depth, cover.size) == ("L", 16, (50, 50))
    assert np.abs(cover.pixels.astype(int) - 30000).max() <= 1
    contain = engine.upscale_picture(grey, Category.PHOTO, _target(50, 50)).picture
    assert (contain.mode, contain.bit_depth, contain.size) == ("LA", 16, (50, 50))
    assert (contain.pixels[:8] == 0).all() and contain.pixels[25, 25, 1] == 65535  # 50 x 33 content from row 8
    assert abs(int(contain.pixels[25, 25, 0]) - 30000) <= 1


def test_lanczos_fallback_and_stand_in_honour_the_target(
    install: Callable[[str, nn.Module], Path], tmp_path: Path
) -> None:
    bare = Upscaler(tmp_path, device="cpu")  # no weights at all
    result = bare.upscale(_bands(), Category.PHOTO, UpscaleOptions(target_width=40, target_height=40, fit="cover"))
    assert result.model_used.startswith("lanczos (fallback") and result.image.size == (40, 40)
    assert np.abs(np.asarray(result.image).astype(int)[:, 8:32] - GREEN).max() <= 1  # x2 from the input here
    routed = Upscaler(install(ANIME, _nearest_x4()), device="cpu")  # RealESRGAN_x4plus missing: a stand-in runs
    standin = routed.upscale(_bands(), Category.PHOTO, UpscaleOptions(target_width=33, target_height=17, fit="stretch"))
    assert standin.model_used == f"{ANIME} (RealESRGAN_x4plus not installed)" and standin.image.size == (33, 17)


def test_the_output_limit_applies_to_the_target(install: Callable[[str, nn.Module], Path]) -> None:
    engine = Upscaler(install(ANIME, _nearest_x4()), device="cpu", max_output_pixels=20_000)
    with pytest.raises(InputError, match=r"^output would be 450x150 .* \(TM_MAX_OUTPUT_PIXELS\)"):
        engine.upscale(_bands(), Category.PHOTO, _target(None, 150))  # 60 x 20 at height 150 is 450 wide
    assert engine.upscale(_bands(), Category.PHOTO, _target(140, 140, "cover")).image.size == (140, 140)
    small = Upscaler(engine.model_dir, device="cpu", max_output_pixels=15_000)
    with pytest.raises(InputError, match=r"^the x4 network output would be 240x80"):  # held in full before the resize
        small.upscale(_bands(), Category.PHOTO, _target(20, 20))

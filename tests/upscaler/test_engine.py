"""The Upscaler facade: routing, fallback, option validation, image modes, and a real model on a real photo."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.upscaler import codec
from services.upscaler.engine import Upscaler
from services.upscaler.picture import Picture
from shared.contracts import catalog
from shared.contracts.options import validate_options
from shared.messages import Category, UpscaleOptions
from shared.runtime.errors import ConfigurationError, InputError
from tests.upscaler.conftest import ANIMEVIDEO, IMAGES, shared_file, small_compact, small_rrdb

ANIME = "realesr-animevideov3"


def _photo(width: int = 40, height: int = 32, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[: height // 2, :, 3] = 0  # top half transparent, bottom half opaque
    rgba[height // 2 :, :, 3] = 255
    return Image.fromarray(rgba).convert(mode)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean(diff**2)))


def test_real_model_on_a_real_photo_is_close_to_bicubic() -> None:
    photo = Image.open(shared_file(IMAGES / "0030.jpg"))
    engine = Upscaler(shared_file(ANIMEVIDEO).parent, device="cpu")
    result = engine.upscale(photo, Category.ANIME, UpscaleOptions(model=ANIME))
    assert (result.model_used, result.fallback, result.device) == (ANIME, False, "cpu")
    assert result.image.size == (880, 880) and result.image.mode == "RGB"
    bicubic = photo.convert("RGB").resize((880, 880), Image.Resampling.BICUBIC)
    assert _psnr(result.image, bicubic) > 20


def test_real_rgba_keeps_alpha() -> None:
    image = Image.open(shared_file(IMAGES / "children-alpha.png")).crop((96, 24, 160, 72))  # an alpha edge
    engine = Upscaler(shared_file(ANIMEVIDEO).parent, device="cpu")
    lanczos = np.asarray(image.getchannel("A").resize((256, 192), Image.Resampling.LANCZOS)).astype(int)
    resized = engine.upscale(image, Category.ANIME, UpscaleOptions(model=ANIME, alpha_mode="resize"))
    assert resized.image.mode == "RGBA" and resized.image.size == (256, 192)
    assert np.abs(np.asarray(resized.image.getchannel("A")).astype(int) - lanczos).max() <= 1
    # Default (premultiplied): alpha from the network, but flat areas stay exactly 0 and 255.
    default = np.asarray(engine.upscale(image, Category.ANIME, UpscaleOptions(model=ANIME)).image.getchannel("A"))
    resized_alpha = np.asarray(resized.image.getchannel("A"))
    flat = (resized_alpha == 0) | (resized_alpha == 255)
    np.testing.assert_array_equal(default[flat], resized_alpha[flat])
    assert np.abs(default.astype(int) - lanczos)[~flat].mean() > 1


def test_routes_by_category(install) -> None:
    model_dir = install("RealESRGAN_x4plus", small_rrdb())
    result = Upscaler(model_dir, device="cpu").upscale(_photo(), Category.PORTRAIT, UpscaleOptions())
    assert (result.model_used, result.fallback, result.image.size) == ("RealESRGAN_x4plus", False, (160, 128))
    assert catalog.ROUTES[Category.TEXT] == "realesr-general-x4v3"
    assert catalog.ROUTES[Category.ANIME] == "RealESRGAN_x4plus_anime_6B"


def test_outscale_2_on_a_x4_model(install) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    result = engine.upscale(_photo(41, 33), Category.PHOTO, UpscaleOptions(model=ANIME, outscale=2))
    assert result.image.size == (82, 66) and (result.width, result.height) == (82, 66)
    # int(), as RealESRGANer sizes it: 41 * 1.5 = 61.5 -> 61.
    assert engine.upscale(_photo(41, 33), Category.PHOTO, UpscaleOptions(model=ANIME, outscale=1.5)).width == 61


def test_missing_routed_weights_fall_back_to_lanczos(tmp_path: Path) -> None:
    seen: list[float] = []
    engine = Upscaler(tmp_path, device="cpu")
    result = engine.upscale(_photo(), Category.PHOTO, UpscaleOptions(), progress=seen.append)
    assert result.fallback and result.image.size == (160, 128) and seen == [1.0]
    assert result.model_used == "lanczos (fallback: RealESRGAN_x4plus weights not installed)"
    scaled = engine.upscale(_photo(), Category.ANIME, UpscaleOptions(outscale=2.5))
    assert scaled.image.size == (100, 80) and "RealESRGAN_x4plus_anime_6B" in scaled.model_used


def test_missing_explicit_weights_raise_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Upscaler(tmp_path, device="cpu").upscale(_photo(), Category.PHOTO, UpscaleOptions(model="RealESRGAN_x2plus"))
    assert "task-manager models download RealESRGAN_x2plus" in str(info.value)
    assert "RealESRGAN_x2plus.pth" in str(info.value) and str(tmp_path) in str(info.value)


def test_denoise_needs_the_wdn_weights_too(install) -> None:
    model_dir = install("realesr-general-x4v3", small_compact())
    engine = Upscaler(model_dir, device="cpu")
    options = UpscaleOptions(model="realesr-general-x4v3", denoise_strength=0.5)
    with pytest.raises(ConfigurationError, match="models download realesr-general-wdn-x4v3"):
        engine.upscale(_photo(), Category.TEXT, options)
    install("realesr-general-wdn-x4v3", small_compact(seed=3))
    result = engine.upscale(_photo(), Category.TEXT, options)
    assert result.model_used == "realesr-general-x4v3 (denoise_strength 0.5)"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "RealESRGAN_x8"),
        ("model", "realesr-general-wdn-x4v3"),
        ("outscale", 0),
        ("outscale", 8.5),
        ("tile", 16),
        ("tile", 4096),
        ("tile_pad", -1),
        ("tile_pad", 65),
        ("pre_pad", 100),
        ("denoise_strength", 1.5),
        ("denoise_strength", 0.5),  # without model realesr-general-x4v3
        ("output_format", "gif"),
        ("alpha_mode", "straight"),
    ],
)
def test_validate_options_rejects_each_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^kwargs\.{field}: "):
        validate_options(UpscaleOptions(**{field: value}))


def test_validate_options_accepts_good_options() -> None:
    validate_options(UpscaleOptions())
    validate_options(
        UpscaleOptions(model="realesr-general-x4v3", outscale=8, tile=0, tile_pad=64, pre_pad=0,
                       denoise_strength=0, output_format="webp")
    )  # fmt: skip
    validate_options(UpscaleOptions(tile=32, outscale=0.5, output_format="jpeg"))
    for mode in ("premultiplied", "network", "resize"):
        validate_options(UpscaleOptions(alpha_mode=mode))


def test_upscale_turns_bad_options_into_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="kwargs.tile"):
        Upscaler(tmp_path, device="cpu").upscale(_photo(), Category.PHOTO, UpscaleOptions(tile=7))


@pytest.mark.parametrize(("mode", "expected"), [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"),
                                                ("P", "RGBA"), ("CMYK", "RGB")])  # fmt: skip
def test_modes_are_kept_and_scaled(install, mode: str, expected: str) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    image = _photo(mode=mode)
    result = engine.upscale(image, Category.PHOTO, UpscaleOptions(model=ANIME, tile=32))
    assert result.image.mode == expected and result.image.size == (160, 128)
    if "A" in expected:
        alpha = np.asarray(result.image.getchannel("A"))
        assert alpha[:48].max() == 0 and alpha[80:].min() == 255  # Lanczos rings 12 px around the edge


def test_palette_without_alpha_is_rgb(install) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    result = engine.upscale(_photo(mode="RGB").convert("P"), Category.PHOTO, UpscaleOptions(model=ANIME))
    assert result.image.mode == "RGB"


def test_exif_orientation_is_applied(install) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    _photo(40, 24).save(buffer, "JPEG", exif=exif)
    result = engine.upscale(Image.open(buffer), Category.PHOTO, UpscaleOptions(model=ANIME))
    assert result.image.size == (96, 160)


def test_sixteen_bit_png_in_sixteen_bit_png_out(install) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu")
    picture = codec.decode(shared_file(IMAGES / "tree_alpha_16bit.png").read_bytes())
    picture = picture.with_pixels(picture.pixels[100:140, 150:200])
    result = engine.upscale_picture(picture, Category.PHOTO, UpscaleOptions(model=ANIME, tile=32))
    assert (result.picture.mode, result.picture.bit_depth, result.picture.size) == ("RGBA", 16, (200, 160))
    assert len(np.unique(result.picture.pixels[..., :3] & 0xFF)) > 200
    encoded = codec.encode(result.picture, "png")
    assert (
        codec.png_header(encoded) == (16, 6)
        and codec.decode(encoded).pixels.tobytes() == result.picture.pixels.tobytes()
    )
    assert codec.png_header(codec.encode(result.picture, "webp")) is None
    grey = Picture(np.full((20, 30, 1), 30000, np.uint16))
    out = engine.upscale_picture(grey, Category.PHOTO, UpscaleOptions(model=ANIME, outscale=2)).picture
    assert (out.mode, out.bit_depth, out.size) == ("L", 16, (60, 40))


def test_automatic_tiles_and_counters(install) -> None:
    engine = Upscaler(install(ANIME, small_compact()), device="cpu", default_tile=None)
    seen: list[float] = []
    result = engine.upscale(_photo(300, 90), Category.PHOTO, UpscaleOptions(model=ANIME), progress=seen.append)
    assert result.image.size == (1200, 360) and seen[-1] == 1.0 and len(seen) == engine.stats.tiles > 1
    info = engine.describe()
    assert info["tile"] == "auto" and info["fp16_fallbacks"] == 0 and info["tiles"] == engine.stats.tiles
    assert info["models_loaded"] == ANIME  # the engine's own cache: what another engine loaded is not counted


def test_device_selection() -> None:
    engine = Upscaler(Path("/nonexistent"), device="cpu")
    assert (engine.device, engine.worker_type()) == ("cpu", "cpu")
    if not torch.cuda.is_available():
        assert Upscaler(Path("/nonexistent")).worker_type() == "cpu"
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            Upscaler(Path("/nonexistent"), device="cuda")

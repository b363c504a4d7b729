"""MNIST framing of pictures (seqmnist.serving.framing): geometry, exactness, edge cases.

The browser's port (web/src/framing.ts) is checked against this module in tests/integration/web.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seqmnist.errors import InputFileError
from seqmnist.serving import framing

CANVAS = (framing.CANVAS_SIZE, framing.CANVAS_SIZE)
CENTER = framing.CANVAS_SIZE // 2
HUGE_SIDE = 6000  # 36 megapixels


def drawn_digit(size: int = 120) -> np.ndarray:
    """A '4'-like drawing, uint8 [size, size], white on black, with anti-aliased edges."""
    image = Image.new("L", (4 * size, 4 * size), 0)
    draw = ImageDraw.Draw(image)
    scale = 4 * size / 28
    width = round(2.5 * scale)
    for line in [(17, 4, 6, 17), (6, 17, 22, 17), (17, 4, 17, 24)]:
        draw.line([coordinate * scale for coordinate in line], fill=255, width=width)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return float((rows * image).sum() / image.sum()), float((columns * image).sum() / image.sum())


def test_luma_is_pillows_and_alpha_composites_onto_the_background() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(framing.to_gray(rgb, background=0), pillow)
    rgba = np.concatenate([rgb, np.zeros((64, 48, 1), np.uint8)], axis=2)
    assert (framing.to_gray(rgba, background=255) == 255).all(), "alpha 0: background"
    rgba[..., 3] = 255
    np.testing.assert_array_equal(framing.to_gray(rgba, background=255), pillow)
    gray_alpha = np.stack([rgb[..., 0], np.full((64, 48), 128, np.uint8)], axis=2)
    expected = (rgb[..., 0].astype(int) * 128 + 127) // 255
    np.testing.assert_array_equal(framing.to_gray(gray_alpha, background=0), expected)


def test_framed_digit_looks_like_mnist() -> None:
    framed = framing.frame_gray(drawn_digit())
    assert framed.shape == CANVAS and framed.dtype == np.float32
    assert framed.min() == 0.0 and framed.max() == 1.0
    rows = np.flatnonzero(framed.any(axis=1))
    assert rows[-1] - rows[0] + 1 == framing.BOX_SIZE, "the taller side fills the box"
    assert np.round(center_of_mass(framed)).tolist() == [CENTER, CENTER]


def test_position_and_whole_number_scale_do_not_change_a_single_bit() -> None:
    """Every step is exact, so the same ink anywhere, at 3x, on a bigger picture, frames alike."""
    digit = drawn_digit(60)
    reference = framing.frame_gray(digit)
    picture = np.zeros((700, 500), np.uint8)
    picture[400:580, 37:217] = np.kron(digit, np.ones((3, 3), np.uint8))
    np.testing.assert_array_equal(framing.frame_gray(picture), reference)


def test_background_is_the_median_gray() -> None:
    """Grey paper frames like black paper: the background level is subtracted first."""
    ink = drawn_digit() >= 128
    on_black = np.where(ink, 255, 0).astype(np.uint8)
    on_grey = np.where(ink, 250, 60).astype(np.uint8)
    np.testing.assert_allclose(framing.frame_gray(on_grey), framing.frame_gray(on_black), atol=1e-6)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(40, 10, (20, 5)), (10, 40, (5, 20)), (1, 100, (1, 20)), (8, 3, (20, 8)), (7, 7, (20, 20))],
)
def test_fitted_size_keeps_the_aspect_ratio(height: int, width: int, expected: tuple) -> None:
    assert framing.fitted_size(height, width) == expected


@pytest.mark.parametrize(("source", "target"), [(97, 20), (20, 20), (5, 20), (3, 7)])
def test_area_weights_share_every_pixel_exactly(source: int, target: int) -> None:
    weights = framing.area_weights(source, target)
    assert weights.shape == (target, source)
    np.testing.assert_array_equal(weights.sum(axis=1), source)
    np.testing.assert_array_equal(weights.sum(axis=0), target)


@pytest.mark.parametrize(
    "picture",
    [np.zeros((50, 50), np.uint8), np.full((50, 50), 200, np.uint8)],
    ids=["black", "uniform grey"],
)
def test_a_picture_without_ink_is_an_input_error(picture: np.ndarray) -> None:
    with pytest.raises(InputFileError, match=r"^scan\.png: no digit found"):
        framing.frame_gray(picture, source="scan.png")


def test_faint_noise_is_not_a_digit() -> None:
    noise = np.random.default_rng(1).integers(100, 100 + framing.MIN_CONTRAST, (80, 80))
    with pytest.raises(InputFileError, match="no digit found"):
        framing.frame_gray(noise.astype(np.uint8))


def test_one_pixel_strokes_come_out_at_full_strength() -> None:
    vertical = np.zeros((300, 300), np.uint8)
    vertical[40:240, 150] = 255
    framed = framing.frame_gray(vertical)
    assert np.count_nonzero(framed) == framing.BOX_SIZE
    np.testing.assert_array_equal(framed[:, CENTER][framed[:, CENTER] > 0], 1.0)
    diagonal = np.zeros((500, 500), np.uint8)
    diagonal[np.arange(20, 480), np.arange(20, 480)] = 255  # 1/23 of each output pixel
    framed = framing.frame_gray(diagonal)
    assert framed.max() == 1.0
    np.testing.assert_array_equal(np.diag(framed)[4:24], 1.0)


def test_ink_heavy_at_one_end_stays_on_the_canvas() -> None:
    """Rounding the center of mass to the center would push this block off the bottom edge."""
    lopsided = np.zeros((100, 100), np.uint8)
    lopsided[0:100, 50] = 70  # faint, but ink (above a quarter of the contrast)
    lopsided[95:100, 45:56] = 255
    framed = framing.frame_gray(lopsided)
    assert np.count_nonzero(framed.any(axis=1)) == framing.BOX_SIZE


def test_huge_picture_needs_less_memory_than_itself() -> None:
    picture = np.zeros((HUGE_SIDE, HUGE_SIDE), np.uint8)
    picture[1000:5000, 2000:4000] = np.kron(drawn_digit(100), np.ones((40, 20), np.uint8))
    tracemalloc.start()
    try:
        framed = framing.frame_gray(picture)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert framed.max() == 1.0
    assert peak < picture.nbytes / 2, f"peak {peak / 2**20:.0f} MiB"


def test_model_metadata_states_the_framing_constants() -> None:
    """The web page reads these from the model; the Python framing uses the module's own."""
    from seqmnist.onnx import metadata as onnx_meta

    spec = onnx_meta.preprocessing_spec(28, 28)
    assert spec["scale"] == "pixel / 255" and spec["pixel_max"] == 255.0
    assert spec["framing"] == {
        **spec["framing"],
        "canvas_size": {"height": 28, "width": 28},
        "box_size": framing.BOX_SIZE,
        "ink_threshold": framing.INK_THRESHOLD,
        "min_contrast": framing.MIN_CONTRAST,
        "resampling": framing.RESAMPLING,
        "centering": framing.CENTERING,
        "luma_weights": list(framing.LUMA_WEIGHTS),
        "luma_shift": framing.LUMA_SHIFT,
    }
    assert "20x20" in spec["description"] and "28x28" in spec["description"]

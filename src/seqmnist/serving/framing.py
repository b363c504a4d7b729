"""Frame a picture of a digit the way MNIST framed its digits, in plain numpy.

MNIST's digits were cropped to their ink, scaled to fit a 20x20 box keeping the aspect ratio,
then placed in a 28x28 field with their center of mass at its center. A picture framed the same
way looks like the training data wherever, and at whatever size, the digit was drawn.

The web demo runs a TypeScript port of this module (web/src/framing.ts) that must give the same
model input bit for bit, so no library resampler is used (Pillow's and the canvas's cannot be
matched): every step is integer arithmetic, or float64 sums of integers below 2**53 (exact in
any summation order), and the only rounding is one final division per pixel.

Steps, from uint8 pixels [H, W] (gray), [H, W, 2] (gray, alpha), [H, W, 3] (RGB) or [H, W, 4]:
  1. gray: ITU-R 601-2 luma rounded as Pillow's convert("L"), alpha composited onto the
     background (`to_gray`); the caller inverts dark-on-light pictures (`invert`);
  2. background level = the median gray; ink = pixels at least INK_THRESHOLD of the picture's
     contrast above it; fewer than MIN_CONTRAST levels of contrast = no digit (InputFileError);
  3. crop to the ink's bounding box, subtract the background (clipped at 0);
  4. area-average (box filter) so that the longer side becomes BOX_SIZE pixels;
  5. divide by the brightest resampled pixel, so faint or 1-pixel strokes come out at full
     strength like MNIST's;
  6. paste into the canvas so that the center of mass, rounded half up, lands on pixel
     (height // 2, width // 2) as in MNIST (whose centers of mass lie in [13.5, 14.5)).
"""

from __future__ import annotations

import math

import numpy as np

from seqmnist.constants import PIXEL_LEVELS, PIXEL_MAX
from seqmnist.errors import InputFileError

CANVAS_SIZE = 28  # MNIST's field, pixels per side
BOX_SIZE = 20  # the ink's bounding box is scaled to fit BOX_SIZE x BOX_SIZE
INK_THRESHOLD = 0.25  # ink: at least this fraction of the contrast above the background
MIN_CONTRAST = 32  # gray levels: no pixel this far above the background = a blank picture
RESAMPLING = "area"  # each output pixel is the mean of the source area it covers (box filter)
CENTERING = "center_of_mass"
LUMA_WEIGHTS = (19595, 38470, 7471)  # ITU-R 601-2 R, G, B weights x 2**16, as Pillow uses them
LUMA_SHIFT = 16
LUMA_HALF = 1 << (LUMA_SHIFT - 1)
# Pixels handled at a time: numpy's temporaries (int64 counts, float64 sums: 8 bytes a pixel)
# stay near 8 MiB, so a huge picture needs little memory beyond its own uint8 gray copy.
CHUNK_VALUES = 1 << 20
GRAY_CHANNELS = (1, 2)  # gray, gray + alpha
ALPHA_CHANNELS = (2, 4)  # gray + alpha, RGBA


def to_gray(pixels: np.ndarray, background: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> uint8 [H, W]: luma, then alpha composited onto `background`.

    luma = (19595 R + 38470 G + 7471 B + 2**15) >> 16, exactly Pillow's convert("L");
    composite = (luma * alpha + background * (255 - alpha) + 127) // 255.
    """
    if pixels.dtype != np.uint8 or not (
        pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 2, 3, 4))
    ):
        raise ValueError(
            f"expected uint8 pixels [H, W] or [H, W, 1-4], got {pixels.dtype} {pixels.shape}"
        )
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels in GRAY_CHANNELS:
        gray = pixels[..., 0].astype(np.uint32)
    else:
        red, green, blue = (pixels[..., index].astype(np.uint32) for index in range(3))
        weight_r, weight_g, weight_b = LUMA_WEIGHTS
        gray = (weight_r * red + weight_g * green + weight_b * blue + LUMA_HALF) >> LUMA_SHIFT
    if channels in ALPHA_CHANNELS:
        alpha = pixels[..., -1].astype(np.uint32)
        gray = (gray * alpha + background * (PIXEL_MAX - alpha) + PIXEL_MAX // 2) // PIXEL_MAX
    return gray.astype(np.uint8)


def invert(gray: np.ndarray) -> np.ndarray:
    """Dark on light -> light on dark, uint8 [H, W]."""
    return PIXEL_MAX - gray


def _row_chunks(image: np.ndarray) -> list[slice]:
    """Slices of whole rows, about CHUNK_VALUES pixels each."""
    height, width = image.shape[:2]
    step = max(1, CHUNK_VALUES // max(1, width))
    return [slice(top, top + step) for top in range(0, height, step)]


def background_level(gray: np.ndarray) -> int:
    """The lower median gray level: the paper, for any digit covering less than half of it."""
    counts = sum(
        np.bincount(gray[rows].ravel(), minlength=PIXEL_LEVELS) for rows in _row_chunks(gray)
    )
    return int(np.searchsorted(np.cumsum(counts), (gray.size + 1) // 2))


def ink_box(gray: np.ndarray, source: str = "image") -> tuple[slice, slice, int]:
    """(rows, columns, background) of the ink's bounding box in uint8 [H, W]."""
    background = background_level(gray)
    contrast = int(gray.max()) - background
    if contrast < MIN_CONTRAST:
        raise InputFileError(
            f"{source}: no digit found: no pixel is {MIN_CONTRAST} or more gray levels above "
            f"the background ({background}); expected a light digit on a dark background "
            "(for a dark digit on a light background, invert it: --dark-on-light)"
        )
    cutoff = background + math.ceil(INK_THRESHOLD * contrast)
    ink_rows = np.zeros(gray.shape[0], bool)
    ink_columns = np.zeros(gray.shape[1], bool)
    for rows in _row_chunks(gray):
        ink = gray[rows] >= cutoff
        ink_rows[rows] = ink.any(axis=1)
        ink_columns |= ink.any(axis=0)
    rows, columns = np.flatnonzero(ink_rows), np.flatnonzero(ink_columns)
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1), background


def fitted_size(height: int, width: int, box: int = BOX_SIZE) -> tuple[int, int]:
    """(h, w) of a height x width block scaled so its longer side is `box`, rounded half up."""
    longer = max(height, width)
    return tuple(max(1, (2 * side * box + longer) // (2 * longer)) for side in (height, width))


def area_weights(source: int, target: int) -> np.ndarray:
    """float64 [target, source]: how much of each source pixel each target pixel covers.

    On an axis of source * target units, source pixel i spans [i * target, (i + 1) * target)
    and target pixel j spans [j * source, (j + 1) * source): the overlaps are integers, and each
    target pixel's weights add up to `source`.
    """
    source_start = np.arange(source) * target
    target_start = np.arange(target) * source
    overlap = np.minimum(target_start[:, None] + source, source_start[None, :] + target)
    overlap -= np.maximum(target_start[:, None], source_start[None, :])
    return np.maximum(overlap, 0).astype(np.float64)


def area_resample(crop: np.ndarray, background: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] minus `background` (clipped at 0), box-filtered to float64 `size` [h, w].

    The result is each output pixel's source sum times H * W / (h * w): an exact integer
    (at most 255 * H * W), left unnormalized because only ratios of it are used.
    """
    height, width = crop.shape
    row_weights = area_weights(height, size[0])  # [h, H]
    column_weights = area_weights(width, size[1]).T  # [W, w]
    columns = np.empty((height, size[1]))  # [H, w]
    for rows in _row_chunks(crop):
        values = crop[rows].astype(np.float64) - background
        np.maximum(values, 0, out=values)
        columns[rows] = values @ column_weights
    return row_weights @ columns


def _centered_offset(mass: np.ndarray, block: int, canvas: int) -> int:
    """Where a block with this mass profile starts so its rounded center of mass is central.

    round_half_up(center) = floor((2 * sum(i * m_i) + sum(m)) / (2 * sum(m))), in exact integers;
    the block is kept whole on the canvas.
    """
    total = int(mass.sum())
    moment = int(np.arange(block) @ mass)
    center = (2 * moment + total) // (2 * total)
    return min(max(canvas // 2 - center, 0), canvas - block)


def frame_gray(
    gray: np.ndarray, source: str = "image", canvas: tuple[int, int] = (CANVAS_SIZE, CANVAS_SIZE)
) -> np.ndarray:
    """uint8 [H, W], light digit on dark -> float32 `canvas` [28, 28] in [0, 1], framed as MNIST.

    Raises InputFileError naming `source` when the picture holds no digit.
    """
    if min(canvas) < BOX_SIZE:
        raise ValueError(f"a {canvas} canvas cannot hold the {BOX_SIZE}-pixel box")
    rows, columns, background = ink_box(gray, source)
    crop = gray[rows, columns]
    size = fitted_size(*crop.shape)
    sums = area_resample(crop, background, size)  # [h, w]
    top = _centered_offset(sums.sum(axis=1), size[0], canvas[0])
    left = _centered_offset(sums.sum(axis=0), size[1], canvas[1])
    framed = np.zeros(canvas, np.float32)
    framed[top : top + size[0], left : left + size[1]] = sums / sums.max()
    return framed

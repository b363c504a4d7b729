"""Rotation, scaling and elastic augmentation: right geometry, label-preserving, reproducible,
and off without a trace when its limits are 0."""

from __future__ import annotations

import numpy as np
import pytest

from seqmnist.modeling.augment import elastic_distort, rotate_and_scale


class Fixed:
    """An rng whose uniform draws are always the upper limit: one chosen angle and scale."""

    def uniform(self, low, high, size):
        return np.full(size, high, dtype=np.float64)


def bar_image() -> np.ndarray:
    """A vertical bar through the centre of a 28 x 28 frame, [1, 28, 28]."""
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 4:24, 13:15] = 1.0
    return image


@pytest.mark.parametrize(
    "off",
    [
        lambda images, rng: rotate_and_scale(images, 0, 0, rng),
        lambda images, rng: elastic_distort(images, 0, 4, rng),
    ],
    ids=["rotate_and_scale", "elastic"],
)
def test_off_returns_the_input_and_draws_nothing(off) -> None:
    images = bar_image()
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert off(images, rng) is images
    assert rng.bit_generator.state == state


def test_a_quarter_turn_is_numpys_rotation() -> None:
    images = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    turned = rotate_and_scale(images, 90, 0, Fixed())
    # A positive angle turns the content one way; either way it must be an exact quarter turn.
    clockwise = np.rot90(images, -1, axes=(1, 2))
    counter = np.rot90(images, 1, axes=(1, 2))
    errors = (np.abs(turned - clockwise).max(), np.abs(turned - counter).max())
    assert min(errors) < 1e-5 < max(errors), errors


def test_scaling_up_by_half_spreads_the_bar_about_the_centre() -> None:
    grown = rotate_and_scale(bar_image(), 0, 0.5, Fixed())[0]  # scale 1.5
    rows = np.flatnonzero(grown.max(axis=1) > 0.5)
    columns = np.flatnonzero(grown.max(axis=0) > 0.5)
    assert rows.min() < 4 and rows.max() > 23  # 20 rows -> about 30, clipped by the frame
    assert columns.min() >= 12 and columns.max() <= 15  # still centred, about 3 wide
    assert abs(grown.sum() / bar_image().sum() - 1.5 * 1.5) < 0.5  # area of the part in frame


def ink_of_reproducible_draws(distort, copies: int) -> np.ndarray:
    """`distort(images, rng)` on copies of the bar, twice with one seed and once with another:
    float32 of the input's shape, the same bytes for the same seed, other bytes for another,
    each image drawn anew. Returns each image's ink relative to the bar's."""
    images = np.repeat(bar_image(), copies, axis=0)
    first, again, other = (distort(images, np.random.default_rng(seed)) for seed in (7, 7, 8))
    assert first.dtype == np.float32 and first.shape == images.shape
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len({image.tobytes() for image in first}) == len(first)  # each image drawn anew
    return first.sum(axis=(1, 2)) / images[0].sum()


def test_small_distortions_keep_the_ink_and_are_reproducible() -> None:
    ink = ink_of_reproducible_draws(lambda images, rng: rotate_and_scale(images, 10, 0.1, rng), 64)
    assert ink.min() > 0.75 and ink.max() < 1.25  # scale^2 within [0.81, 1.21], plus rounding


@pytest.mark.parametrize("degrees", [-15.0, 15.0])
def test_rotation_is_about_the_centre(degrees: float) -> None:
    class Angle:
        def uniform(self, low, high, size):
            return np.full(size, degrees if (low, high) != (1.0, 1.0) else 1.0)

    turned = rotate_and_scale(bar_image(), abs(degrees), 0, Angle())[0]
    rows, columns = np.nonzero(turned)
    weights = turned[rows, columns]
    centre = (np.average(rows, weights=weights), np.average(columns, weights=weights))
    assert np.allclose(centre, (13.5, 13.5), atol=0.1), centre


def test_scaling_keeps_the_centre_of_a_frame_that_is_not_square() -> None:
    """Rows and columns have their own centres: swapping them would move the ink."""
    image = np.zeros((1, 20, 28), np.float32)
    image[0, 7:12, 11:16] = 1.0  # a 5 x 5 block about (9, 13), the centre (9.5, 13.5) nearby
    grown = rotate_and_scale(image, 0, 0.3, Fixed())[0]
    rows, columns = np.nonzero(grown)
    before = np.nonzero(image[0])
    weights = grown[rows, columns]
    centre = np.average(rows, weights=weights), np.average(columns, weights=weights)
    moved_from = np.array([before[0].mean(), before[1].mean()])
    expected = (moved_from - (9.5, 13.5)) * 1.3 + (9.5, 13.5)  # scaled about the frame's centre
    assert np.allclose(centre, expected, atol=0.05), (centre, expected)


@pytest.mark.parametrize("grid", [2, 5])
def test_a_uniform_elastic_field_of_one_pixel_is_a_shift(grid: int) -> None:
    """Every control point moved by +1 row and +1 column: each pixel reads its lower-right
    neighbour, and zero where that falls outside the frame."""
    images = np.random.default_rng(0).random((3, 28, 20), dtype=np.float32)
    moved = elastic_distort(images, 1.0, grid, Fixed())
    assert np.allclose(moved[:, :-1, :-1], images[:, 1:, 1:], atol=1e-6)
    assert not moved[:, -1, :].any() and not moved[:, :, -1].any()


def test_the_largest_displacement_either_way_stays_inside_the_padding() -> None:
    """At the config's limit (4 px), up-left as well as down-right: a pure shift, zero filled."""

    class Low:
        def uniform(self, low, high, size):
            return np.full(size, low, dtype=np.float64)

    images = np.random.default_rng(2).random((2, 28, 28), dtype=np.float32)
    up_left = elastic_distort(images, 4.0, 4, Low())
    down_right = elastic_distort(images, 4.0, 4, Fixed())
    assert np.allclose(up_left[:, 4:, 4:], images[:, :-4, :-4], atol=1e-6)
    assert not up_left[:, :4, :].any() and not up_left[:, :, :4].any()
    assert np.allclose(down_right[:, :-4, :-4], images[:, 4:, 4:], atol=1e-6)
    assert not down_right[:, -4:, :].any() and not down_right[:, :, -4:].any()


def test_half_a_pixel_reads_the_mean_of_four_neighbours() -> None:
    images = np.random.default_rng(1).random((2, 28, 28), dtype=np.float32)
    moved = elastic_distort(images, 0.5, 4, Fixed())
    corners = images[:, :-1, :-1] + images[:, :-1, 1:] + images[:, 1:, :-1] + images[:, 1:, 1:]
    assert np.allclose(moved[:, :-1, :-1], corners / 4, atol=1e-6)


def test_elastic_fields_vary_keep_the_ink_and_are_reproducible() -> None:
    ink = ink_of_reproducible_draws(lambda images, rng: elastic_distort(images, 2.0, 4, rng), 40)
    # Local stretches and squeezes (up to about 4 px over the 7 px between control points)
    # change one image's ink, not the average: the bar is kept, not erased or smeared.
    assert ink.min() > 0.6 and ink.max() < 1.4 and abs(ink.mean() - 1) < 0.05, ink

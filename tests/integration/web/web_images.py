"""Pictures of real MNIST test digits as people make them: drawn strokes, photos of paper, digits
small or big anywhere in a larger picture. Everything is generated from the 28x28 test images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

INK_LEVEL = 128  # MNIST pixels at or above this are the stroke's core, skeletonized into strokes
MNIST_SIZE = 28
# Zhang-Suen neighbours p2..p9 as (row, column) offsets: N, NE, E, SE, S, SW, W, NW.
NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
PAPER_RGB = (226, 219, 201)  # photo-like: cream paper, blue-black ink, uneven light, sensor noise
INK_RGB = (38, 44, 72)
LIGHT_FALLOFF = 0.12
NOISE_SIGMA = 2.5

Point = tuple[float, float]  # (x, y)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_jpeg(png: bytes, quality: int = 90) -> bytes:
    """The same picture as a JPEG, as cameras and phones save them."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thin(ink: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image [H, W] to 1-pixel-wide lines."""
    image = np.pad(ink.astype(np.uint8), 1)
    height, width = ink.shape
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            p = [image[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] for dr, dc in NEIGHBOURS]
            count = sum(p)
            ring = p + p[:1]
            transitions = sum((ring[i] == 0) & (ring[i + 1] == 1) for i in range(8))
            if step == 0:
                clear = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                clear = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            core = image[1:-1, 1:-1]
            remove = (core == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & clear
            if remove.any():
                core[remove] = 0
                changed = True
    return image[1:-1, 1:-1].astype(bool)


def _skeleton_edges(skeleton: np.ndarray) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """8-connected pixel graph; a diagonal step is left out where a corner pixel joins the two."""
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeleton), strict=True)}
    graph: dict[tuple[int, int], set[tuple[int, int]]] = {pixel: set() for pixel in pixels}
    for r, c in pixels:
        for dr, dc in NEIGHBOURS:
            other = (r + dr, c + dc)
            diagonal = dr != 0 and dc != 0
            if other not in pixels or (diagonal and ({(r + dr, c), (r, c + dc)} & pixels)):
                continue
            graph[(r, c)].add(other)
    return graph


def strokes(image: np.ndarray) -> list[list[Point]]:
    """A 28x28 digit as pen strokes: its skeleton's pixel centers, chained into polylines.

    Odd-degree pixels (stroke ends, junctions) start strokes first, so most strokes run end to
    end; every edge of the skeleton is drawn once.
    """
    graph = _skeleton_edges(thin(image >= INK_LEVEL))
    unused = {node: set(neighbours) for node, neighbours in graph.items()}
    order = sorted(graph, key=lambda node: (len(graph[node]) % 2 == 0, node))
    paths: list[list[tuple[int, int]]] = [[node] for node in order if not graph[node]]
    for start in order:
        while unused[start]:
            path, node = [start], start
            while unused[node]:
                following = min(unused[node])
                unused[node].discard(following)
                unused[following].discard(node)
                path.append(following)
                node = following
            paths.append(path)
    return [[(c + 0.5, r + 0.5) for r, c in path] for path in paths]


@dataclass(frozen=True)
class Placement:
    """Where a 28x28 digit lands on a pad or picture: top-left corner and pixels per pixel."""

    left: float
    top: float
    scale: float

    def place(self, stroke: list[Point]) -> list[Point]:
        return [(self.left + x * self.scale, self.top + y * self.scale) for x, y in stroke]


def render_strokes(
    paths: list[list[Point]], size: int, placement: Placement, width: int
) -> Image.Image:
    """The strokes drawn white on black with a round pen, as the page's pad draws them."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    radius = width / 2
    for path in paths:
        points = placement.place(path)
        if len(points) > 1:
            draw.line(points, fill=255, width=width, joint="curve")
        for x, y in points:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return image


def _scaled(image: np.ndarray, side: int) -> np.ndarray:
    resized = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def relocated(image: np.ndarray, rng: np.random.Generator, scales: tuple[float, float]) -> bytes:
    """PNG: the digit scaled by a factor in `scales`, anywhere in a larger black picture."""
    side = max(1, round(MNIST_SIZE * rng.uniform(*scales)))
    height, width = (side + int(rng.integers(0, 3 * side + 40)) for _ in range(2))
    picture = np.zeros((height, width), np.uint8)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    picture[top : top + side, left : left + side] = _scaled(image, side)
    return png_bytes(Image.fromarray(picture))


def photo_like(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """PNG (RGB): dark ink on cream paper, unevenly lit and noisy, digit off-center."""
    side = round(MNIST_SIZE * rng.uniform(2, 6))
    height, width = side + 60, side + 90
    coverage = np.zeros((height, width))
    top, left = int(rng.integers(0, 60)), int(rng.integers(0, 90))
    coverage[top : top + side, left : left + side] = _scaled(image, side) / 255.0
    rows, columns = np.mgrid[0:height, 0:width]
    light = 1 - LIGHT_FALLOFF * (rows / height + columns / width) / 2  # [H, W]
    paper = np.array(PAPER_RGB) * light[..., None]
    rgb = paper * (1 - coverage[..., None]) + np.array(INK_RGB) * coverage[..., None]
    rgb += rng.normal(0, NOISE_SIGMA, rgb.shape)
    return png_bytes(Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8)))


def transparent(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """PNG (RGBA): the white digit on a fully transparent background, at 2-4x."""
    side = round(MNIST_SIZE * rng.uniform(2, 4))
    gray = _scaled(image, side)
    rgba = np.zeros((side + 40, side + 40, 4), np.uint8)
    rgba[20 : 20 + side, 20 : 20 + side, :3] = gray[..., None]
    rgba[20 : 20 + side, 20 : 20 + side, 3] = np.where(gray > 0, 255, 0)
    return png_bytes(Image.fromarray(rgba, "RGBA"))

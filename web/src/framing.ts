/**
 * MNIST framing: the TypeScript port of src/seqmnist/serving/framing.py, step for step.
 *
 * The page must feed the model the very input `seqmnist predict` computes, so nothing here uses
 * the canvas's resampling: every step is integer arithmetic, or float64 sums of integers below
 * 2**53 (exact in any order, as numpy's matrix products are), and the only rounding is one
 * final division per pixel, which IEEE 754 rounds the same way in both languages.
 *
 *   1. gray: ITU-R 601-2 luma rounded as Pillow's convert("L"), alpha composited onto the
 *      background; dark-on-light pictures are inverted;
 *   2. background = the median gray; ink = at least `inkThreshold` of the contrast above it;
 *      less than `minContrast` levels of contrast = no digit (NoDigitError);
 *   3. crop to the ink's bounding box, minus the background (clipped at 0);
 *   4. area-average (box filter) so that the longer side becomes `boxSize` pixels;
 *   5. divide by the brightest resampled pixel;
 *   6. paste into the canvas with the center of mass, rounded half up, on the central pixel.
 */

const PIXEL_MAX = 255;
const PIXEL_LEVELS = PIXEL_MAX + 1;
const RGBA = 4;

/** The constants of the framing, as the model's `preprocessing.framing` metadata states them. */
export interface FramingConstants {
  canvasHeight: number;
  canvasWidth: number;
  boxSize: number;
  inkThreshold: number;
  minContrast: number;
  lumaWeights: readonly [number, number, number];
  lumaShift: number;
}

/** The framing this page implements: resampling and centering methods other models may name. */
export const RESAMPLING = 'area';
export const CENTERING = 'center_of_mass';

/** seqmnist's constants, for models whose metadata predates the framing. */
export const MNIST_FRAMING: FramingConstants = {
  canvasHeight: 28,
  canvasWidth: 28,
  boxSize: 20,
  inkThreshold: 0.25,
  minContrast: 32,
  lumaWeights: [19595, 38470, 7471],
  lumaShift: 16,
};

/** RGBA pixels, row-major: an ImageData or anything shaped like one. */
export interface Pixels {
  readonly data: Uint8Array | Uint8ClampedArray;
  readonly width: number;
  readonly height: number;
}

/** The picture has no pixel far enough above its background to be ink. */
export class NoDigitError extends Error {
  override name = 'NoDigitError';
}

/** A uint8 gray image [height, width], row-major. */
interface Gray {
  readonly values: Uint8Array;
  readonly width: number;
  readonly height: number;
}

/** RGBA -> gray: luma, then alpha composited onto `background` (0 or 255). */
export function toGray(pixels: Pixels, background: number, constants: FramingConstants): Gray {
  const { data, width, height } = pixels;
  const count = width * height;
  if (data.length !== count * RGBA) {
    throw new Error(`expected ${width}x${height} RGBA pixels (${count * RGBA} bytes), got ${data.length}`);
  }
  const [red, green, blue] = constants.lumaWeights;
  const half = 2 ** (constants.lumaShift - 1);
  const values = new Uint8Array(count);
  for (let i = 0, o = 0; i < count; i++, o += RGBA) {
    const luma = (red * data[o] + green * data[o + 1] + blue * data[o + 2] + half) >>> constants.lumaShift;
    const alpha = data[o + 3];
    values[i] = Math.floor((luma * alpha + background * (PIXEL_MAX - alpha) + (PIXEL_MAX >> 1)) / PIXEL_MAX);
  }
  return { values, width, height };
}

function invert(gray: Gray): Gray {
  return { ...gray, values: gray.values.map((value) => PIXEL_MAX - value) };
}

/** The lower median gray level: the paper, for any digit covering less than half of it. */
function backgroundLevel(values: Uint8Array): number {
  const counts = new Array<number>(PIXEL_LEVELS).fill(0);
  for (const value of values) counts[value]++;
  const half = Math.floor((values.length + 1) / 2);
  let seen = 0;
  for (let level = 0; level < PIXEL_LEVELS; level++) {
    seen += counts[level];
    if (seen >= half) return level;
  }
  return PIXEL_MAX;
}

interface Box {
  top: number;
  left: number;
  height: number;
  width: number;
  background: number;
}

function inkBox(gray: Gray, source: string, constants: FramingConstants): Box {
  const { values, width, height } = gray;
  const background = backgroundLevel(values);
  let brightest = 0;
  for (const value of values) brightest = Math.max(brightest, value);
  const contrast = brightest - background;
  if (contrast < constants.minContrast) {
    throw new NoDigitError(
      `${source}: no digit found: no pixel is ${constants.minContrast} or more gray levels above ` +
        `the background (${background}); expected a light digit on a dark background ` +
        '(for a dark digit on a light background, tick "dark digit on light background")',
    );
  }
  const cutoff = background + Math.ceil(constants.inkThreshold * contrast);
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let x = 0; x < width; x++) {
      if (values[row + x] >= cutoff) {
        top = Math.min(top, y);
        bottom = y;
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
    }
  }
  return { top, left, height: bottom - top + 1, width: right - left + 1, background };
}

/** [h, w] of a height x width block scaled so its longer side is `box`, rounded half up. */
function fittedSize(height: number, width: number, box: number): [number, number] {
  const longer = Math.max(height, width);
  const fit = (side: number) => Math.max(1, Math.floor((2 * side * box + longer) / (2 * longer)));
  return [fit(height), fit(width)];
}

/**
 * The non-zero overlaps between `source` pixels and `target` pixels on an axis of
 * source * target units (source pixel i spans [i * target, (i + 1) * target), target pixel j
 * spans [j * source, (j + 1) * source)): integers, `source` per target pixel in all.
 */
function areaOverlaps(source: number, target: number): Array<[number, number, number]> {
  const overlaps: Array<[number, number, number]> = [];
  for (let j = 0; j < target; j++) {
    const start = j * source;
    const end = start + source;
    for (let i = Math.floor(start / target); i * target < end; i++) {
      const overlap = Math.min(end, (i + 1) * target) - Math.max(start, i * target);
      if (overlap > 0) overlaps.push([i, j, overlap]);
    }
  }
  return overlaps;
}

/** Box-filtered sums [h * w] of the box minus the background: exact integers, unnormalized. */
function areaResample(gray: Gray, box: Box, size: [number, number]): Float64Array {
  const [outHeight, outWidth] = size;
  const rowOverlaps = areaOverlaps(box.height, outHeight);
  const columnOverlaps = areaOverlaps(box.width, outWidth);
  const columns = new Float64Array(box.height * outWidth); // [H, w]
  for (let y = 0; y < box.height; y++) {
    const row = (box.top + y) * gray.width + box.left;
    for (const [x, j, overlap] of columnOverlaps) {
      const value = Math.max(gray.values[row + x] - box.background, 0);
      columns[y * outWidth + j] += value * overlap;
    }
  }
  const sums = new Float64Array(outHeight * outWidth); // [h, w]
  for (const [y, i, overlap] of rowOverlaps) {
    for (let j = 0; j < outWidth; j++) sums[i * outWidth + j] += overlap * columns[y * outWidth + j];
  }
  return sums;
}

/** Where a block with this mass profile starts so its rounded center of mass is central. */
function centeredOffset(mass: Float64Array, canvas: number): number {
  let total = 0, moment = 0;
  mass.forEach((value, index) => {
    total += value;
    moment += index * value;
  });
  const center = Math.floor((2 * moment + total) / (2 * total));
  return Math.min(Math.max(Math.floor(canvas / 2) - center, 0), canvas - mass.length);
}

function frameGray(gray: Gray, source: string, constants: FramingConstants): Float32Array {
  const { canvasHeight, canvasWidth, boxSize } = constants;
  if (Math.min(canvasHeight, canvasWidth) < boxSize) {
    throw new Error(`a ${canvasHeight}x${canvasWidth} canvas cannot hold the ${boxSize}-pixel box`);
  }
  const box = inkBox(gray, source, constants);
  const [height, width] = fittedSize(box.height, box.width, boxSize);
  const sums = areaResample(gray, box, [height, width]);
  const rowMass = new Float64Array(height);
  const columnMass = new Float64Array(width);
  let brightest = 0;
  sums.forEach((value, index) => {
    rowMass[Math.floor(index / width)] += value;
    columnMass[index % width] += value;
    brightest = Math.max(brightest, value);
  });
  const top = centeredOffset(rowMass, canvasHeight);
  const left = centeredOffset(columnMass, canvasWidth);
  const framed = new Float32Array(canvasHeight * canvasWidth);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      framed[(top + y) * canvasWidth + left + x] = sums[y * width + x] / brightest;
    }
  }
  return framed;
}

/**
 * RGBA pixels -> the model input, float32 [canvasHeight * canvasWidth] in [0, 1], framed like
 * MNIST. Throws NoDigitError (naming `source`) when the picture holds no digit.
 */
export function frame(
  pixels: Pixels,
  darkOnLight: boolean,
  constants: FramingConstants = MNIST_FRAMING,
  source = 'image',
): Float32Array {
  const gray = toGray(pixels, darkOnLight ? PIXEL_MAX : 0, constants);
  return frameGray(darkOnLight ? invert(gray) : gray, source, constants);
}

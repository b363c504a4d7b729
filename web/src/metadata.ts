/**
 * The facts a seqmnist model carries in its ONNX metadata_props (JSON values, written by
 * src/seqmnist/onnx/metadata.py). onnxruntime-web does not expose metadata_props, so they are
 * read straight from the protobuf wire format of the ModelProto.
 */

import { CENTERING, MNIST_FRAMING, RESAMPLING, type FramingConstants } from './framing';

const METADATA_PROPS_FIELD = 14; // ModelProto.metadata_props: repeated StringStringEntryProto
const KEY_FIELD = 1;
const VALUE_FIELD = 2;
const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;
const VARINT_MAX_BYTES = 10;

export const META_MODEL_VERSION = 'model_version';
export const META_TEST_METRICS = 'test_metrics';
export const META_PARAMS = 'params';
export const META_PREPROCESSING = 'preprocessing';
export const META_CLASS_LABELS = 'class_labels';

export type Metadata = Record<string, unknown>;

/** Reads protobuf fields one at a time; throws on anything truncated or malformed. */
class WireReader {
  private position = 0;
  constructor(private readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.position >= this.bytes.length;
  }

  varint(): number {
    let value = 0;
    for (let shift = 0; shift < VARINT_MAX_BYTES; shift++) {
      const byte = this.take(1)[0];
      value += (byte & 0x7f) * 2 ** (7 * shift);
      if (byte < 0x80) return value;
    }
    throw new Error(`malformed varint at byte ${this.position}`);
  }

  take(length: number): Uint8Array {
    if (this.position + length > this.bytes.length) {
      throw new Error(`truncated: a field needs ${length} bytes at byte ${this.position} of ${this.bytes.length}`);
    }
    const slice = this.bytes.subarray(this.position, this.position + length);
    this.position += length;
    return slice;
  }

  /** [field number, payload bytes or undefined for a skipped non-bytes field]. */
  field(): [number, Uint8Array | undefined] {
    const tag = this.varint();
    const number = Math.floor(tag / 8);
    const wireType = tag % 8;
    switch (wireType) {
      case WIRE_VARINT:
        this.varint();
        return [number, undefined];
      case WIRE_FIXED64:
        this.take(8);
        return [number, undefined];
      case WIRE_FIXED32:
        this.take(4);
        return [number, undefined];
      case WIRE_BYTES:
        return [number, this.take(this.varint())];
      default:
        throw new Error(`unexpected protobuf wire type ${wireType} at field ${number}`);
    }
  }
}

/** The raw metadata_props of an ONNX file: key -> string. Throws if the bytes are not protobuf. */
export function readMetadataProps(bytes: Uint8Array): Record<string, string> {
  const text = new TextDecoder('utf-8', { fatal: true });
  const props: Record<string, string> = {};
  const model = new WireReader(bytes);
  while (!model.done) {
    const [number, payload] = model.field();
    if (number !== METADATA_PROPS_FIELD || payload === undefined) continue;
    const entry = new WireReader(payload);
    let key = '';
    let value = '';
    while (!entry.done) {
      const [field, data] = entry.field();
      if (field === KEY_FIELD && data) key = text.decode(data);
      if (field === VALUE_FIELD && data) value = text.decode(data);
    }
    props[key] = value;
  }
  return props;
}

/** JSON values parsed; a value that is not JSON is kept as the raw string (as Python does). */
export function decodeMetadata(props: Record<string, string>): Metadata {
  const decoded: Metadata = {};
  for (const [key, raw] of Object.entries(props)) {
    try {
      decoded[key] = JSON.parse(raw);
    } catch {
      decoded[key] = raw;
    }
  }
  return decoded;
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function numberOr(value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

/**
 * The framing constants the model states (preprocessing.framing), seqmnist's own where absent.
 * Throws if the model asks for a resampling or centering this page does not implement.
 */
export function framingConstants(metadata: Metadata, timeSteps: number, features: number): FramingConstants {
  const spec = record(record(metadata[META_PREPROCESSING]).framing);
  for (const [key, implemented] of [['resampling', RESAMPLING], ['centering', CENTERING]] as const) {
    if (spec[key] !== undefined && spec[key] !== implemented) {
      throw new Error(`the model asks for ${key} ${JSON.stringify(spec[key])}; this page implements ${implemented}`);
    }
  }
  const canvas = record(spec.canvas_size);
  const luma = spec.luma_weights;
  const lumaWeights =
    Array.isArray(luma) && luma.length === 3 && luma.every((w) => Number.isInteger(w))
      ? (luma as [number, number, number])
      : MNIST_FRAMING.lumaWeights;
  return {
    canvasHeight: numberOr(canvas.height, timeSteps),
    canvasWidth: numberOr(canvas.width, features),
    boxSize: numberOr(spec.box_size, MNIST_FRAMING.boxSize),
    inkThreshold: numberOr(spec.ink_threshold, MNIST_FRAMING.inkThreshold),
    minContrast: numberOr(spec.min_contrast, MNIST_FRAMING.minContrast),
    lumaWeights,
    lumaShift: numberOr(spec.luma_shift, MNIST_FRAMING.lumaShift),
  };
}

/** Class labels from the metadata, or "0".."n-1". */
export function classLabels(metadata: Metadata, count: number): string[] {
  const labels = metadata[META_CLASS_LABELS];
  return Array.isArray(labels) && labels.length === count
    ? labels.map(String)
    : Array.from({ length: count }, (_, index) => String(index));
}

/** One line per fact worth showing: version, commit, test accuracy, architecture. */
export function describeModel(metadata: Metadata): string[] {
  const version = record(metadata[META_MODEL_VERSION]);
  const metrics = record(metadata[META_TEST_METRICS]);
  const architecture = record(record(record(metadata[META_PARAMS]).train).model);
  const facts: string[] = [];
  if (typeof version.seqmnist === 'string') facts.push(`seqmnist ${version.seqmnist}`);
  if (typeof version.git_commit === 'string') {
    const dirty = version.git_dirty ? ' (uncommitted changes)' : '';
    facts.push(`git commit ${version.git_commit.slice(0, 12)}${dirty}`);
  }
  const accuracy = metrics.onnx_accuracy ?? record(metrics.evaluate).accuracy;
  if (typeof accuracy === 'number') {
    const images = typeof metrics.images === 'number' ? ` on ${metrics.images.toLocaleString('en')} test images` : '';
    facts.push(`test accuracy ${(100 * accuracy).toFixed(2)}%${images}`);
  }
  if (typeof architecture.cell === 'string') {
    const directions = architecture.bidirectional === true ? 'bidirectional ' : '';
    facts.push(`${directions}${architecture.cell.toUpperCase()}, ${architecture.units} units, ${architecture.layers} layer(s)`);
  }
  return facts.length ? facts : ['no seqmnist metadata in this model'];
}

/**
 * The shipped ONNX model in onnxruntime-web's WASM backend (its WebGL backend lacks the LSTM
 * op). The .wasm binary is imported as an asset, so Vite copies it into the build and the page
 * works offline once loaded: no CDN.
 */

import * as ort from 'onnxruntime-web/wasm';
import wasmUrl from 'onnxruntime-web/ort-wasm-simd-threaded.wasm?url';

import type { FramingConstants } from './framing';
import {
  classLabels,
  decodeMetadata,
  describeModel,
  framingConstants,
  readMetadataProps,
  type Metadata,
} from './metadata';

ort.env.wasm.wasmPaths = { wasm: wasmUrl };
// One thread: more would need a cross-origin-isolated page, and a batch-1 LSTM gains nothing.
ort.env.wasm.numThreads = 1;

const PROBABILITY_HINT = 'prob';
const INPUT_RANK = 3; // [batch, time_steps, features]

/** The model file cannot be fetched, parsed or run as a seqmnist model. */
export class ModelError extends Error {
  override name = 'ModelError';
}

export interface Classification {
  probabilities: Float32Array; // [n * classes]
  milliseconds: number; // onnxruntime's run() alone
}

function reason(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.trim().split('\n')[0] || 'unknown error';
}

export class Model {
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly inputName: string,
    readonly outputName: string,
    readonly timeSteps: number,
    readonly features: number,
    readonly labels: string[],
    readonly metadata: Metadata,
    readonly framing: FramingConstants,
  ) {}

  /** Fetch, parse and check the model; every failure is a ModelError naming the URL. */
  static async load(url: string): Promise<Model> {
    let response: Response;
    try {
      response = await fetch(url, { cache: 'no-store' });
    } catch (error) {
      throw new ModelError(`${url}: could not fetch the model (${reason(error)})`);
    }
    if (!response.ok) {
      throw new ModelError(
        `${url}: the server answered ${response.status} ${response.statusText}; ` +
          'expected the ONNX model there (start the page with `seqmnist demo --model PATH`)',
      );
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    if (bytes.length === 0) throw new ModelError(`${url}: empty file; expected an ONNX model`);
    let metadata: Metadata;
    let session: ort.InferenceSession;
    try {
      metadata = decodeMetadata(readMetadataProps(bytes));
      session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
    } catch (error) {
      throw new ModelError(
        `${url}: not a readable ONNX model (truncated or another format?): ${reason(error)}`,
      );
    }
    return Model.checked(url, session, metadata);
  }

  private static checked(url: string, session: ort.InferenceSession, metadata: Metadata): Model {
    const input = session.inputMetadata[0];
    if (
      session.inputNames.length !== 1 ||
      !input.isTensor ||
      input.type !== 'float32' ||
      input.shape.length !== INPUT_RANK
    ) {
      throw new ModelError(
        `${url}: expected one float32 input [batch, time_steps, features]; ` +
          `the model has ${JSON.stringify(session.inputMetadata)}`,
      );
    }
    const [, timeSteps, features] = input.shape;
    if (typeof timeSteps !== 'number' || typeof features !== 'number') {
      throw new ModelError(`${url}: input ${input.name} has shape ${JSON.stringify(input.shape)}; expected fixed time_steps and features`);
    }
    const names = session.outputNames;
    const outputName = names.filter((name) => name.toLowerCase().includes(PROBABILITY_HINT)).at(-1) ?? names.at(-1)!;
    const output = session.outputMetadata[names.indexOf(outputName)];
    const classes = output.isTensor ? output.shape.at(-1) : undefined;
    const labels = classLabels(metadata, typeof classes === 'number' ? classes : 10);
    let framing: FramingConstants;
    try {
      framing = framingConstants(metadata, timeSteps, features);
    } catch (error) {
      throw new ModelError(`${url}: ${reason(error)}`);
    }
    return new Model(session, input.name, outputName, timeSteps, features, labels, metadata, framing);
  }

  get facts(): string[] {
    return describeModel(this.metadata);
  }

  /** rows: float32 [n * time_steps * features] in [0, 1] -> probabilities, one run at a time. */
  classify(rows: Float32Array, n: number): Promise<Classification> {
    const size = this.timeSteps * this.features;
    if (!Number.isInteger(n) || n < 1 || rows.length !== n * size) {
      return Promise.reject(
        new Error(`expected ${n} image(s) of ${this.timeSteps}x${this.features} = ${n * size} floats, got ${rows.length}`),
      );
    }
    const run = this.queue.then(async () => {
      const feeds = { [this.inputName]: new ort.Tensor('float32', rows, [n, this.timeSteps, this.features]) };
      const started = performance.now();
      const outputs = await this.session.run(feeds);
      const milliseconds = performance.now() - started;
      return { probabilities: Float32Array.from(outputs[this.outputName].data as Float32Array), milliseconds };
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

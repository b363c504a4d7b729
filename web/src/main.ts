/**
 * The page: draw or upload a digit, frame it like MNIST (framing.ts, the port of seqmnist's
 * Python framing), classify it with the shipped model (model.ts), show the ten probabilities.
 * Every failure ends up as a readable message on the page. `window.seqmnist` is the same
 * machinery for tests and benchmarks.
 */

import { frame, NoDigitError, type Pixels } from './framing';
import { Model } from './model';
import { Pad } from './pad';

const MODEL_URL = './model.onnx';
const PREVIEW_LEVELS = 255;

/** A picture that cannot be decoded. */
class ImageError extends Error {
  override name = 'ImageError';
}

export interface Prediction {
  source: string;
  input: Float32Array; // the framed model input [time_steps * features]
  probabilities: Float32Array; // [classes]
  label: string;
  probability: number;
  milliseconds: number; // onnxruntime-web's run() alone
}

export interface ModelSummary {
  timeSteps: number;
  features: number;
  labels: string[];
  facts: string[];
}

export interface SeqmnistApi {
  ready: Promise<ModelSummary>;
  classifyRows(rows: Float32Array, n: number): Promise<Float32Array>;
  preprocess(pixels: Pixels, darkOnLight?: boolean): Promise<Float32Array>;
  classifyImage(blob: Blob, darkOnLight?: boolean, name?: string): Promise<Prediction>;
  readonly lastPrediction: Prediction | null;
}

declare global {
  interface Window {
    seqmnist: SeqmnistApi;
  }
}

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

const ui = {
  pad: element<HTMLCanvasElement>('pad'),
  clear: element<HTMLButtonElement>('clear'),
  file: element<HTMLInputElement>('file'),
  dark: element<HTMLInputElement>('dark'),
  digit: element<HTMLElement>('digit'),
  confidence: element<HTMLElement>('confidence'),
  bars: element<HTMLElement>('bars'),
  timing: element<HTMLElement>('timing'),
  preview: element<HTMLCanvasElement>('preview'),
  facts: element<HTMLElement>('facts'),
  status: element<HTMLElement>('status'),
  error: element<HTMLElement>('error'),
};

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function showError(error: unknown): void {
  ui.error.textContent = message(error);
  ui.error.hidden = false;
}

function showStatus(text: string): void {
  ui.status.textContent = text;
  ui.error.hidden = true;
}

function buildBars(labels: string[]): void {
  ui.bars.replaceChildren(
    ...labels.map((label) => {
      const row = document.createElement('div');
      row.className = 'bar';
      row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
      row.querySelector('.label')!.textContent = label;
      return row;
    }),
  );
}

function showProbabilities(probabilities: Float32Array | null): void {
  ui.bars.querySelectorAll<HTMLElement>('.bar').forEach((row, index) => {
    const p = probabilities ? probabilities[index] : 0;
    row.querySelector<HTMLElement>('.fill')!.style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector('.value')!.textContent = probabilities ? `${(100 * p).toFixed(1)}%` : '';
  });
}

function showInput(input: Float32Array, height: number, width: number): void {
  ui.preview.width = width;
  ui.preview.height = height;
  const image = new ImageData(width, height);
  input.forEach((value, index) => {
    const level = Math.round(value * PREVIEW_LEVELS);
    image.data.set([level, level, level, PREVIEW_LEVELS], 4 * index);
  });
  ui.preview.getContext('2d')!.putImageData(image, 0, 0);
}

function resetPrediction(): void {
  lastPrediction = null;
  ui.digit.textContent = '–';
  ui.confidence.textContent = '';
  ui.timing.textContent = '';
  showProbabilities(null);
  ui.preview.getContext('2d')!.clearRect(0, 0, ui.preview.width, ui.preview.height);
}

let lastPrediction: Prediction | null = null;
const ready = Model.load(MODEL_URL);

async function classifyPixels(pixels: Pixels, darkOnLight: boolean, source: string): Promise<Prediction> {
  const model = await ready;
  const input = frame(pixels, darkOnLight, model.framing, source);
  const { probabilities, milliseconds } = await model.classify(input, 1);
  const best = probabilities.indexOf(Math.max(...probabilities));
  const prediction = { source, input, probabilities, label: model.labels[best], probability: probabilities[best], milliseconds };
  lastPrediction = prediction;
  ui.digit.textContent = prediction.label;
  ui.confidence.textContent = `${(100 * prediction.probability).toFixed(1)}% sure (${source})`;
  ui.timing.textContent = `inference ${milliseconds.toFixed(2)} ms (onnxruntime-web, WASM)`;
  showProbabilities(probabilities);
  showInput(input, model.framing.canvasHeight, model.framing.canvasWidth);
  showStatus('');
  return prediction;
}

/** A picture file -> RGBA pixels as stored, neither color-managed nor premultiplied. */
async function decode(blob: Blob, name: string): Promise<ImageData> {
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (error) {
    throw new ImageError(`${name}: not a readable image (${message(error)}); expected a PNG or JPEG picture`);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d', { willReadFrequently: true })!;
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

async function classifyImage(blob: Blob, darkOnLight = false, name = 'image'): Promise<Prediction> {
  return classifyPixels(await decode(blob, name), darkOnLight, name);
}

async function classifyDrawing(): Promise<void> {
  try {
    await classifyPixels(pad.pixels(), false, 'drawing');
  } catch (error) {
    if (!(error instanceof NoDigitError)) throw error;
    resetPrediction();
    showStatus('Draw a digit: the pad is still blank.');
  }
}

async function classifyUpload(): Promise<void> {
  const file = ui.file.files?.[0];
  if (file) await classifyImage(file, ui.dark.checked, file.name);
}

function reporting(action: () => Promise<void>): () => void {
  return () => void action().catch(showError);
}

const pad = new Pad(ui.pad, reporting(classifyDrawing));
ui.clear.addEventListener('click', () => {
  pad.clear();
  resetPrediction();
  showStatus('Cleared.');
});
ui.file.addEventListener('change', reporting(classifyUpload));
ui.dark.addEventListener('change', reporting(classifyUpload));
window.addEventListener('error', (event) => showError(event.error ?? event.message));
window.addEventListener('unhandledrejection', (event) => showError(event.reason));

buildBars(Array.from({ length: 10 }, (_, index) => String(index)));
resetPrediction();
ready.then(
  (model) => {
    buildBars(model.labels);
    showProbabilities(null);
    ui.facts.replaceChildren(
      ...model.facts.map((fact) => Object.assign(document.createElement('li'), { textContent: fact })),
    );
    showStatus('Model loaded: draw a digit, or upload a picture.');
  },
  (error) => {
    ui.status.textContent = 'The model could not be loaded.';
    showError(error);
  },
);

const summary = ready.then((model) => ({
  timeSteps: model.timeSteps,
  features: model.features,
  labels: model.labels,
  facts: model.facts,
}));
summary.catch(() => undefined); // shown on the page above; callers still see the rejection

window.seqmnist = {
  ready: summary,
  classifyRows: async (rows, n) => (await (await ready).classify(rows, n)).probabilities,
  preprocess: async (pixels, darkOnLight = false) => frame(pixels, darkOnLight, (await ready).framing),
  classifyImage,
  get lastPrediction() {
    return lastPrediction;
  },
};

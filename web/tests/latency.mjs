// Batch-1 latency of the demo page's model (onnxruntime-web, WASM) in Chromium, for
// bench/web_latency.py:
//   node tests/latency.mjs URL ROWS_FILE CALLS RUNS WARMUP
// ROWS_FILE holds float32 images [n, time_steps, features]; each run times CALLS back-to-back
// classifyRows(image, 1) calls as one block, cycling through the images (the page's clock ticks
// in 0.1 ms steps: one call is too short to time alone).
// Prints {"runs_ms": [mean ms per call of each run], "images": n} as JSON.
import { readFileSync } from 'node:fs';
import { launch, open, toBase64 } from './browser.mjs';

const [url, rowsFile, calls, runs, warmup] = process.argv.slice(2);
if (!url || !rowsFile) {
  console.error('usage: node tests/latency.mjs URL ROWS_FILE CALLS RUNS WARMUP');
  process.exit(2);
}
const bytes = readFileSync(rowsFile);
const rows = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
const browser = await launch();
try {
  const outcome = await open(browser.page, url);
  if (!outcome.ready) throw new Error(`the page could not load its model: ${outcome.error}`);
  const result = await browser.page.evaluate(
    async ({ data, calls, runs, warmup }) => {
      const rows = __floats(data);
      const { timeSteps, features } = await window.seqmnist.ready;
      const size = timeSteps * features;
      const images = rows.length / size;
      const image = (index) => rows.slice((index % images) * size, ((index % images) + 1) * size);
      for (let i = 0; i < warmup; i++) await window.seqmnist.classifyRows(image(i), 1);
      const means = [];
      for (let run = 0; run < runs; run++) {
        const inputs = Array.from({ length: calls }, (_, call) => image(run * calls + call));
        const started = performance.now();
        for (const input of inputs) await window.seqmnist.classifyRows(input, 1);
        means.push((performance.now() - started) / calls);
      }
      return { runs_ms: means, images };
    },
    { data: toBase64(rows), calls: Number(calls), runs: Number(runs), warmup: Number(warmup) },
  );
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await browser.close();
}

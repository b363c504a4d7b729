// The browser side of tests/integration/web: one Chromium page, driven by JSON lines on stdin
// ({"id", "op", ...arguments}), each answered by one line on stdout ({"id", "ok", "result"} or
// {"id", "ok": false, "error"}). Arrays of float32 and file contents travel as base64.
import { createInterface } from 'node:readline';
import { launch, open } from './browser.mjs';

const STROKE_TIMEOUT_MS = 10_000;
const UPLOAD_TIMEOUT_MS = 20_000;

const browser = await launch();
const { page } = browser;
let requests = [];
let consoleErrors = [];
page.on('request', (request) => requests.push(request.url()));
page.on('console', (message) => message.type() === 'error' && consoleErrors.push(message.text()));
page.on('pageerror', (error) => consoleErrors.push(String(error)));

// Page-side: a prediction as the JSON the tests read (arrays as base64, see browser.mjs).
function installSummary() {
  window.__summary = (p) => ({
    label: p.label,
    probability: p.probability,
    input: __base64(p.input),
    probabilities: __base64(p.probabilities),
  });
}

/** The visible state of the page, as a person would read it. */
function pageState() {
  const text = (id) => document.getElementById(id)?.textContent ?? '';
  const error = document.getElementById('error');
  return {
    digit: text('digit'),
    confidence: text('confidence'),
    timing: text('timing'),
    status: text('status'),
    facts: [...document.querySelectorAll('#facts li')].map((li) => li.textContent),
    error: error && !error.hidden ? error.textContent : null,
    bars: document.querySelectorAll('#bars .bar').length,
  };
}

function lastPrediction() {
  return page.evaluate(() => (window.seqmnist.lastPrediction ? __summary(window.seqmnist.lastPrediction) : null));
}

async function padOrigin() {
  const box = await page.locator('#pad').boundingBox();
  return [box.x, box.y];
}

/** Wait until the page has classified something new, or shown an error. */
async function settled(before, timeout) {
  await page.waitForFunction(
    (previous) => window.seqmnist.lastPrediction !== previous || !document.getElementById('error').hidden,
    before,
    { timeout },
  );
}

const ops = {
  async open({ url }) {
    requests = [];
    consoleErrors = [];
    const outcome = await open(page, url);
    await page.evaluate(installSummary);
    return outcome;
  },
  async classify_rows({ rows, n }) {
    return page.evaluate(
      async ({ rows, n }) => __base64(await window.seqmnist.classifyRows(__floats(rows), n)),
      { rows, n },
    );
  },
  async classify_images({ images, dark_on_light }) {
    return page.evaluate(
      async ({ images, darkOnLight }) => {
        const results = [];
        for (const { name, data } of images) {
          const blob = new Blob([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))]);
          try {
            results.push(__summary(await window.seqmnist.classifyImage(blob, darkOnLight, name)));
          } catch (error) {
            results.push({ error: String(error?.message ?? error) });
          }
        }
        return results;
      },
      { images, darkOnLight: dark_on_light },
    );
  },
  /** Strokes in pad pixels ([[x, y], ...] each), drawn with real mouse moves; the last result. */
  async draw({ strokes }) {
    await page.click('#clear');
    const [left, top] = await padOrigin();
    for (const stroke of strokes) {
      const before = await page.evaluateHandle(() => window.seqmnist.lastPrediction);
      const [[x0, y0], ...rest] = stroke;
      await page.mouse.move(left + x0, top + y0);
      await page.mouse.down();
      for (const [x, y] of rest) await page.mouse.move(left + x, top + y);
      await page.mouse.up();
      await settled(before, STROKE_TIMEOUT_MS);
      await before.dispose();
    }
    return lastPrediction();
  },
  /** A file through the page's own file input, as a person uploads it: {state, prediction}. */
  async upload({ path, dark_on_light }) {
    await page.setInputFiles('#file', []); // so that ticking the box re-classifies nothing
    await page.setChecked('#dark', dark_on_light);
    await page.evaluate(() => {
      document.getElementById('error').hidden = true;
    });
    const before = await page.evaluateHandle(() => window.seqmnist.lastPrediction);
    await page.setInputFiles('#file', path);
    await settled(before, UPLOAD_TIMEOUT_MS);
    await before.dispose();
    return {
      state: await page.evaluate(pageState),
      prediction: await lastPrediction(),
    };
  },
  async state() {
    return page.evaluate(pageState);
  },
  async screenshot({ path }) {
    await page.screenshot({ path, fullPage: true });
    return path;
  },
  async log() {
    return { requests, console_errors: consoleErrors };
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { id, op, ...args } = JSON.parse(line);
  let reply;
  try {
    if (!(op in ops)) throw new Error(`unknown op ${op}`);
    reply = { id, ok: true, result: await ops[op](args) };
  } catch (error) {
    reply = { id, ok: false, error: String(error?.stack ?? error) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}
await browser.close();

// Debian's Chromium driven by playwright-core (no downloaded browser), headless, offline: shared
// by the pytest driver (driver.mjs) and the latency benchmark (latency.mjs).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.SEQMNIST_CHROMIUM || '/usr/bin/chromium';
// Without the networking flags Chromium keeps calling Google's hosts, which this network refuses.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const VIEWPORT = { width: 900, height: 720 };
const READY_TIMEOUT_MS = 60_000;

/** A fresh browser profile; close() removes it. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'seqmnist-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: VIEWPORT,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  return {
    context,
    page,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// Page-side float32 <-> base64, the way arrays cross the page boundary.
function installCodecs() {
  window.__floats = (text) => new Float32Array(Uint8Array.from(atob(text), (c) => c.charCodeAt(0)).buffer);
  window.__base64 = (floats) => {
    const bytes = new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
}

/** Load the page and wait for its model: {ready: true, summary} or {ready: false, error}. */
export async function open(page, url) {
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => window.seqmnist !== undefined, null, { timeout: READY_TIMEOUT_MS });
  await page.evaluate(installCodecs);
  return page.evaluate(() =>
    window.seqmnist.ready.then(
      (summary) => ({ ready: true, summary }),
      (error) => ({ ready: false, error: String(error?.message ?? error) }),
    ),
  );
}

/** A float32 array as base64 of its bytes, for the page's __floats. */
export function toBase64(floats) {
  return Buffer.from(floats.buffer, floats.byteOffset, floats.byteLength).toString('base64');
}

// What both browser tests share: where the binary, Chromium and the artifacts
// are, and a headless Debian Chromium driven by playwright-core (never a
// downloaded browser), with the project's flags.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const BIN = process.env.MOVEWATCH_BIN
  ? path.resolve(process.env.MOVEWATCH_BIN)
  : path.join(REPO, 'target', 'debug', 'movewatch');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ARTIFACTS = path.join(REPO, 'artifacts');

/** The last `n` characters of `text` (engine output in failure messages). */
export function tail(text, n = 4000) {
  return text.length > n ? `…${text.slice(-n)}` : text;
}

/**
 * Headless Chromium with a fresh profile (its directory is pushed onto
 * `tempDirs` for the caller to remove). launchPersistentContext is how
 * Playwright takes a --user-data-dir.
 */
export function launchChromium(prefix, tempDirs) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), prefix));
  tempDirs.push(userDataDir);
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
    ],
    viewport: { width: 1280, height: 1000 },
    timeout: 60_000,
  });
}

/** A new tab that records console errors and uncaught page errors. */
export async function openPage(context) {
  const page = await context.newPage();
  const errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console.error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`page error: ${err.message}`));
  return { page, errors };
}

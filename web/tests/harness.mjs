// What both browser tests share: where the binary, Chromium and the artifacts
// are, and a headless Debian Chromium driven by playwright-core (never a
// downloaded browser), with the project's flags.

import { mkdtempSync, readFileSync } from 'node:fs';
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

/**
 * A new tab that records console errors and uncaught page errors (`errors`),
 * and every console message and failed request's URL (`messages`, to check
 * that no token is ever printed).
 */
export async function openPage(context) {
  const page = await context.newPage();
  const errors = [];
  const messages = [];
  page.on('console', (msg) => {
    const loc = msg.location();
    messages.push(`${msg.type()}: ${msg.text()} @ ${loc && loc.url ? loc.url : ''}`);
    if (msg.type() === 'error') errors.push(`console.error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => {
    messages.push(`pageerror: ${err.message}`);
    errors.push(`page error: ${err.message}`);
  });
  page.on('requestfailed', (req) => messages.push(`requestfailed: ${req.url()}`));
  page.on('websocket', (ws) => messages.push(`websocket: ${ws.url()}`));
  return { page, errors, messages };
}

const AXE = readFileSync(path.join(HERE, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/**
 * Runs axe-core (from node_modules, nothing fetched) in the page and returns
 * its `serious` and `critical` violations, each as "rule: target, …". The
 * pages' CSP forbids inline scripts, so axe is evaluated over the DevTools
 * protocol rather than added as a <script>.
 */
export async function seriousA11yViolations(page) {
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  return violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}: ${v.help}): ${v.targets.join(', ')}`);
}

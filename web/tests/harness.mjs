// What both browser tests share: where the binary, Chromium and the artifacts
// are, and a headless Debian Chromium driven by playwright-core (never a
// downloaded browser), with the project's flags.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
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

/**
 * Starts `movewatch demo` on free ports with a fresh data directory (pushed
 * onto `tempDirs`) and resolves once it printed the control-room and HMP
 * Leeds board addresses: { child, controlUrl, boardUrl, origin, token,
 * siteToken, output() }.
 */
export function startDemo(tempDirs, { startupMs = 60_000 } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`movewatch binary not found at ${BIN}; run \`cargo build -p movewatch\` or set MOVEWATCH_BIN`);
  }
  const dataDir = mkdtempSync(path.join(tmpdir(), 'movewatch-web-test-data-'));
  tempDirs.push(dataDir);
  const args = ['demo', '--http-listen', '127.0.0.1:0', '--mqtt-listen', '127.0.0.1:0', '--data-dir', dataDir];
  const child = spawn(BIN, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  let out = '';
  const keep = (chunk) => {
    out += chunk;
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the demo printed no addresses within ${startupMs / 1000} s:\n${tail(out)}`)), startupMs);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', keep);
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      const c = /http:\/\/127\.0\.0\.1:\d+\/control\?token=[A-Za-z0-9_-]+/.exec(out);
      const b = /http:\/\/127\.0\.0\.1:\d+\/site\/LEI\?token=[A-Za-z0-9_-]+/.exec(out);
      if (c && b) {
        clearTimeout(timer);
        const u = new URL(c[0]);
        resolve({
          child,
          controlUrl: c[0],
          boardUrl: b[0],
          origin: u.origin,
          token: u.searchParams.get('token'),
          siteToken: new URL(b[0]).searchParams.get('token'),
          output: () => out,
        });
      }
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the demo exited (code ${code}):\n${tail(out)}`));
    });
  });
}

/** Stops a child process: SIGTERM, then SIGKILL after 5 s. */
export async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/**
 * The demo and a browser for a test file's pages (its `before`): the
 * demo's addresses and tokens, and a Chromium context whose profile is
 * named after `prefix`; `artifacts/` is made for the screenshots.
 */
export async function startDemoBrowser(prefix, tempDirs) {
  const demo = await startDemo(tempDirs);
  const context = await launchChromium(prefix, tempDirs);
  mkdirSync(ARTIFACTS, { recursive: true });
  return { demo, context };
}

/** Closes what `startDemoBrowser` opened (a test file's `after`). */
export async function stopDemoBrowser({ demo, context }, tempDirs) {
  try {
    if (context) await context.close();
  } catch {
    /* already gone */
  }
  if (demo) await stopChild(demo.child);
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
}

// Browser test of the control-room page (/control) against the real engine in demo mode.
//
//   node --test web/tests/
//
// Starts `movewatch demo` (MOVEWATCH_BIN, default <repo>/target/debug/movewatch)
// on free ports with a fresh data directory, and drives the system Chromium
// (/usr/bin/chromium, or CHROMIUM_PATH) with playwright-core. No browser is
// ever downloaded.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ARTIFACTS, BIN, REPO, launchChromium, openPage, tail } from './harness.mjs';

const URL_RE = /http:\/\/127\.0\.0\.1:\d+\/control\?token=[A-Za-z0-9_-]+/;
const BOARD_RE = /http:\/\/127\.0\.0\.1:\d+\/site\/LEI\?token=[A-Za-z0-9_-]+/;

const STARTUP_MS = 60_000;
const FLEET_MS = 30_000;

let engine = null; // child process
let engineOutput = ''; // stdout + stderr, for diagnostics
let pageUrl = null; // http://127.0.0.1:<port>/control?token=<token>
let boardUrl = null; // http://127.0.0.1:<port>/site/LEI?token=<site token>
let startedAt = 0; // when the demo was started (ms)
let origin = null; // http://127.0.0.1:<port>
let token = null;
let context = null; // persistent browser context (fresh user-data-dir)
const tempDirs = [];

function killEngine() {
  if (engine && engine.exitCode === null && engine.signalCode === null) {
    try {
      engine.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
// Last resort if the runner dies without reaching after().
process.on('exit', killEngine);

function startEngine() {
  if (!existsSync(BIN)) {
    throw new Error(`movewatch binary not found at ${BIN}; run \`cargo build -p movewatch\` or set MOVEWATCH_BIN`);
  }
  const dataDir = mkdtempSync(path.join(tmpdir(), 'movewatch-web-test-data-'));
  tempDirs.push(dataDir);
  const args = ['demo', '--http-listen', '127.0.0.1:0', '--mqtt-listen', '127.0.0.1:0', '--data-dir', dataDir];
  startedAt = Date.now();
  engine = spawn(BIN, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });

  return new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => {
      reject(new Error(`no page URL on movewatch's stdout within ${STARTUP_MS / 1000} s; output:\n${tail(engineOutput)}`));
    }, STARTUP_MS);
    engine.stdout.setEncoding('utf8');
    engine.stderr.setEncoding('utf8');
    engine.stdout.on('data', (chunk) => {
      stdout += chunk;
      engineOutput += chunk;
      if (engineOutput.length > 200_000) engineOutput = engineOutput.slice(-100_000);
      const m = URL_RE.exec(stdout);
      const b = BOARD_RE.exec(stdout);
      if (b && !boardUrl) boardUrl = b[0];
      if (m && b && !pageUrl) {
        pageUrl = m[0];
        const u = new URL(pageUrl);
        origin = u.origin;
        token = u.searchParams.get('token');
        clearTimeout(timer);
        resolve();
      }
    });
    engine.stderr.on('data', (chunk) => {
      engineOutput += chunk;
      if (engineOutput.length > 200_000) engineOutput = engineOutput.slice(-100_000);
    });
    engine.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${BIN}: ${err.message}`));
    });
    engine.on('exit', (code, signal) => {
      if (!pageUrl) {
        clearTimeout(timer);
        reject(new Error(`movewatch exited early (code ${code}, signal ${signal}); output:\n${tail(engineOutput)}`));
      }
    });
  });
}

async function stopEngine() {
  if (!engine || engine.exitCode !== null || engine.signalCode !== null) return;
  const exited = new Promise((resolve) => engine.once('exit', resolve));
  engine.kill('SIGTERM');
  const timer = setTimeout(killEngine, 5_000);
  await exited;
  clearTimeout(timer);
}

before(async () => {
  await startEngine();
  context = await launchChromium('movewatch-web-test-chromium-', tempDirs);
});

after(async () => {
  try {
    if (context) await context.close();
  } catch {
    /* browser already gone */
  }
  try {
    await stopEngine();
  } finally {
    killEngine();
    for (const dir of tempDirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  }
});

async function positions(page) {
  return page.evaluate(() => {
    const out = {};
    for (const [vehicle, p] of window.movewatchState.vehicles) out[vehicle] = [p.lat, p.lon];
    return out;
  });
}

test('the control map shows the fleet moving', { timeout: 120_000 }, async () => {
  const { page, errors } = await openPage(context);
  try {
    await page.goto(pageUrl, { waitUntil: 'load' });
    await page.getByRole('heading', { level: 1, name: 'movewatch — control room' }).waitFor();

    try {
      await page.waitForFunction(
        () => Number(document.querySelector('#vehicle-count')?.dataset.count) >= 40,
        null,
        { timeout: FLEET_MS, polling: 250 },
      );
    } catch (err) {
      const count = await page.locator('#vehicle-count').getAttribute('data-count').catch(() => '?');
      const status = await page.locator('#connection-status').textContent().catch(() => '?');
      throw new Error(
        `fewer than 40 vehicles within ${FLEET_MS / 1000} s (data-count=${count}, status=${status}); ` +
          `page errors: ${JSON.stringify(errors)}; engine output:\n${tail(engineOutput)}`,
        { cause: err },
      );
    }

    const count = Number(await page.locator('#vehicle-count').getAttribute('data-count'));
    assert.match(await page.locator('#vehicle-count').innerText(), new RegExp(`^${count} vehicles live$`));
    assert.equal(await page.locator('#connection-status').innerText(), 'Live');

    const first = await positions(page);
    assert.ok(Object.keys(first).length >= 40, `expected ≥ 40 vehicles in movewatchState, got ${Object.keys(first).length}`);
    await page.waitForTimeout(3_000);
    const second = await positions(page);
    const moved = Object.keys(first).filter((v) => {
      const b = second[v];
      return b && (b[0] !== first[v][0] || b[1] !== first[v][1]);
    });
    assert.ok(moved.length >= 10, `expected ≥ 10 vehicles to move in 3 s, ${moved.length} did`);

    // The text alternative lists the vehicles, sorted by registration.
    await page.waitForFunction(
      () => document.querySelectorAll('#vehicle-table tbody tr').length >= 40,
      null,
      { timeout: 5_000 },
    );
    const regs = await page.locator('#vehicle-table tbody tr > :first-child').allInnerTexts();
    assert.deepEqual(regs, [...regs].sort());
    assert.match(await page.locator('#vehicle-table caption').innerText(), /^Vehicles \(\d+\)$/);
    assert.equal(await page.locator('canvas#map').getAttribute('role'), 'img');
    assert.ok((await page.locator('canvas#map').getAttribute('aria-label'))?.length > 20);

    // A vehicle chosen from the table (by keyboard) shows its move and its recent track.
    const first_reg = regs[0];
    await page.locator('#vehicle-table tbody tr').first().getByRole('button', { name: first_reg }).focus();
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { level: 2, name: `Vehicle ${first_reg}` }).waitFor({ timeout: 5_000 });
    await page.waitForFunction(() => /stored reports|No stored reports/.test(document.querySelector('#detail-track')?.textContent || ''), null, {
      timeout: 10_000,
    });
    assert.match(await page.locator('#detail-moves').innerText(), /Move/);

    // The token is never shown.
    assert.ok(!page.url().includes(token), 'token left in the address bar');
    assert.ok(!(await page.locator('body').innerText()).includes(token), 'token displayed on the page');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-fleet.png'), fullPage: false });

    assert.deepEqual(errors, [], 'console errors or page errors');
  } finally {
    await page.close();
  }
});

test('token form appears without a token', { timeout: 60_000 }, async () => {
  const { page } = await openPage(context);
  try {
    await page.goto(`${origin}/`, { waitUntil: 'load' }); // redirects to /control
    assert.equal(new URL(page.url()).pathname, '/control');
    const input = page.getByLabel('Access token', { exact: true });
    await input.waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await input.getAttribute('type'), 'password');
    await page.getByRole('button', { name: 'Continue' }).waitFor({ state: 'visible' });
    assert.equal(await page.locator('#token-error').isVisible(), false);
  } finally {
    await page.close();
  }
});

test('a wrong token is refused', { timeout: 60_000 }, async () => {
  const { page } = await openPage(context);
  try {
    await page.goto(`${origin}/control?token=wrong-token-123`, { waitUntil: 'load' });
    await page.getByText('Token not accepted').waitFor({ state: 'visible', timeout: 15_000 });
    await page.getByLabel('Access token', { exact: true }).waitFor({ state: 'visible' });
    assert.equal(await page.locator('#vehicle-count').getAttribute('data-count'), '0');
    assert.ok(!(await page.locator('body').innerText()).includes('wrong-token-123'), 'token displayed on the page');
  } finally {
    await page.close();
  }
});

test('the LEI board the demo prints shows incoming moves with ETAs within a minute', { timeout: 120_000 }, async () => {
  const { page, errors } = await openPage(context);
  try {
    assert.ok(boardUrl, 'the demo printed the HMP Leeds board address');
    await page.goto(boardUrl, { waitUntil: 'load' });
    // A move on its way, with a countdown and a time, within 60 s of the demo's start.
    const left = Math.max(5_000, 60_000 - (Date.now() - startedAt));
    try {
      await page.waitForFunction(
        () =>
          [...document.querySelectorAll('#ontheway-tbody tr')].some((tr) =>
            /^In \d+ min|^Due|^In \d+ h/.test(tr.querySelector('[data-col="eta"] .countdown')?.textContent || ''),
          ),
        null,
        { timeout: left, polling: 250 },
      );
    } catch (err) {
      const rows = await page.locator('#board tbody tr').allInnerTexts().catch(() => []);
      throw new Error(
        `no incoming move with an ETA on LEI's board within 60 s of the demo's start; rows: ${JSON.stringify(rows)}; ` +
          `page errors: ${JSON.stringify(errors)}; engine output:\n${tail(engineOutput)}`,
        { cause: err },
      );
    }
    const count = Number(await page.locator('#move-count').getAttribute('data-count'));
    assert.ok(count >= 2, `expected several incoming moves, got ${count}`);
    assert.equal(await page.locator('#connection-status').innerText(), 'Live');
    // Every incoming row names its van and where it comes from.
    for (const tr of await page.locator('#expected-tbody tr, #ontheway-tbody tr, #arrived-tbody tr').all()) {
      assert.ok((await tr.locator('[data-col="vehicle"]').innerText()).length > 0);
      assert.ok((await tr.locator('[data-col="from"]').innerText()).length > 0);
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-lei-board.png'), fullPage: true });
    assert.deepEqual(errors, [], 'console errors or page errors');
  } finally {
    await page.close();
  }
});

// Browser tests of a site's incoming board (/site/{id}) and the control room's
// view of a driven move, against `movewatch serve` with a config made here:
// a control-room token, a site token for HMP Leeds (LEI), one for HMP
// Wakefield (WDI), and a supplier. The test books a move WDI → LEI over HTTP,
// then publishes the journey's start and a van's positions over MQTT (with a
// minimal MQTT 3.1.1 QoS 1 publisher below; no npm MQTT client is needed),
// driving the van into LEI's fence so the board shows the arrival.
//
//   node --test web/tests/

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ARTIFACTS, BIN, REPO, launchChromium, openPage, seriousA11yViolations, tail } from './harness.mjs';


const secret = (n) => randomBytes(n).toString('base64url');
const CONTROL = `control-${secret(24)}`;
const LEI_TOKEN = `site-lei-${secret(24)}`;
const WDI_TOKEN = `site-wdi-${secret(24)}`;
const SUPPLIER = 'testco';
const MQTT_PASSWORD = `pw-${secret(24)}`;
const VAN = 'TB12VAN';
const MOVE = 'm-board-1';
const SITES = {
  WDI: [53.683292, -1.509287],
  LEI: [53.795728, -1.57617],
};

let engine = null;
let engineOutput = '';
let origin = null;
let mqttPort = null;
let context = null;
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
process.on('exit', killEngine);

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startEngine() {
  if (!existsSync(BIN)) {
    throw new Error(`movewatch binary not found at ${BIN}; run \`cargo build -p movewatch\` or set MOVEWATCH_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'movewatch-board-test-'));
  tempDirs.push(dir);
  const port = await freePort();
  const config = `
[http]
listen = "127.0.0.1:0"
[mqtt]
listen = "127.0.0.1:${port}"
[store]
url = "sqlite://${dir}/board.db"
[sites]
files = ["data/sites.csv"]
[[suppliers]]
id = "${SUPPLIER}"
api_key = "key-${secret(24)}"
mqtt_password = "${MQTT_PASSWORD}"
[[vehicles]]
registration = "${VAN}"
supplier = "${SUPPLIER}"
[[tokens]]
token = "${CONTROL}"
role = "control_room"
[[tokens]]
token = "${LEI_TOKEN}"
role = "site"
sites = ["LEI"]
[[tokens]]
token = "${WDI_TOKEN}"
role = "site"
sites = ["WDI"]
`;
  const file = path.join(dir, 'movewatch.toml');
  writeFileSync(file, config);
  engine = spawn(BIN, ['serve', '--config', file], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`engine did not start; output:\n${tail(engineOutput)}`)), 60_000);
    engine.stdout.setEncoding('utf8');
    engine.stderr.setEncoding('utf8');
    const collect = (chunk) => {
      engineOutput += chunk;
      if (engineOutput.length > 200_000) engineOutput = engineOutput.slice(-100_000);
      const m = /serving on (http:\/\/127\.0\.0\.1:\d+) \(MQTT [^:]+:(\d+)\)/.exec(engineOutput);
      if (m && !origin) {
        origin = m[1];
        mqttPort = Number(m[2]);
        clearTimeout(timer);
        resolve();
      }
    };
    engine.stdout.on('data', collect);
    engine.stderr.on('data', collect);
    engine.on('exit', (code, signal) => {
      if (!origin) {
        clearTimeout(timer);
        reject(new Error(`movewatch exited early (code ${code}, signal ${signal}); output:\n${tail(engineOutput)}`));
      }
    });
  });
}

// ---------------------------------------------------------------------------
// A minimal MQTT 3.1.1 publisher: CONNECT with a username and password, then
// QoS 1 PUBLISHes, each resolved on its PUBACK (the engine acknowledges only
// once the message is durably stored).

function mqttLength(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 128;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

function mqttString(s) {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

const mqttPacket = (first, body) => Buffer.concat([Buffer.from([first]), mqttLength(body.length), body]);

function mqttConnect(port, user, password) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const pending = new Map();
    let nextId = 1;
    let buf = Buffer.alloc(0);
    let connected = false;
    const client = {
      publish(topic, payload) {
        const id = nextId++;
        const pid = Buffer.alloc(2);
        pid.writeUInt16BE(id);
        return new Promise((ok, fail) => {
          const timer = setTimeout(() => fail(new Error(`no PUBACK for ${topic} within 20 s`)), 20_000);
          pending.set(id, () => {
            clearTimeout(timer);
            ok();
          });
          sock.write(mqttPacket(0x32, Buffer.concat([mqttString(topic), pid, Buffer.from(payload)])));
        });
      },
      close() {
        sock.end(Buffer.from([0xe0, 0x00]));
      },
    };
    sock.on('error', reject);
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (buf.length < 2) return;
        let len = 0;
        let mult = 1;
        let i = 1;
        for (;;) {
          if (i >= buf.length) return;
          const b = buf[i++];
          len += (b & 127) * mult;
          mult *= 128;
          if (!(b & 128)) break;
        }
        if (buf.length < i + len) return;
        const type = buf[0] >> 4;
        const body = buf.subarray(i, i + len);
        buf = buf.subarray(i + len);
        if (type === 2) {
          if (body[1] !== 0) return reject(new Error(`MQTT CONNACK refused (${body[1]})`));
          connected = true;
          resolve(client);
        } else if (type === 4) {
          const done = pending.get(body.readUInt16BE(0));
          pending.delete(body.readUInt16BE(0));
          if (done) done();
        }
      }
    });
    sock.on('connect', () => {
      const keepAlive = Buffer.from([0, 60]);
      const body = Buffer.concat([
        mqttString('MQTT'),
        Buffer.from([4, 0xc2]), // level 4; username, password, clean session
        keepAlive,
        mqttString(`${user}-board-test-${secret(6)}`), // a device's client id starts with its supplier
        mqttString(user),
        mqttString(password),
      ]);
      sock.write(mqttPacket(0x10, body));
    });
    sock.on('close', () => {
      if (!connected) reject(new Error('MQTT connection closed before CONNACK'));
    });
  });
}

// ---------------------------------------------------------------------------

async function api(method, route, token, body) {
  const res = await fetch(`${origin}${route}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text };
}

before(async () => {
  await startEngine();
  context = await launchChromium('movewatch-board-chromium-', tempDirs);
});

after(async () => {
  try {
    if (context) await context.close();
  } catch {
    /* browser already gone */
  }
  if (engine && engine.exitCode === null && engine.signalCode === null) {
    const exited = new Promise((resolve) => engine.once('exit', resolve));
    engine.kill('SIGTERM');
    const timer = setTimeout(killEngine, 5_000);
    await exited;
    clearTimeout(timer);
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

const row = (page, id = MOVE) => page.locator(`#board tr[data-move-id="${id}"]`);
const cell = (page, col, id = MOVE) => page.locator(`#board tr[data-move-id="${id}"] [data-col="${col}"]`);

async function waitCell(page, col, re, what, timeout = 20_000, id = MOVE) {
  try {
    await page.waitForFunction(
      ([i, c, src]) => new RegExp(src).test(document.querySelector(`#board tr[data-move-id="${i}"] [data-col="${c}"]`)?.textContent || ''),
      [id, col, re.source],
      { timeout, polling: 200 },
    );
  } catch (err) {
    const got = await cell(page, col, id).textContent().catch(() => '?');
    throw new Error(`${what}: ${col} is ${JSON.stringify(got)}; engine output:\n${tail(engineOutput)}`, { cause: err });
  }
}

/** Waits until the move's row is in `section` (or gone, for null). */
async function waitSection(page, section, what, id = MOVE, timeout = 20_000) {
  try {
    await page.waitForFunction(
      ([i, sec]) => {
        const tr = document.querySelector(`#board tr[data-move-id="${i}"]`);
        return sec === null ? !tr : tr?.closest('table')?.dataset.section === sec;
      },
      [id, section],
      { timeout, polling: 200 },
    );
  } catch (err) {
    const got = await page.evaluate((i) => document.querySelector(`#board tr[data-move-id="${i}"]`)?.closest('table')?.dataset.section ?? 'none', id);
    throw new Error(`${what}: ${id} is in ${got}, not ${section}; engine output:\n${tail(engineOutput)}`, { cause: err });
  }
}

const DESKTOP = { width: 1600, height: 1000 };
const PHONE = { width: 390, height: 844 };

async function fitsPhone(page, name) {
  await page.setViewportSize(PHONE);
  await page.waitForTimeout(300);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= PHONE.width, `${name}: the page is ${width} px wide on a ${PHONE.width} px phone`);
}

test("the site's day: expected, on the way, arrived and outgoing, with names", { timeout: 240_000 }, async () => {
  // Booked for today (UTC), WDI → LEI, vehicle not yet known.
  const t0 = Date.now() - 16 * 60_000;
  const today = new Date(t0).toISOString().slice(0, 10);
  const book = async (id, reference, from, to, vehicle, status = 'booked') => {
    const journey = { id: `j-${id}`, from_location: from, to_location: to };
    if (vehicle) journey.vehicle_registration = vehicle;
    const put = await api('PUT', `/api/moves/${id}`, CONTROL, {
      reference, from_location: from, to_location: to, date: today, status, journeys: [journey],
    });
    assert.equal(put.status, 200, put.body);
  };
  await book(MOVE, 'BRD001', 'WDI', 'LEI', null);
  await book('m-board-later', 'BRD002', 'WDI', 'LEI', 'PLN1VAN');
  await book('m-board-out', 'OUT001', 'LEI', 'WYI', 'OUT1VAN');
  await book('m-board-cancel', 'CAN001', 'WDI', 'LEI', null);
  await book('m-board-redir', 'RED001', 'WDI', 'LEI', null);

  const { page, errors, messages } = await openPage(context);
  try {
    await page.setViewportSize(DESKTOP);
    await page.goto(`${origin}/site/LEI?token=${encodeURIComponent(LEI_TOKEN)}`, { waitUntil: 'load' });
    await page.getByRole('heading', { level: 1, name: /Site board: Leeds \(HMP\) \(LEI\)/ }).waitFor({ timeout: 15_000 });
    assert.ok(!page.url().includes(LEI_TOKEN), 'token left in the address bar');

    // Expected: booked, named, with its reference; the planned van when known.
    await waitSection(page, 'expected', 'the booked move under Expected');
    assert.equal(await cell(page, 'from').textContent(), 'Wakefield (HMP)');
    assert.equal(await cell(page, 'reference').textContent(), 'BRD001');
    assert.equal(await cell(page, 'vehicle').textContent(), 'Not yet known');
    assert.equal(await cell(page, 'supplier').textContent(), 'Not known');
    assert.equal(await cell(page, 'vehicle', 'm-board-later').textContent(), 'PLN1VAN');
    assert.match(await page.locator('#expected-caption').textContent(), /Expected today \(4\)/);
    // Outgoing: where it goes, by name.
    await waitSection(page, 'outgoing', 'the outgoing move', 'm-board-out');
    assert.equal(await cell(page, 'to', 'm-board-out').textContent(), 'Wetherby (HMYOI)');
    assert.equal(await cell(page, 'status', 'm-board-out').textContent(), 'Booked');
    assert.equal(await cell(page, 'departed', 'm-board-out').textContent(), 'Not left yet');
    assert.equal(await cell(page, 'reference', 'm-board-out').textContent(), 'OUT001');
    // No site codes where names are known.
    const places = await page.locator('#board [data-col="from"], #board [data-col="to"]').allTextContents();
    for (const p of places) assert.ok(!/^(WDI|LEI|WYI)$/.test(p), `a code on the board: ${p}`);
    await page.waitForFunction(() => document.querySelector('#connection-status')?.textContent === 'Live', null, { timeout: 15_000 });

    // A cancellation and a redirect elsewhere: both leave the board (their last frame).
    await book('m-board-cancel', 'CAN001', 'WDI', 'LEI', null, 'cancelled');
    await waitSection(page, null, 'the cancelled move leaving the board', 'm-board-cancel');
    await book('m-board-redir', 'RED001', 'WDI', 'WYI', null);
    await waitSection(page, null, 'the redirected move leaving the board', 'm-board-redir');
    assert.match(await page.locator('#expected-caption').textContent(), /\(2\)/);

    // The journey starts with our van: the board shows it on the way.
    const mqtt = await mqttConnect(mqttPort, SUPPLIER, MQTT_PASSWORD);
    const at = (s) => new Date(t0 + s * 1000).toISOString();
    await mqtt.publish(`movewatch/v1/${SUPPLIER}/${VAN}/events`, JSON.stringify({
      event_type: 'JourneyStart', occurred_at: at(0), move_id: MOVE, journey_id: 'j-board-1',
      details: { vehicle_reg: 'TB12 VAN' },
    }));
    await waitSection(page, 'ontheway', 'the move in transit');
    await waitCell(page, 'vehicle', new RegExp(`^${VAN}$`), 'the van matched by the journey start');

    // Parked in Wakefield's yard, then out and straight to Leeds at ~60 km/h.
    const fix = (i, s, [lat, lon], speed) => JSON.stringify({
      tracking_id: `brd-${i}`, tracking_timestamp: at(s), vehicle_registration: VAN,
      latitude: lat, longitude: lon, speed,
    });
    const topic = `movewatch/v1/${SUPPLIER}/${VAN}/positions`;
    await mqtt.publish(topic, fix(0, 10, SITES.WDI, 0));
    await mqtt.publish(topic, fix(1, 40, SITES.WDI, 0));
    const steps = 28;
    const along = (f) => [SITES.WDI[0] + (SITES.LEI[0] - SITES.WDI[0]) * f, SITES.WDI[1] + (SITES.LEI[1] - SITES.WDI[1]) * f];
    for (let i = 1; i <= 12; i++) await mqtt.publish(topic, fix(i + 1, 40 + 30 * i, along(i / steps), 60));

    // Live: an ETA counting down with its interval, the distance to go, the supplier, the van on the map list.
    await waitCell(page, 'eta', /In \d+ min|Due now/, 'an ETA on the board');
    await waitCell(page, 'distance', /\d+(\.\d)? km|\d+ m/, 'a distance on the board');
    await waitCell(page, 'supplier', new RegExp(`^${SUPPLIER}$`), 'the supplier of the van');
    assert.match(await cell(page, 'eta').textContent(), /at \d\d:\d\d, between \d\d:\d\d and \d\d:\d\d/);
    assert.equal(await cell(page, 'from').textContent(), 'Wakefield (HMP)');
    assert.equal(await cell(page, 'reference').textContent(), 'BRD001');
    await page.waitForFunction((van) => document.querySelector('#van-list')?.textContent.includes(van), VAN, { timeout: 10_000 });
    // The map draws the van, names the site it set out from, and the list says it in words.
    await page.waitForFunction((van) => (window.movewatchMap?.vans || []).some((v) => v.vehicle === van), VAN, { timeout: 10_000 });
    assert.match(await page.locator('#van-list').innerText(), new RegExp(`${VAN} — [\\d.]+ k?m from Leeds \\(HMP\\), from Wakefield \\(HMP\\), last report \\d\\d:\\d\\d`));
    const mapLabels = await page.evaluate(() => window.movewatchMap.labels);
    assert.ok(mapLabels.some((l) => l.kind === 'site' && l.text === 'Wakefield (HMP)'), `the origin is not named on the map: ${JSON.stringify(mapLabels)}`);
    const km = async () => Number.parseFloat((await cell(page, 'distance').textContent()).replace(/[^\d.]/g, ''));
    const before = await km();
    for (let i = 13; i <= 20; i++) await mqtt.publish(topic, fix(i + 1, 40 + 30 * i, along(i / steps), 60));
    await page.waitForFunction(
      ([id, b]) => {
        const t = document.querySelector(`#board tr[data-move-id="${id}"] [data-col="distance"]`)?.textContent || '';
        const v = Number.parseFloat(t.replace(/[^\d.]/g, ''));
        return Number.isFinite(v) && (t.endsWith(' m') || v < b);
      },
      [MOVE, before],
      { timeout: 20_000, polling: 200 },
    );
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-in-transit.png') });
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-day-desktop.png'), fullPage: true });
    assert.deepEqual(await seriousA11yViolations(page), [], 'axe: serious or critical violations on the board');

    // On a phone: no sideways scrolling, the tables become stacked rows.
    await fitsPhone(page, 'the board');
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-day-phone.png'), fullPage: true });
    assert.deepEqual(await seriousA11yViolations(page), [], 'axe: serious or critical violations on the board (phone)');
    await page.setViewportSize(DESKTOP);

    // Into LEI's fence: the board shows the arrival.
    for (let i = 21; i <= steps; i++) await mqtt.publish(topic, fix(i + 1, 40 + 30 * i, along(i / steps), i === steps ? 0 : 60));
    await mqtt.publish(topic, fix(99, 40 + 30 * steps + 30, SITES.LEI, 0));
    mqtt.close();
    await waitSection(page, 'arrived', 'the arrival on the board', MOVE, 30_000);
    await waitCell(page, 'arrived', /^\d\d:\d\d$/, 'the arrival time on the board');
    assert.equal(await cell(page, 'from').textContent(), 'Wakefield (HMP)');
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-arrived.png'), fullPage: true });

    // The link drops: Reconnecting…, then Offline while the browser is offline, and Live
    // again once it is back. Chromium logs each failed WebSocket with its URL: no token in it.
    const status = () => page.locator('#connection-status').textContent();
    const waitStatus = (re, what) => page.waitForFunction(
      (src) => new RegExp(src).test(document.querySelector('#connection-status')?.textContent || ''), re.source, { timeout: 20_000, polling: 100 },
    ).catch(async (err) => {
      throw new Error(`${what}: the status is ${JSON.stringify(await status())}`, { cause: err });
    });
    await page.evaluate(() => window.movewatchBoard.live.ws.close());
    await waitStatus(/^(Reconnecting…|Live)$/, 'a reconnect after the socket closed');
    await waitStatus(/^Live$/, 'live again after a reconnect');
    await context.setOffline(true);
    await page.evaluate(() => window.movewatchBoard.live.ws.close());
    await waitStatus(/^Offline$/, 'offline while the browser is');
    assert.match(await page.locator('#freshness').textContent(), /^Last update (just now|\d+ min ago)$/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-offline.png') });
    await context.setOffline(false);
    await waitStatus(/^Live$/, 'live again once back online');

    // The page's clock moved on 16 minutes with no frame since: the board says how old its
    // data is, and the arrival (more than 15 minutes ago now) leaves it.
    await page.evaluate(() => {
      const real = Date.now.bind(Date);
      Date.now = () => real() + 16 * 60_000;
    });
    await page.waitForFunction(() => /^Last update 1[56] min ago$/.test(document.querySelector('#freshness')?.textContent || '')
      && !document.querySelector('#freshness').hidden, null, { timeout: 10_000 });
    await waitSection(page, null, 'the arrival leaving the board after 15 minutes', MOVE, 5_000);

    assert.ok(!(await page.locator('body').innerText()).includes(LEI_TOKEN), 'token displayed on the page');
    const leaks = messages.filter((m) => m.includes(LEI_TOKEN) || m.includes(encodeURIComponent(LEI_TOKEN)));
    assert.deepEqual(leaks, [], 'the token in a console message or a logged URL');
    assert.ok(messages.some((m) => m.startsWith('websocket: ')), 'the board opened no WebSocket');
    // The failed reconnects while offline are the only errors allowed.
    const offline = /WebSocket connection to '[^']*' failed|ERR_INTERNET_DISCONNECTED|Failed to fetch/;
    assert.deepEqual(errors.filter((e) => !offline.test(e)), [], 'console errors or page errors');
  } finally {
    await page.close();
  }

  // The control room sees the van, and its move and track when it is chosen.
  const control = await openPage(context);
  try {
    await control.page.goto(`${origin}/control?token=${encodeURIComponent(CONTROL)}`, { waitUntil: 'load' });
    const pick = control.page.locator('#vehicle-table tbody').getByRole('button', { name: VAN });
    await pick.waitFor({ timeout: 15_000 });
    await pick.click();
    await control.page.getByRole('heading', { level: 2, name: `Vehicle ${VAN}` }).waitFor({ timeout: 5_000 });
    await control.page.waitForFunction(() => Number(document.querySelector('#detail-track')?.dataset.points) > 10, null, { timeout: 10_000 });
    // By its reference and the sites' names, never the move's id.
    await control.page.waitForFunction(() => /BRD001/.test(document.querySelector('#detail-moves')?.textContent || ''), null, { timeout: 10_000 });
    const details = await control.page.locator('#detail-moves').innerText();
    assert.match(details, /From\s+Wakefield \(HMP\)\s+To\s+Leeds \(HMP\)/);
    assert.ok(!details.includes(MOVE), 'the move id is not shown as its name');
    await control.page.screenshot({ path: path.join(ARTIFACTS, 'control-selected-vehicle.png') });
    assert.deepEqual(await seriousA11yViolations(control.page), [], 'axe: serious or critical violations on /control');
    await fitsPhone(control.page, '/control');
    await control.page.screenshot({ path: path.join(ARTIFACTS, 'control-phone.png'), fullPage: true });
    assert.deepEqual(await seriousA11yViolations(control.page), [], 'axe: serious or critical violations on /control (phone)');
    const leaks = control.messages.filter((m) => m.includes(CONTROL) || m.includes(encodeURIComponent(CONTROL)));
    assert.deepEqual(leaks, [], 'the token in a console message or a logged URL');
    assert.deepEqual(control.errors, [], 'console errors or page errors');
  } finally {
    await control.page.close();
  }
});

test("a site token cannot open another site's board", { timeout: 60_000 }, async () => {
  const { page, errors } = await openPage(context);
  try {
    await page.goto(`${origin}/site/LEI?token=${encodeURIComponent(WDI_TOKEN)}`, { waitUntil: 'load' });
    await page.getByRole('heading', { level: 2, name: 'You do not have access to this board' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.locator('#forbidden-site').textContent(), 'LEI');
    assert.equal(await page.locator('#live-section').isVisible(), false);
    assert.equal(await page.locator('#board tr[data-move-id]').count(), 0);
    const text = await page.locator('body').innerText();
    for (const leak of [VAN, MOVE, 'Leeds']) assert.ok(!text.includes(leak), `the forbidden page shows ${leak}`);
    assert.equal(await page.evaluate(() => window.movewatchBoard.moves.size + window.movewatchBoard.vehicles.size), 0);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'board-forbidden.png') });
    // The browser's console reports the 403 of the refused request; nothing else.
    assert.deepEqual(errors.filter((e) => !/403/.test(e)), [], 'console errors or page errors');
  } finally {
    await page.close();
  }
});

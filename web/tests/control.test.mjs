// The control room a control room would choose, against `movewatch demo`,
// at 1600×1000 and 390×844: alerts first (counts by kind, action and
// information, acknowledgement shared live with a second screen and kept
// across a reload), zoom and pan, clusters at low zoom, labels that never
// overlap, one search for the map and the table, the chosen van's details
// beside the map, no horizontal scroll on a phone, no token in any console
// message or request URL, axe-core clean; and the board's narrow columns
// never break a word at 1280 and 1600 px.
//
//   node --test web/tests/

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ARTIFACTS, openPage, seriousA11yViolations, startDemoBrowser, stopDemoBrowser, tail } from './harness.mjs';

const DESKTOP = { width: 1600, height: 1000 };
const PHONE = { width: 390, height: 844 };

let demo = null;
let context = null;
const tempDirs = [];
const seen = []; // every console message and request URL of every page

before(async () => {
  ({ demo, context } = await startDemoBrowser('movewatch-control-test-chromium-', tempDirs));
});

after(() => stopDemoBrowser({ demo, context }, tempDirs));

/** A page recording every request URL (but the one we typed) beside the console. */
async function open(size) {
  const p = await openPage(context);
  await p.page.setViewportSize(size);
  p.page.on('request', (req) => {
    if (!(req.isNavigationRequest() && req.url().includes('?token='))) seen.push(`request: ${req.url()}`);
  });
  return p;
}

async function openControl(size) {
  const p = await open(size);
  await p.page.goto(demo.controlUrl, { waitUntil: 'load' });
  await waitLive(p.page, p.errors);
  return p;
}

async function waitLive(page, errors) {
  try {
    await page.waitForFunction(
      () => document.querySelector('#connection-status')?.textContent === 'Live' && Number(document.querySelector('#vehicle-count')?.dataset.count) >= 30,
      null,
      { timeout: 30_000, polling: 250 },
    );
  } catch (err) {
    const status = await page.locator('#connection-status').textContent().catch(() => '?');
    const count = await page.locator('#vehicle-count').textContent().catch(() => '?');
    throw new Error(`the control room did not go live with the fleet (status ${status}, ${count}); errors ${JSON.stringify(errors)}; engine:\n${tail(demo.output())}`, { cause: err });
  }
}

/** page.waitForFunction, failing with what was awaited and the page's status. */
async function until(page, fn, arg, timeout, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (err) {
    const status = await page.locator('#connection-status').textContent().catch(() => '?');
    throw new Error(`${what} (within ${timeout} ms; status ${status})`, { cause: err });
  }
}

/** The map's drawing state after the next frames. */
async function mapState(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  return page.evaluate(() => {
    const m = window.movewatchMap;
    return { zoom: m.zoom, vans: m.vans, clusters: m.clusters, labels: m.labels, shown: [...window.movewatchState.shown].sort() };
  });
}

const drawnVehicles = (m) => [...m.vans.map((v) => v.vehicle), ...m.clusters.flatMap((c) => c.members)].sort();

function assertNoLabelOverlap(labels, where) {
  for (let i = 0; i < labels.length; i++) {
    for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i];
      const b = labels[j];
      const hit = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
      assert.ok(!hit, `${where}: labels overlap: ${JSON.stringify(a)} and ${JSON.stringify(b)}`);
    }
  }
}

async function tableVehicles(page) {
  await page.evaluate(() => new Promise((r) => setTimeout(r, 0)));
  return (await page.locator('#vehicle-tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.vehicle))).sort();
}

/** Waits until the table lists exactly the vans the map draws, and returns them. */
async function sameSet(page, what) {
  let last = null;
  try {
    await page.waitForFunction(
      () => {
        const m = window.movewatchMap;
        const drawnSet = [...m.vans.map((v) => v.vehicle), ...m.clusters.flatMap((c) => c.members)].sort();
        const rows = [...document.querySelectorAll('#vehicle-tbody tr')].map((tr) => tr.dataset.vehicle).sort();
        return drawnSet.length > 0 && JSON.stringify(drawnSet) === JSON.stringify(rows);
      },
      null,
      { timeout: 10_000, polling: 200 },
    );
  } catch (err) {
    last = { map: drawnVehicles(await mapState(page)), table: await tableVehicles(page) };
    throw new Error(`${what}: map and table differ: ${JSON.stringify(last)}`, { cause: err });
  }
  return tableVehicles(page);
}

test('control room at 1600×1000: alerts first, map zoom, pan, clusters, labels, search, details beside the map', { timeout: 240_000 }, async () => {
  const { page, errors, messages } = await openControl(DESKTOP);
  try {
    // The alert list leads the page: first in the live section, above the map.
    const firstSection = await page.evaluate(() => document.querySelector('#live-section').firstElementChild.id);
    assert.equal(firstSection, 'alerts');
    await page.getByRole('heading', { level: 2, name: 'Alerts' }).waitFor();
    const alertsBox = await page.locator('#alerts').boundingBox();
    const mapBox = await page.locator('#map').boundingBox();
    assert.ok(alertsBox.y < mapBox.y, 'alerts above the map');
    assert.ok(alertsBox.y < DESKTOP.height, 'alerts in view on opening');

    // "N vehicles live" counts only vans that reported in the last 5 minutes.
    await until(page, () => {
      const now = Date.now();
      const fresh = [...window.movewatchState.vehicles.values()].filter((p) => now - Date.parse(p.ts) <= 5 * 60 * 1000).length;
      return fresh === Number(document.querySelector('#vehicle-count').dataset.count);
    }, null, 10_000, '"N vehicles live" counts the vans heard from in the last 5 minutes');
    assert.match(await page.locator('#vehicle-count').innerText(), /^\d+ vehicles? live/);

    // Clusters at the whole-map zoom; every drawn van is in the table and back.
    let m = await mapState(page);
    assert.equal(m.zoom, 1);
    assert.ok(m.clusters.length >= 1, 'nearby vans grouped at low zoom');
    assert.ok(m.clusters.every((c) => c.count >= 2 && c.count === c.members.length));
    await sameSet(page, 'whole map');
    assertNoLabelOverlap(m.labels, 'whole map');
    assert.ok(m.labels.some((l) => l.kind === 'site'), 'place names from the site list on the map');
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-desktop-clusters.png') });

    // + zooms in around the centre; the wheel zooms; a drag pans.
    await page.locator('#map-wrap').evaluate((e) => e.scrollIntoView({ block: 'start' }));
    await page.getByRole('button', { name: 'Zoom in' }).click();
    m = await mapState(page);
    assert.equal(m.zoom, 2);
    const box = await page.locator('#map').boundingBox();
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.5);
    await page.mouse.wheel(0, -500);
    await until(page, () => window.movewatchMap.zoom > 2.1, null, 5_000, 'the wheel zooms in');
    // The map's origin, as drawn: a drag of (120, 60) moves it by that much
    // (vans and labels move with it, but they also move, appear and
    // declutter on their own while the fleet drives).
    const before = await page.evaluate(() => ({ ox: window.movewatchMap.ox, oy: window.movewatchMap.oy }));
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.5 + 120, box.y + box.height * 0.5 + 60, { steps: 6 });
    await page.mouse.up();
    const panned = await mapState(page);
    const after = await page.evaluate(() => ({ ox: window.movewatchMap.ox, oy: window.movewatchMap.oy }));
    const moved = { x: after.ox - before.ox, y: after.oy - before.oy };
    assert.ok(Math.abs(moved.x - 120) < 2 && Math.abs(moved.y - 60) < 2, `the drag moved the map by (120, 60): moved ${JSON.stringify(moved)}`);
    assertNoLabelOverlap(panned.labels, 'zoomed and panned');
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-desktop-zoomed.png') });

    // Zoomed right in, no van is grouped any more.
    await page.getByRole('button', { name: 'Whole map' }).click();
    for (let i = 0; i < 6; i++) await page.getByRole('button', { name: 'Zoom in' }).click();
    m = await mapState(page);
    assert.equal(m.zoom, 64);
    assert.equal(m.clusters.length, 0, 'no clusters at close zoom');
    assertNoLabelOverlap(m.labels, 'close zoom');
    await page.getByRole('button', { name: 'Whole map' }).click();
    assert.equal((await mapState(page)).zoom, 1);

    // Search: by supplier, by site name, by reference — the map and the table agree.
    await page.waitForFunction(() => window.movewatchState.suppliers.size >= 10, null, { timeout: 15_000 });
    const search = page.getByLabel('Find vehicles');
    await search.fill('serco');
    const serco = await sameSet(page, 'supplier serco');
    const all = await page.evaluate(() => window.movewatchState.vehicles.size);
    assert.ok(serco.length >= 1 && serco.length < all, `serco finds some vans, not all (${serco.length} of ${all})`);
    for (const v of serco) assert.equal(await page.evaluate((x) => window.movewatchState.suppliers.get(x), v), 'serco');
    assertNoLabelOverlap((await mapState(page)).labels, 'search serco');
    await search.fill('Leeds');
    const leeds = await sameSet(page, 'site name Leeds');
    assert.ok(leeds.length >= 1, 'vans going to or from a Leeds site');
    await search.fill('');
    await until(page, () => document.querySelectorAll('#vehicle-tbody tr').length >= 30, null, 5_000, 'every van back in the table once the search is cleared');
    const reference = await page.evaluate(() => {
      for (const [v, pos] of window.movewatchState.vehicles) {
        for (const id of pos.move_ids) {
          const ref = window.movewatchState.references.get(id);
          if (ref) return { v, ref };
        }
      }
      return null;
    });
    assert.ok(reference, 'a van on a move with a reference');
    await search.fill(reference.ref);
    const byRef = await sameSet(page, `reference ${reference.ref}`);
    assert.ok(byRef.includes(reference.v), `${reference.ref} finds ${reference.v}: ${byRef}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-desktop-search.png') });

    // The chosen van's details are beside the map, in view, with names.
    await page.locator('#vehicle-tbody').getByRole('button', { name: reference.v }).click();
    await page.getByRole('heading', { level: 2, name: `Vehicle ${reference.v}` }).waitFor();
    await page.waitForFunction(() => /stored reports|No stored reports|could not/.test(document.querySelector('#detail-track').textContent), null, { timeout: 10_000 });
    const detailBox = await page.locator('#vehicle-detail').boundingBox();
    const map2 = await page.locator('#map').boundingBox();
    assert.ok(detailBox.x >= map2.x + map2.width - 1, `details beside the map (detail x ${detailBox.x}, map right ${map2.x + map2.width})`);
    assert.ok(detailBox.y < map2.y + map2.height && detailBox.y + 40 > map2.y - 40, 'details level with the map');
    const vp = await page.evaluate(() => ({ top: document.querySelector('#vehicle-detail').getBoundingClientRect().top, h: innerHeight }));
    assert.ok(vp.top >= 0 && vp.top < vp.h, 'details within the viewport');
    const detail = await page.locator('#vehicle-detail').innerText();
    assert.ok(detail.includes(reference.ref), 'the move reference');
    assert.match(detail, /Supplier\s+(geoamey|serco)/);
    assert.match(detail, /From\s+\S.*\n?\s*To\s+\S/);
    assert.doesNotMatch(detail, /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-/i, 'no raw UUIDs');
    assert.doesNotMatch(detail, /-?\d{1,3}\.\d{4,}/, 'no raw coordinates');
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-desktop-details.png') });
    await search.fill('');

    assert.deepEqual(await seriousA11yViolations(page), [], 'axe at 1600×1000');
    assert.deepEqual(errors, [], 'console or page errors');
    assert.ok(!messages.some((x) => x.includes('token=')), `token in a console message: ${messages.filter((x) => x.includes('token='))}`);
  } finally {
    await page.close();
  }
});

test('an acknowledgement shows on a second control-room screen at once, and after a reload', { timeout: 180_000 }, async () => {
  const one = await openControl(DESKTOP);
  const two = await openControl(DESKTOP);
  try {
    // The demo's vans raise alerts (arriving within 30 minutes, stops, gaps).
    await one.page.waitForFunction(() => document.querySelectorAll('#alert-list li button.button').length > 0, null, { timeout: 120_000, polling: 500 });
    // Counts by kind add up to the alerts held, with severity classes.
    const tally = await one.page.evaluate(() => ({
      counts: [...document.querySelectorAll('#alert-counts li')].map((li) => ({ kind: li.dataset.kind, n: Number(li.dataset.count), cls: li.className })),
      alerts: window.movewatchState.alerts.length,
    }));
    assert.equal(tally.counts.reduce((s, c) => s + c.n, 0), tally.alerts);
    for (const c of tally.counts) assert.match(c.cls, c.kind === 'arriving_30' ? /alert-count--info/ : /alert-count--action/);

    // Without a name, acknowledging asks for one.
    const item = one.page.locator('#alert-list li').filter({ has: one.page.locator('button.button') }).first();
    const key = await item.getAttribute('data-key');
    await one.page.getByLabel('Your name, for acknowledging alerts').fill('');
    await item.locator('button.button').click();
    await one.page.getByText('Enter your name to acknowledge an alert').waitFor();
    await one.page.getByLabel('Your name, for acknowledging alerts').fill('Sam Operator');
    await one.page.locator(`#alert-list li[data-key="${key}"] button.button`).click();
    await one.page.locator(`#alert-list li[data-key="${key}"] .alert__ack`).waitFor({ timeout: 10_000 });
    assert.match(await one.page.locator(`#alert-list li[data-key="${key}"] .alert__ack`).innerText(), /^Acknowledged by Sam Operator at \d\d:\d\d/);

    // The second screen is told live (no reload); all alerts shown.
    const showAll = async (page) => {
      const more = page.locator('#alert-more');
      if ((await more.isVisible()) && (await more.getAttribute('aria-expanded')) === 'false') await more.click();
    };
    await showAll(two.page);
    await two.page.waitForFunction((k) => document.querySelector(`#alert-list li[data-key="${k}"] .alert__ack`)?.textContent.includes('Sam Operator'), key, { timeout: 10_000 });
    await two.page.screenshot({ path: path.join(ARTIFACTS, 'control-ack-second-screen.png') });
    // And after a reload it reads it back from the engine.
    await two.page.reload({ waitUntil: 'load' });
    await waitLive(two.page, two.errors);
    await two.page.waitForFunction(() => document.querySelectorAll('#alert-list li').length > 0, null, { timeout: 10_000 });
    await showAll(two.page);
    await two.page.waitForFunction((k) => document.querySelector(`#alert-list li[data-key="${k}"] .alert__ack`)?.textContent.includes('Sam Operator'), key, { timeout: 15_000 });
    assert.deepEqual(one.errors, []);
    assert.deepEqual(two.errors, []);
  } finally {
    await one.page.close();
    await two.page.close();
  }
});

test('control room and board at 390×844: no horizontal scroll, axe clean; reconnects print no token', { timeout: 180_000 }, async () => {
  const { page, errors, messages } = await openControl(PHONE);
  try {
    await page.waitForFunction(() => document.querySelectorAll('#vehicle-tbody tr').length >= 30, null, { timeout: 10_000 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `control room scrolls sideways: ${width}px`);
    const m = await mapState(page);
    assert.ok(m.clusters.length >= 1, 'clusters on the phone map');
    assertNoLabelOverlap(m.labels, 'phone');
    await sameSet(page, 'phone');
    await page.screenshot({ path: path.join(ARTIFACTS, 'control-phone-390.png'), fullPage: true });
    assert.deepEqual(await seriousA11yViolations(page), [], 'axe at 390×844');

    // A dropped network: failed reconnects, then back. Nothing printed holds the token.
    // Every status shown is recorded: the page may reconnect before a poll
    // would see the short-lived "Reconnecting…".
    await page.evaluate(() => {
      const el = document.querySelector('#connection-status');
      window.statusSeen = [el.textContent];
      new MutationObserver(() => window.statusSeen.push(el.textContent)).observe(el, { childList: true, characterData: true, subtree: true });
    });
    await context.setOffline(true);
    await page.evaluate(() => window.movewatchControl.live.ws.close());
    await until(page, () => window.statusSeen.some((s) => /^(Offline|Reconnecting…)$/.test(s)), null, 30_000, 'the page notices the dropped link');
    await context.setOffline(false);
    await waitLive(page, errors);
    const leaks = messages.filter((x) => x.includes('token=') || x.includes(demo.token));
    assert.deepEqual(leaks, [], 'token in a console message');
    assert.ok(messages.some((x) => x.startsWith('websocket: ')), 'the WebSocket URLs were recorded');
  } finally {
    await context.setOffline(false);
    await page.close();
  }

  const board = await open(PHONE);
  try {
    await board.page.goto(demo.boardUrl, { waitUntil: 'load' });
    await board.page.waitForFunction(() => document.querySelector('#connection-status')?.textContent === 'Live', null, { timeout: 30_000 });
    const width = await board.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= PHONE.width, `board scrolls sideways: ${width}px`);
    assert.deepEqual(await seriousA11yViolations(board.page), [], 'board axe at 390×844');
  } finally {
    await board.page.close();
  }
});

test('the board never breaks a word in its narrow columns at 1280 and 1600 px', { timeout: 120_000 }, async () => {
  for (const width of [1280, 1600]) {
    const { page, errors } = await open({ width, height: 1000 });
    try {
      await page.goto(demo.boardUrl, { waitUntil: 'load' });
      await page.waitForFunction(() => document.querySelectorAll('#board tbody tr').length >= 2 && [...document.querySelectorAll('[data-col="supplier"]')].some((td) => /\w/.test(td.textContent)), null, { timeout: 60_000, polling: 500 });
      // A word laid out on two lines has two line boxes for its own range.
      const broken = await page.evaluate(() => {
        const out = [];
        for (const cell of document.querySelectorAll('#board tbody td, #board tbody th')) {
          const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
          for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (const m of node.textContent.matchAll(/\S+/g)) {
              const r = document.createRange();
              r.setStart(node, m.index);
              r.setEnd(node, m.index + m[0].length);
              const tops = new Set([...r.getClientRects()].filter((b) => b.width > 0).map((b) => Math.round(b.top)));
              if (tops.size > 1) out.push(m[0]);
            }
          }
        }
        return out;
      });
      assert.deepEqual(broken, [], `words broken across lines at ${width} px`);
      const suppliers = await page.locator('[data-col="supplier"]').allInnerTexts();
      assert.ok(suppliers.some((s) => /geoamey|serco/.test(s)), `suppliers on the board: ${suppliers}`);
      await page.screenshot({ path: path.join(ARTIFACTS, `board-${width}.png`), fullPage: true });
      assert.deepEqual(await seriousA11yViolations(page), [], `board axe at ${width}`);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  }
  const leaks = seen.filter((x) => x.includes('token=') || x.includes(demo.token) || x.includes(demo.siteToken));
  assert.deepEqual(leaks, [], 'token in a request URL');
  assert.ok(seen.some((x) => x.includes('/api/alerts/ack')), 'the acknowledgement request was recorded');
});

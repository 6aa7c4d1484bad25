// The board's map (/site/LEI against `movewatch demo`), at 1600×1000 and
// 390×844: drawn by the map layer the control room shares (web/map.js), it
// shows exactly the vans of the "On the way" table, labels that never
// overlap nor leave the canvas (the site's own name always among them), a
// key, and a text alternative in names — never coordinates; the page does
// not scroll sideways and the map fits; axe-core finds nothing serious.
//
//   node --test web/tests/

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { ARTIFACTS, openPage, seriousA11yViolations, startDemoBrowser, stopDemoBrowser, tail } from './harness.mjs';

const SIZES = [
  { name: 'desktop', width: 1600, height: 1000 },
  { name: 'phone', width: 390, height: 844 },
];

let demo = null;
let context = null;
const tempDirs = [];

before(async () => {
  ({ demo, context } = await startDemoBrowser('movewatch-board-map-chromium-', tempDirs));
});

after(() => stopDemoBrowser({ demo, context }, tempDirs));

/** What the board's map drew and what the page says, read in one go. */
function snapshot() {
  const m = window.movewatchMap;
  const table = [...document.querySelectorAll('#ontheway-tbody [data-col="vehicle"]')].map((td) => td.textContent);
  const canvas = document.querySelector('#board-map').getBoundingClientRect();
  return {
    width: m.width,
    height: m.height,
    labels: m.labels,
    drawn: m.vans.map((v) => v.vehicle).sort(),
    table: table.filter((v) => v !== 'Not yet known').sort(),
    listed: [...document.querySelectorAll('#van-list li[data-vehicle]')].map((li) => li.dataset.vehicle).filter(Boolean).sort(),
    list: document.querySelector('#van-list').innerText,
    key: [...document.querySelectorAll('#board-map-key li')].map((li) => ({ symbol: li.dataset.symbol, text: li.textContent })),
    canvas: { left: canvas.left, right: canvas.right, width: canvas.width, height: canvas.height },
    scrollWidth: document.documentElement.scrollWidth,
  };
}

for (const size of SIZES) {
  test(`the board's map at ${size.width}×${size.height}: the On the way vans, labels apart, a key, words not coordinates`, { timeout: 120_000 }, async () => {
    const { page, errors } = await openPage(context);
    try {
      await page.setViewportSize({ width: size.width, height: size.height });
      await page.goto(demo.boardUrl, { waitUntil: 'load' });
      await page.getByRole('heading', { level: 1, name: /Site board: Leeds \(HMP\)/ }).waitFor({ timeout: 20_000 });
      // Live, with vans on the way, and the map drawing exactly the table's vans.
      try {
        await page.waitForFunction(
          () => {
            const m = window.movewatchMap;
            if (document.querySelector('#connection-status')?.textContent !== 'Live' || !m) return false;
            const drawnSet = m.vans.map((v) => v.vehicle).sort();
            const rows = [...document.querySelectorAll('#ontheway-tbody [data-col="vehicle"]')]
              .map((td) => td.textContent).filter((v) => v !== 'Not yet known').sort();
            return drawnSet.length > 0 && JSON.stringify(drawnSet) === JSON.stringify(rows);
          },
          null,
          { timeout: 45_000, polling: 250 },
        );
      } catch (err) {
        const got = await page.evaluate(snapshot).catch(() => null);
        throw new Error(`the map never drew the On the way vans: ${JSON.stringify(got)}; demo:\n${tail(demo.output())}`, { cause: err });
      }
      const s = await page.evaluate(snapshot);

      // The vans drawn are the table's, and the list in words names the same.
      assert.deepEqual(s.drawn, s.table, 'the map and the On the way table show different vans');
      assert.deepEqual(s.listed, s.table, 'the text alternative and the On the way table name different vans');

      // Labels: the site's own, never overlapping, never off the canvas.
      assert.ok(s.labels.some((l) => l.kind === 'home' && l.text === 'Leeds (HMP)'), `no label for the site itself: ${JSON.stringify(s.labels)}`);
      for (let i = 0; i < s.labels.length; i++) {
        const a = s.labels[i];
        assert.ok(a.x >= 0 && a.y >= 0 && a.x + a.w <= s.width && a.y + a.h <= s.height, `a label runs off the ${s.width}×${s.height} map: ${JSON.stringify(a)}`);
        for (let j = i + 1; j < s.labels.length; j++) {
          const b = s.labels[j];
          const hit = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
          assert.ok(!hit, `labels overlap: ${JSON.stringify(a)} and ${JSON.stringify(b)}`);
        }
      }
      assert.ok(s.labels.some((l) => l.kind === 'van'), 'no van is labelled');

      // The key: this prison, the vans on their way, where they set out from.
      const symbols = s.key.map((k) => k.symbol);
      for (const want of ['home', 'onMove', 'origin']) assert.ok(symbols.includes(want), `the key has no ${want}: ${JSON.stringify(s.key)}`);
      assert.match(s.key.find((k) => k.symbol === 'home').text, /Leeds \(HMP\)/);

      // The text alternative: names and distances, never raw coordinates.
      assert.doesNotMatch(s.list, /-?\d{1,3}\.\d{3,}/, `coordinates in the text alternative: ${s.list}`);
      for (const line of s.list.split('\n').filter(Boolean)) {
        assert.match(line, /^[A-Z0-9]+ — .+ from Leeds \(HMP\).*, from .+, (last report \d\d:\d\d|no report yet)/, `a van not described in words: ${line}`);
      }

      // It fits: no sideways scroll, the map inside the viewport's width and height.
      assert.ok(s.scrollWidth <= size.width, `the page is ${s.scrollWidth} px wide at ${size.width} px`);
      assert.ok(s.canvas.left >= 0 && s.canvas.right <= size.width, `the map runs off the screen: ${JSON.stringify(s.canvas)}`);
      assert.ok(s.canvas.height <= size.height && s.canvas.width >= 200, `the map does not fit: ${JSON.stringify(s.canvas)}`);

      await page.locator('#board-map-heading').scrollIntoViewIfNeeded();
      await page.locator('aside[aria-labelledby="board-map-heading"]').screenshot({ path: path.join(ARTIFACTS, `board-map-${size.name}.png`) });
      assert.deepEqual(await seriousA11yViolations(page), [], `axe: serious or critical violations on the board (${size.name})`);
      assert.deepEqual(errors, [], 'console errors or page errors');
    } finally {
      await page.close();
    }
  });
}

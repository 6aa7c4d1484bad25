// movewatch — a site's board (/site/{id}): the site's day.
//
// Four tables: Expected (booked to come here today, not left yet), On the way
// (with a countdown, the estimate's range and the distance to go), Arrived
// (the last 15 minutes) and Outgoing (moves leaving from here). Sites are
// named, not coded: the names come from GET /api/sites/{id}/incoming (which
// also answers whether this token may see the site at all: 401 → the token
// form, 403 → a forbidden message and no data); the WebSocket channel
// `site:{id}` then keeps the board live. The small map (web/map.js, the layer
// the control room uses too) shows the site, exactly the vans On the way and
// where they set out from; the list under it says the same in words.

import {
  LiveConnection, authHeaders, countdown, distance, forgetToken, formatTime, hideNotice, readToken, saveToken, setText, showNotice,
} from '/common.js';
import { HOME_FONT, LABEL_FONT, MapView, STALE_MS, VAN_R, kmBetween, loadBasemap, renderKey } from '/map.js';

const REFRESH_MS = 30_000; // re-read the board (moves leave it 15 min after arrival)
const ARRIVED_KEPT_MS = 15 * 60_000;

const STATUS_NAMES = { booked: 'Booked', in_transit: 'On the way', arrived: 'Arrived', completed: 'Completed', cancelled: 'Cancelled' };

/** The board's sections, in page order, and their columns. */
const SECTIONS = {
  expected: ['reference', 'from', 'vehicle', 'supplier'],
  ontheway: ['eta', 'vehicle', 'from', 'distance', 'reference', 'supplier'],
  arrived: ['arrived', 'vehicle', 'from', 'reference'],
  outgoing: ['to', 'status', 'reference', 'vehicle', 'departed'],
};
const LABELS = {
  reference: 'Reference', from: 'From', to: 'To', vehicle: 'Vehicle', supplier: 'Supplier', eta: 'Expected arrival',
  distance: 'Distance to go', arrived: 'Arrived at', status: 'Status', departed: 'Departed',
};
/** The column that names a row (a row header, `scope="row"`). */
const ROW_HEADER = { expected: 'reference', ontheway: 'eta', arrived: 'arrived', outgoing: 'to' };

/** Exposed for tests. */
const state = {
  site: null, // { id, name, lat, lon, ... }
  moves: new Map(), // move id -> the REST move merged with the frames since
  vehicles: new Map(), // registration -> { vehicle, lat, lon, speed_kmh, ts }
  connection: 'Not connected',
  forbidden: false,
};
window.movewatchBoard = state;

const $ = (id) => document.getElementById(id);
const el = {
  heading: $('board-heading'),
  status: $('connection-status'),
  freshness: $('freshness'),
  count: $('move-count'),
  notice: $('notice'),
  forbidden: $('forbidden'),
  forbiddenSite: $('forbidden-site'),
  forbiddenToken: $('forbidden-token'),
  tokenSection: $('token-section'),
  tokenForm: $('token-form'),
  tokenGroup: $('token-group'),
  tokenInput: $('token-input'),
  tokenError: $('token-error'),
  tokenErrorText: $('token-error-text'),
  live: $('live-section'),
  wrap: $('board-map-wrap'),
  canvas: $('board-map'),
  vanList: $('van-list'),
  key: $('board-map-key'),
};
for (const key of Object.keys(SECTIONS)) {
  el[key] = { tbody: $(`${key}-tbody`), empty: $(`${key}-empty`), count: $(`${key}-count`) };
}

const siteId = (() => {
  const m = /^\/site\/([^/]+)\/?$/.exec(location.pathname);
  try {
    return m ? decodeURIComponent(m[1]).toUpperCase() : '';
  } catch {
    return '';
  }
})();

let token = null;
let running = false;
let refreshTimer = null;
let tickTimer = null;
let refetchTimer = null;
const suppliersAsked = new Set(); // vans whose supplier was re-read on their first fix

// ---------------------------------------------------------------------------
// The board

/** A site's name when the board has been told it, else its code. */
function siteName(m, end) {
  const code = end === 'from' ? m.from_location : m.to_location;
  const name = end === 'from' ? m.from_name : m.to_name;
  if (name) return name;
  if (state.site && code === state.site.id) return state.site.name;
  return code || 'Not known';
}

/** Re-reads the board soon (a frame named a move or a site it does not know). */
function refetchSoon() {
  if (refetchTimer || !running) return;
  refetchTimer = setTimeout(async () => {
    refetchTimer = null;
    if (!running) return;
    const r = await loadBoard();
    if (r === 'rejected') tokenRejected();
    else if (r === 'forbidden') showForbidden();
  }, 300);
}

/**
 * Merges a move (from REST or a frame) into the board. A cancellation, or a
 * redirect that takes an incoming move elsewhere, is the last frame this site
 * gets of it: the move leaves the board.
 */
function mergeMove(m, fromRest = false) {
  if (!m || typeof m.move_id !== 'string') return;
  const direction = m.to_location === siteId ? 'incoming' : m.from_location === siteId ? 'outgoing' : null;
  if (m.status === 'cancelled' || !direction) {
    state.moves.delete(m.move_id);
    return;
  }
  const old = state.moves.get(m.move_id);
  const merged = { ...(old || {}), ...m, direction };
  // Names learned from REST stay, unless the frame moved that end elsewhere.
  if (!fromRest && old) {
    if (old.to_location !== m.to_location) {
      delete merged.to_name;
      refetchSoon();
    }
    if (old.from_location !== m.from_location) {
      delete merged.from_name;
      refetchSoon();
    }
  }
  if (!fromRest && !old) refetchSoon(); // a move we do not know: its names, reference and supplier
  if (!fromRest && old && m.vehicle && old.vehicle !== m.vehicle) refetchSoon(); // its van's supplier
  if (!fromRest && (m.status === 'arrived' || m.status === 'completed') && !merged.arrived_at) refetchSoon();
  state.moves.set(m.move_id, merged);
}

/** Which table a move belongs in, or null once it should leave the board. */
function sectionOf(m, now) {
  if (m.direction === 'outgoing') return 'outgoing';
  if (m.status === 'arrived' || m.status === 'completed' || m.arrived_at) {
    const at = Date.parse(m.arrived_at);
    if (Number.isFinite(at) && now - at > ARRIVED_KEPT_MS) return null;
    return 'arrived';
  }
  if (m.status === 'booked') return 'expected';
  return 'ontheway';
}

function byTime(key) {
  return (a, b) => {
    const ta = Date.parse(a[key]) || Infinity;
    const tb = Date.parse(b[key]) || Infinity;
    return ta - tb || (a.move_id < b.move_id ? -1 : 1);
  };
}

const ORDER = {
  expected: (a, b) => String(a.reference || a.move_id).localeCompare(String(b.reference || b.move_id)),
  ontheway: byTime('eta'),
  arrived: (a, b) => -byTime('arrived_at')(a, b), // latest first
  outgoing: (a, b) => {
    const rank = (m) => ({ in_transit: 0, booked: 1 })[m.status] ?? 2;
    return rank(a) - rank(b) || byTime('departed_at')(a, b);
  },
};

const rows = new Map(); // move id -> { section, tr, cells }

function fill(c, m) {
  const known = (v, missing = 'Not known') => (v === null || v === undefined || v === '' ? missing : String(v));
  if (c.reference) setText(c.reference, known(m.reference, m.move_id));
  if (c.from) setText(c.from, siteName(m, 'from'));
  if (c.to) setText(c.to, siteName(m, 'to'));
  if (c.vehicle) setText(c.vehicle, known(m.vehicle, 'Not yet known'));
  if (c.supplier) setText(c.supplier, known(m.supplier));
  if (c.status) setText(c.status, STATUS_NAMES[m.status] || known(m.status));
  if (c.departed) setText(c.departed, m.departed_at ? formatTime(m.departed_at) : 'Not left yet');
  if (c.arrived) setText(c.arrived, formatTime(m.arrived_at));
  if (c.distance) setText(c.distance, distance(m.distance_remaining_m));
  if (c.eta) {
    const text = m.eta ? countdown(m.eta) : 'Not known';
    const range = m.eta && m.eta_low && m.eta_high ? `, between ${formatTime(m.eta_low)} and ${formatTime(m.eta_high)}` : '';
    const at = m.eta ? `at ${formatTime(m.eta)}${range}` : '';
    const wanted = `${text}|${at}`;
    if (c.eta.dataset.shown !== wanted) {
      c.eta.dataset.shown = wanted;
      const strong = document.createElement('span');
      strong.className = 'countdown';
      strong.textContent = text;
      const parts = [strong];
      if (at) {
        const span = document.createElement('span');
        span.className = 'interval';
        span.textContent = at;
        parts.push(span);
      }
      const box = document.createElement('div');
      box.append(...parts);
      c.eta.replaceChildren(box);
    }
  }
}

function newRow(id, section) {
  const tr = document.createElement('tr');
  tr.dataset.moveId = id;
  tr.dataset.section = section;
  const cells = {};
  for (const col of SECTIONS[section]) {
    const header = ROW_HEADER[section] === col;
    const cell = document.createElement(header ? 'th' : 'td');
    if (header) cell.scope = 'row';
    if (col === 'distance') cell.className = 'numeric';
    cell.dataset.col = col;
    cell.dataset.label = LABELS[col];
    tr.appendChild(cell);
    cells[col] = cell;
  }
  return { section, tr, cells };
}

function render() {
  const now = Date.now();
  const grouped = { expected: [], ontheway: [], arrived: [], outgoing: [] };
  for (const m of state.moves.values()) {
    const section = sectionOf(m, now);
    if (section) grouped[section].push(m);
    else state.moves.delete(m.move_id); // arrived more than 15 minutes ago
  }
  for (const [id, r] of rows) {
    const m = state.moves.get(id);
    if (!m || sectionOf(m, now) !== r.section) {
      r.tr.remove();
      rows.delete(id);
    }
  }
  let total = 0;
  for (const [section, list] of Object.entries(grouped)) {
    list.sort(ORDER[section]);
    const frag = document.createDocumentFragment();
    for (const m of list) {
      let r = rows.get(m.move_id);
      if (!r) {
        r = newRow(m.move_id, section);
        rows.set(m.move_id, r);
      }
      fill(r.cells, m);
      frag.appendChild(r.tr);
    }
    el[section].tbody.appendChild(frag);
    el[section].empty.hidden = list.length > 0;
    setText(el[section].count, `(${list.length})`);
    total += list.length;
  }
  const incoming = grouped.expected.length + grouped.ontheway.length;
  const text = total === 0
    ? 'Nothing on the board'
    : `${grouped.ontheway.length} on the way, ${grouped.expected.length} expected, ${grouped.arrived.length} arrived, ${grouped.outgoing.length} outgoing`;
  el.count.dataset.count = String(incoming);
  setText(el.count, text);

  onTheWay = grouped.ontheway;
  describeVans();
  draw();
}

// ---------------------------------------------------------------------------
// The small map: the site, exactly the vans of "On the way", and the sites
// they set out from, fitted to show them all. Its text alternative (the list
// under it) names the same vans in words.

let onTheWay = []; // the moves of the On the way table, in its order
const map = new MapView(el.canvas, { minZoom: 1, maxZoom: 400 });
const drawn = map.drawn;
let sitesKey = '';
let keyFor = '';

/** The vans to draw: one per vehicle of an On the way move that has a position. */
function vansOnTheWay() {
  const out = new Map();
  for (const m of onTheWay) {
    const pos = m.vehicle && state.vehicles.get(m.vehicle);
    if (!pos || out.has(m.vehicle) || !Number.isFinite(Number(pos.lat)) || !Number.isFinite(Number(pos.lon))) continue;
    out.set(m.vehicle, { vehicle: m.vehicle, lat: Number(pos.lat), lon: Number(pos.lon), ts: pos.ts, move: m });
  }
  return [...out.values()];
}

/** The sites the On the way moves set out from (their public locations). */
function originsOnTheWay() {
  const out = new Map();
  for (const m of onTheWay) {
    const lat = Number(m.from_lat);
    const lon = Number(m.from_lon);
    if (m.from_lat === null || m.from_lat === undefined || !Number.isFinite(lat) || !Number.isFinite(lon)) continue;
    if (m.from_location === state.site?.id) continue;
    out.set(m.from_location, { id: m.from_location, name: siteName(m, 'from'), lat, lon, cls: 'origin' });
  }
  return [...out.values()];
}

function draw() {
  const rect = el.wrap.getBoundingClientRect();
  map.setSize(Math.max(1, Math.floor(rect.width)), Math.max(1, Math.floor(rect.height)));
  const site = state.site;
  if (!site) {
    map.beginFrame();
    drawn.vans = [];
    map.drawLabels([]);
    return;
  }
  const vans = vansOnTheWay();
  const origins = originsOnTheWay();
  const home = { ...site, lat: Number(site.lat), lon: Number(site.lon), cls: 'home' };
  const key = JSON.stringify([home.id, ...origins.map((o) => o.id)]);
  if (key !== sitesKey) {
    sitesKey = key;
    map.setSites([home, ...origins]);
  }
  map.fitTo([[home.lon, home.lat], ...vans.map((v) => [v.lon, v.lat]), ...origins.map((o) => [o.lon, o.lat])], { pad: 36, minKm: 20 });
  const ctx = map.beginFrame();
  const [x0, y0] = map.project(home.lon, home.lat);
  // The site's fence, when it is a circle.
  if (Number(site.radius_m) > 0) {
    ctx.beginPath();
    ctx.arc(x0, y0, (Number(site.radius_m) / 111_195) * map.view.scale, 0, Math.PI * 2);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = '#0b0c0c';
    ctx.stroke();
  }
  const wall = Date.now();
  const marks = vans.map((v) => {
    const [x, y] = map.project(v.lon, v.lat);
    const t = Date.parse(v.ts);
    return { vehicle: v.vehicle, x, y, group: Number.isFinite(t) && wall - t <= STALE_MS ? 'onMove' : 'stale' };
  });
  map.drawVans(marks);

  // Labels: the site's own name first (always: it is placed before anything
  // else, beside its mark, inside the canvas), then the vans soonest first,
  // then the places they set out from; a label that fits nowhere is left out.
  const taken = [{ x: x0 - 9, y: y0 - 9, w: 18, h: 18 }];
  for (const m of marks) taken.push({ x: m.x - VAN_R, y: m.y - VAN_R, w: VAN_R * 2, h: VAN_R * 2 });
  for (const o of origins) {
    const [x, y] = map.project(o.lon, o.lat);
    taken.push({ x: x - 6, y: y - 6, w: 12, h: 12 });
  }
  const labels = [];
  const homeText = site.name || site.id;
  const hw = map.textWidth(homeText, HOME_FONT) + 6;
  const homeBox = map.placeLabel(taken, x0, y0, 9, hw, 18)
    || map.placeLabel(taken.slice(0, 1), x0, y0, 9, hw, 18) || {
    x: Math.min(Math.max(0, x0 + 12), map.view.cssW - hw), y: Math.min(Math.max(0, y0 - 9), map.view.cssH - 18), w: hw, h: 18,
  };
  taken.push(homeBox);
  labels.push({ ...homeBox, text: homeText, kind: 'home' });
  for (const m of marks) {
    const box = map.placeLabel(taken, m.x, m.y, VAN_R, map.textWidth(m.vehicle, LABEL_FONT) + 6);
    if (!box) continue;
    taken.push(box);
    labels.push({ ...box, text: m.vehicle, kind: 'van' });
  }
  map.placeSiteLabels(taken, labels, (s) => s.cls === 'origin');
  drawn.vans = marks.map(({ vehicle, x, y }) => ({ vehicle, x, y }));
  drawn.clusters = [];
  map.drawLabels(labels);
}

/** The map's text alternative: each van On the way in words, never coordinates. */
function describeVans() {
  const site = state.site;
  if (site && keyFor !== site.id) {
    keyFor = site.id;
    renderKey(el.key, [
      ['home', `${site.name || site.id}: this site`],
      ['onMove', 'Van on its way here'],
      ['stale', 'Van on its way, no report for 5 minutes'],
      ['origin', 'Where a van set out from'],
    ]);
  }
  const here = site ? site.name || site.id : 'here';
  const list = document.createDocumentFragment();
  const seen = new Set();
  for (const m of onTheWay) {
    if (m.vehicle && seen.has(m.vehicle)) continue;
    if (m.vehicle) seen.add(m.vehicle);
    const pos = m.vehicle && state.vehicles.get(m.vehicle);
    const parts = [];
    if (m.distance_remaining_m !== null && m.distance_remaining_m !== undefined && Number.isFinite(Number(m.distance_remaining_m))) {
      parts.push(`${distance(m.distance_remaining_m)} from ${here}`);
    } else if (pos && site && Number.isFinite(Number(pos.lat)) && Number.isFinite(Number(pos.lon))) {
      parts.push(`${distance(kmBetween(Number(pos.lat), Number(pos.lon), Number(site.lat), Number(site.lon)) * 1000)} from ${here} in a straight line`);
    } else {
      parts.push('where it is not yet known');
    }
    parts.push(`from ${siteName(m, 'from')}`);
    parts.push(pos ? `last report ${formatTime(pos.ts)}` : 'no report yet');
    const li = document.createElement('li');
    li.dataset.vehicle = m.vehicle || '';
    li.textContent = `${m.vehicle || 'Van not yet known'} — ${parts.join(', ')}`;
    list.appendChild(li);
  }
  if (!onTheWay.length) {
    const li = document.createElement('li');
    li.textContent = 'No vans are on their way here.';
    list.appendChild(li);
  }
  el.vanList.replaceChildren(list);
}

async function startBasemap() {
  const path = await loadBasemap();
  if (!path) return;
  map.setBasemap(path);
  draw();
}

// ---------------------------------------------------------------------------
// Data

/** 'ok', 'rejected' (401), 'forbidden' (403), 'missing' (404) or 'unknown'. */
async function loadBoard() {
  let res;
  try {
    res = await fetch(`/api/sites/${encodeURIComponent(siteId)}/incoming`, { headers: authHeaders(token), cache: 'no-store' });
  } catch {
    return 'unknown';
  }
  if (res.status === 401) return 'rejected';
  if (res.status === 403) return 'forbidden';
  if (res.status === 404) return 'missing';
  if (!res.ok) return 'unknown';
  let board;
  try {
    board = await res.json();
  } catch {
    return 'unknown';
  }
  if (!running) return 'ok';
  state.site = board.site;
  setText(el.heading, `Site board: ${board.site.name} (${board.site.id})`);
  document.title = `${board.site.name} – site board – movewatch`;
  const seen = new Set();
  for (const m of board.moves || []) {
    seen.add(m.move_id);
    mergeMove(m, true);
  }
  for (const id of [...state.moves.keys()]) if (!seen.has(id)) state.moves.delete(id);
  state.vehicles.clear();
  for (const v of board.vehicles || []) state.vehicles.set(v.vehicle, v);
  render();
  return 'ok';
}

function handleFrame(msg) {
  if (!msg || typeof msg !== 'object') return;
  switch (msg.type) {
    case 'snapshot': {
      state.vehicles.clear();
      for (const v of msg.vehicles || []) if (v && typeof v.vehicle === 'string') state.vehicles.set(v.vehicle, v);
      const seen = new Set();
      for (const m of msg.moves || []) {
        if (m && typeof m.move_id === 'string') seen.add(m.move_id);
        mergeMove(m, true); // the REST read just before has the names
      }
      for (const id of [...state.moves.keys()]) if (!seen.has(id)) state.moves.delete(id);
      if ([...seen].some((id) => state.moves.has(id) && !state.moves.get(id).reference)) refetchSoon();
      hideNotice(el.notice);
      break;
    }
    case 'position':
      if (typeof msg.vehicle === 'string') {
        // A van's first fix: the engine now knows its supplier; read it once.
        if (!state.vehicles.has(msg.vehicle) && !suppliersAsked.has(msg.vehicle)) {
          suppliersAsked.add(msg.vehicle);
          if ([...state.moves.values()].some((m) => m.vehicle === msg.vehicle && !m.supplier)) refetchSoon();
        }
        state.vehicles.set(msg.vehicle, msg);
      }
      break;
    case 'move':
      mergeMove(msg);
      break;
    case 'arrival':
      if (msg.site === siteId && state.moves.has(msg.move_id)) {
        const m = state.moves.get(msg.move_id);
        m.arrived_at = msg.ts;
        m.status = 'arrived';
      }
      break;
    case 'departure':
      if (state.moves.has(msg.move_id)) state.moves.get(msg.move_id).departed_at = msg.ts;
      break;
    case 'error':
      if (msg.code === 'forbidden') showForbidden();
      else showNotice(el.notice, `The engine reported a problem (${msg.code || 'error'}): ${msg.message || ''}`);
      return;
    default:
      return;
  }
  render();
}

// ---------------------------------------------------------------------------
// Connection

const live = new LiveConnection({
  channel: `site:${siteId}`,
  statusEl: el.status,
  freshnessEl: el.freshness,
  onFrame: handleFrame,
  check: loadBoard,
  checkAlways: true, // re-read the board (and its names) before each reconnect
  onRejected: () => tokenRejected(),
  onForbidden: () => showForbidden(),
  onStatus: (text) => {
    state.connection = text;
  },
});
state.live = live; // for tests: drop the socket to see the reconnect

async function start() {
  running = true;
  el.tokenSection.hidden = true;
  el.forbidden.hidden = true;
  live.setStatus('Connecting…', 'grey');
  if (!siteId) {
    showNotice(el.notice, 'This address names no site: use /site/{site id}, for example /site/LEI.');
    return;
  }
  const check = await loadBoard();
  if (!running) return;
  if (check === 'rejected') return tokenRejected();
  if (check === 'forbidden') return showForbidden();
  if (check === 'missing') {
    stop();
    showNotice(el.notice, `There is no site ${siteId}.`);
    return;
  }
  el.live.hidden = false;
  startBasemap();
  render();
  live.start(token);
  tickTimer = setInterval(render, 1000); // the countdowns, and arrivals leaving after 15 min
  refreshTimer = setInterval(async () => {
    const r = await loadBoard();
    if (r === 'rejected') tokenRejected();
    else if (r === 'forbidden') showForbidden();
  }, REFRESH_MS);
}

function stop(status = 'Not connected', colour = 'grey') {
  running = false;
  live.stop(status, colour);
  clearInterval(tickTimer);
  clearInterval(refreshTimer);
  clearTimeout(refetchTimer);
  refetchTimer = null;
  state.moves.clear();
  state.vehicles.clear();
  state.site = null;
  for (const key of Object.keys(SECTIONS)) el[key].tbody.replaceChildren();
  rows.clear();
  el.vanList.replaceChildren();
  onTheWay = [];
  el.live.hidden = true;
}

/** This token may not see this site: say so, and show nothing of it. */
function showForbidden() {
  stop('Not connected', 'red');
  state.forbidden = true;
  el.forbiddenSite.textContent = siteId;
  el.forbidden.hidden = false;
  el.heading.textContent = 'Site board';
}

function tokenRejected() {
  stop('Not connected', 'red');
  token = null;
  forgetToken();
  showTokenForm('Token not accepted');
}

// ---------------------------------------------------------------------------
// Token form

function showTokenForm(error) {
  el.live.hidden = true;
  el.forbidden.hidden = true;
  el.tokenSection.hidden = false;
  el.tokenInput.value = '';
  el.tokenError.hidden = !error;
  el.tokenGroup.classList.toggle('form-group--error', Boolean(error));
  if (error) {
    el.tokenErrorText.textContent = error;
    el.tokenInput.setAttribute('aria-describedby', 'token-hint token-error');
    el.tokenInput.setAttribute('aria-invalid', 'true');
    el.tokenInput.focus();
  } else {
    el.tokenInput.setAttribute('aria-describedby', 'token-hint');
    el.tokenInput.removeAttribute('aria-invalid');
  }
}

el.tokenForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = el.tokenInput.value.trim();
  if (!value) {
    showTokenForm('Enter your access token');
    return;
  }
  token = value;
  el.tokenInput.value = '';
  saveToken(token);
  start();
});

el.forbiddenToken.addEventListener('click', () => {
  state.forbidden = false;
  token = null;
  forgetToken();
  showTokenForm(null);
});

new ResizeObserver(() => requestAnimationFrame(draw)).observe(el.wrap);

token = readToken();
if (token) {
  start();
} else {
  showTokenForm(null);
}

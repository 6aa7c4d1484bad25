// movewatch — a site's board (/site/{id}): the site's day.
//
// Four tables: Expected (booked to come here today, not left yet), On the way
// (with a countdown, the estimate's range and the distance to go), Arrived
// (the last 15 minutes) and Outgoing (moves leaving from here). Sites are
// named, not coded: the names come from GET /api/sites/{id}/incoming (which
// also answers whether this token may see the site at all: 401 → the token
// form, 403 → a forbidden message and no data); the WebSocket channel
// `site:{id}` then keeps the board live. Works with no internet: the basemap
// is the engine's own /data/basemap.geojson, drawn on a <canvas> here.

import {
  LiveConnection, authHeaders, countdown, distance, forgetToken, formatTime, hideNotice, readToken, saveToken, setText, showNotice,
} from '/common.js';

const REFRESH_MS = 30_000; // re-read the board (moves leave it 15 min after arrival)
const ARRIVED_KEPT_MS = 15 * 60_000;

const COLOURS = {
  sea: '#bcd7ea',
  land: '#f3f2f1',
  coast: '#6f777b',
  site: '#0b0c0c',
  van: '#1d70b8',
  arrived: '#00703c',
  edge: '#ffffff',
  text: '#0b0c0c',
};

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
let basemap = null; // GeoJSON rings [[lon, lat], ...]

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

  // The text alternative to the map.
  const items = [...state.vehicles.values()].sort((a, b) => (a.vehicle < b.vehicle ? -1 : 1));
  const list = document.createDocumentFragment();
  for (const v of items) {
    const li = document.createElement('li');
    li.textContent = `${v.vehicle}: ${Number(v.lat).toFixed(4)}, ${Number(v.lon).toFixed(4)}, last fix ${formatTime(v.ts)}`;
    list.appendChild(li);
  }
  if (!items.length) {
    const li = document.createElement('li');
    li.textContent = 'No vans to show.';
    list.appendChild(li);
  }
  el.vanList.replaceChildren(list);
  draw();
}

// ---------------------------------------------------------------------------
// The small map: the site and the vans on their way, fitted to fit them all.

function draw() {
  const rect = el.wrap.getBoundingClientRect();
  const cssW = Math.max(1, Math.floor(rect.width));
  const cssH = Math.max(1, Math.floor(rect.height));
  const dpr = Math.min(window.devicePixelRatio || 1, 3);
  if (el.canvas.width !== cssW * dpr || el.canvas.height !== cssH * dpr) {
    el.canvas.width = cssW * dpr;
    el.canvas.height = cssH * dpr;
  }
  const c = el.canvas.getContext('2d');
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.fillStyle = COLOURS.sea;
  c.fillRect(0, 0, cssW, cssH);
  if (!state.site) return;
  const pts = [[state.site.lon, state.site.lat], ...[...state.vehicles.values()].map((v) => [v.lon, v.lat])];
  const kx = Math.cos((state.site.lat * Math.PI) / 180);
  let [w, e, s, n] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [lon, lat] of pts) {
    w = Math.min(w, lon * kx);
    e = Math.max(e, lon * kx);
    s = Math.min(s, lat);
    n = Math.max(n, lat);
  }
  const span = Math.max(e - w, n - s, 0.2) * 1.3; // at least ~20 km across
  const cx = (w + e) / 2;
  const cy = (s + n) / 2;
  const scale = Math.min(cssW, cssH) / span;
  const px = (lon) => cssW / 2 + (lon * kx - cx) * scale;
  const py = (lat) => cssH / 2 - (lat - cy) * scale;

  if (basemap) {
    c.beginPath();
    for (const ring of basemap) {
      ring.forEach(([lon, lat], i) => (i === 0 ? c.moveTo(px(lon), py(lat)) : c.lineTo(px(lon), py(lat))));
      c.closePath();
    }
    c.fillStyle = COLOURS.land;
    c.fill('evenodd');
    c.lineWidth = 1;
    c.strokeStyle = COLOURS.coast;
    c.stroke();
  }
  // The site: a black square, and its fence radius when it is a circle.
  const x0 = px(state.site.lon);
  const y0 = py(state.site.lat);
  if (Number(state.site.radius_m) > 0) {
    c.beginPath();
    c.arc(x0, y0, (Number(state.site.radius_m) / 111_195) * scale, 0, Math.PI * 2);
    c.lineWidth = 1.5;
    c.strokeStyle = COLOURS.site;
    c.stroke();
  }
  c.fillStyle = COLOURS.site;
  c.fillRect(x0 - 5, y0 - 5, 10, 10);
  c.font = '700 14px Arial, sans-serif';
  c.fillText(state.site.id, x0 + 8, y0 - 8);
  // Vans with their registrations.
  for (const v of state.vehicles.values()) {
    const arrived = [...state.moves.values()].some((m) => m.vehicle === v.vehicle && m.arrived_at && m.direction === 'incoming');
    const x = px(v.lon);
    const y = py(v.lat);
    c.beginPath();
    c.arc(x, y, 7, 0, Math.PI * 2);
    c.fillStyle = arrived ? COLOURS.arrived : COLOURS.van;
    c.fill();
    c.lineWidth = 2;
    c.strokeStyle = COLOURS.edge;
    c.stroke();
    c.fillStyle = COLOURS.text;
    c.font = '700 13px Arial, sans-serif';
    c.fillText(v.vehicle, x + 10, y + 4);
  }
}

async function loadBasemap() {
  if (basemap) return;
  try {
    const res = await fetch('/data/basemap.geojson');
    if (!res.ok) return;
    const g = await res.json();
    const rings = [];
    for (const f of g.features || [g]) {
      const geom = f.geometry || f;
      if (geom.type === 'Polygon') rings.push(...geom.coordinates);
      else if (geom.type === 'MultiPolygon') for (const p of geom.coordinates) rings.push(...p);
    }
    basemap = rings;
    draw();
  } catch (err) {
    console.warn('movewatch: basemap not loaded', err);
  }
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
  loadBasemap();
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

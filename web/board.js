// movewatch — a site's incoming board (/site/{id}).
//
// The board comes from GET /api/sites/{id}/incoming (which also answers
// whether this token may see the site at all: 401 → the token form, 403 → a
// forbidden message and no data); the WebSocket channel `site:{id}` then keeps
// it live. Works with no internet: the basemap is the engine's own
// /data/basemap.geojson, drawn on a <canvas> here.

import { forgetToken, readToken, saveToken } from '/token.js';

const REFRESH_MS = 30_000; // re-read the board (moves leave it 15 min after arrival)
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;

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

/** Exposed for tests. */
const state = {
  site: null, // { id, name, lat, lon, ... }
  moves: new Map(), // move id -> { move_id, status, vehicle, eta, eta_low, eta_high, distance_remaining_m, from_location, to_location, arrived_at }
  vehicles: new Map(), // registration -> { vehicle, lat, lon, speed_kmh, ts }
  connection: 'Not connected',
  forbidden: false,
};
window.movewatchBoard = state;

const $ = (id) => document.getElementById(id);
const el = {
  heading: $('board-heading'),
  status: $('connection-status'),
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
  tbody: $('board-tbody'),
  empty: $('board-empty'),
  wrap: $('board-map-wrap'),
  canvas: $('board-map'),
  vanList: $('van-list'),
};

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
let ws = null;
let reconnectTimer = null;
let refreshTimer = null;
let tickTimer = null;
let attempts = 0;
let basemap = null; // GeoJSON rings [[lon, lat], ...]

// ---------------------------------------------------------------------------
// Formatting

const TIME_FMT = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', hour12: false });

function formatTime(ts) {
  const t = Date.parse(ts);
  return Number.isFinite(t) ? TIME_FMT.format(t) : 'Not known';
}

function countdown(ts) {
  const t = Date.parse(ts);
  if (!Number.isFinite(t)) return 'Not known';
  const mins = Math.round((t - Date.now()) / 60000);
  if (mins <= 0) return 'Due now';
  if (mins < 60) return `In ${mins} min`;
  return `In ${Math.floor(mins / 60)} h ${String(mins % 60).padStart(2, '0')} min`;
}

function distance(m) {
  const v = Number(m);
  if (m === null || m === undefined || !Number.isFinite(v)) return 'Not known';
  return v < 1000 ? `${Math.round(v)} m` : `${(v / 1000).toFixed(1)} km`;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// ---------------------------------------------------------------------------
// The board

function mergeMove(m) {
  if (!m || typeof m.move_id !== 'string') return;
  // An incoming board: moves whose destination is this site (a redirect
  // away or a cancellation is the last frame of a move this site gets).
  if (m.to_location !== siteId || m.status === 'cancelled') {
    state.moves.delete(m.move_id);
    return;
  }
  const old = state.moves.get(m.move_id) || {};
  state.moves.set(m.move_id, { ...old, ...m });
}

const rows = new Map(); // move id -> { tr, cells }

function render() {
  const moves = [...state.moves.values()].sort((a, b) => {
    // Arrived last; the rest by ETA, unknown ETAs after known ones.
    const ka = a.status === 'arrived' || a.status === 'completed' ? 1 : 0;
    const kb = b.status === 'arrived' || b.status === 'completed' ? 1 : 0;
    if (ka !== kb) return ka - kb;
    const ea = Date.parse(a.eta) || Infinity;
    const eb = Date.parse(b.eta) || Infinity;
    return ea - eb || (a.move_id < b.move_id ? -1 : 1);
  });
  for (const [id, r] of rows) {
    if (!state.moves.has(id)) {
      r.tr.remove();
      rows.delete(id);
    }
  }
  const frag = document.createDocumentFragment();
  for (const m of moves) {
    let r = rows.get(m.move_id);
    if (!r) {
      const tr = document.createElement('tr');
      tr.dataset.moveId = m.move_id;
      const cells = {};
      for (const col of ['vehicle', 'from', 'status', 'eta', 'distance', 'arrived']) {
        const cell = document.createElement(col === 'vehicle' ? 'th' : 'td');
        if (col === 'vehicle') cell.scope = 'row';
        if (col === 'distance') cell.className = 'numeric';
        cell.dataset.col = col;
        tr.appendChild(cell);
        cells[col] = cell;
      }
      r = { tr, cells };
      rows.set(m.move_id, r);
    }
    const c = r.cells;
    setText(c.vehicle, m.vehicle || 'Not yet known');
    setText(c.from, m.from_location || '');
    setText(c.status, STATUS_NAMES[m.status] || m.status || '');
    const arrived = m.arrived_at || (m.status === 'arrived' || m.status === 'completed' ? m.arrived_at : null);
    if (arrived) {
      setText(c.eta, '—');
      setText(c.distance, '—');
      setText(c.arrived, formatTime(arrived));
    } else {
      // A booked move has not left: no time to count down yet.
      const text = m.eta ? countdown(m.eta) : m.status === 'booked' ? 'Not left yet' : 'Not known';
      const interval = m.eta && m.eta_low && m.eta_high ? `between ${formatTime(m.eta_low)} and ${formatTime(m.eta_high)}` : '';
      const wanted = `${text}|${m.eta ? formatTime(m.eta) : ''}|${interval}`;
      if (c.eta.dataset.shown !== wanted) {
        c.eta.dataset.shown = wanted;
        const strong = document.createElement('span');
        strong.className = 'countdown';
        strong.textContent = text;
        const parts = [strong];
        if (m.eta) {
          const at = document.createElement('span');
          at.className = 'interval';
          at.textContent = `at ${formatTime(m.eta)}${interval ? `, ${interval}` : ''}`;
          parts.push(at);
        }
        c.eta.replaceChildren(...parts);
      }
      setText(c.distance, m.status === 'booked' && m.distance_remaining_m == null ? '—' : distance(m.distance_remaining_m));
      setText(c.arrived, m.status === 'arrived' ? 'Arrived' : 'Not yet');
    }
    frag.appendChild(r.tr);
  }
  el.tbody.appendChild(frag);
  el.empty.hidden = moves.length > 0;
  const n = moves.length;
  const text = n === 0 ? 'No incoming moves' : `${n} incoming move${n === 1 ? '' : 's'}`;
  el.count.dataset.count = String(n);
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
    const arrived = [...state.moves.values()].some((m) => m.vehicle === v.vehicle && m.arrived_at);
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

function authHeaders() {
  return { Authorization: `Bearer ${token}` };
}

/** 'ok', 'rejected' (401), 'forbidden' (403), 'missing' (404) or 'unknown'. */
async function loadBoard() {
  let res;
  try {
    res = await fetch(`/api/sites/${encodeURIComponent(siteId)}/incoming`, { headers: authHeaders(), cache: 'no-store' });
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
  state.site = board.site;
  setText(el.heading, `Incoming board: ${board.site.name} (${board.site.id})`);
  document.title = `${board.site.id} incoming board – movewatch`;
  const seen = new Set();
  for (const m of board.moves || []) {
    seen.add(m.move_id);
    mergeMove(m);
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
    case 'snapshot':
      state.vehicles.clear();
      for (const v of msg.vehicles || []) if (v && typeof v.vehicle === 'string') state.vehicles.set(v.vehicle, v);
      for (const m of msg.moves || []) mergeMove(m);
      attempts = 0;
      hideNotice();
      setConnection('Live', 'green');
      break;
    case 'position':
      if (typeof msg.vehicle === 'string') state.vehicles.set(msg.vehicle, msg);
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
      else showNotice(`The engine reported a problem (${msg.code || 'error'}): ${msg.message || ''}`);
      return;
    default:
      return;
  }
  render();
}

// ---------------------------------------------------------------------------
// Connection

function setConnection(text, colour) {
  state.connection = text;
  el.status.textContent = text;
  el.status.className = `tag tag--${colour}`;
}

function showNotice(text) {
  el.notice.textContent = text;
  el.notice.hidden = false;
}

function hideNotice() {
  el.notice.hidden = true;
  el.notice.textContent = '';
}

function connect() {
  clearTimeout(reconnectTimer);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let sock;
  try {
    sock = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`);
  } catch {
    scheduleReconnect();
    return;
  }
  ws = sock;
  sock.onopen = () => {
    if (ws === sock) sock.send(JSON.stringify({ type: 'subscribe', channel: `site:${siteId}` }));
  };
  sock.onmessage = (ev) => {
    if (ws !== sock || typeof ev.data !== 'string') return;
    try {
      handleFrame(JSON.parse(ev.data));
    } catch {
      /* not JSON: ignore */
    }
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    ws = null;
    if (!running) return;
    if (ev.code === 1008) {
      tokenRejected();
      return;
    }
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  setConnection('Reconnecting…', 'yellow');
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempts) * (0.75 + Math.random() * 0.5);
  attempts = Math.min(attempts + 1, 10);
  reconnectTimer = setTimeout(async () => {
    if (!running) return;
    const check = await loadBoard();
    if (!running) return;
    if (check === 'rejected') return tokenRejected();
    if (check === 'forbidden') return showForbidden();
    connect();
  }, delay);
}

async function start() {
  running = true;
  el.tokenSection.hidden = true;
  el.forbidden.hidden = true;
  setConnection('Connecting…', 'grey');
  if (!siteId) {
    showNotice('This address names no site: use /site/{site id}, for example /site/LEI.');
    return;
  }
  const check = await loadBoard();
  if (!running) return;
  if (check === 'rejected') return tokenRejected();
  if (check === 'forbidden') return showForbidden();
  if (check === 'missing') {
    stop();
    setConnection('Not connected', 'grey');
    showNotice(`There is no site ${siteId}.`);
    return;
  }
  el.live.hidden = false;
  loadBasemap();
  render();
  connect();
  tickTimer = setInterval(render, 1000); // the countdowns
  refreshTimer = setInterval(async () => {
    const r = await loadBoard();
    if (r === 'rejected') tokenRejected();
    else if (r === 'forbidden') showForbidden();
  }, REFRESH_MS);
}

function stop() {
  running = false;
  clearTimeout(reconnectTimer);
  clearInterval(tickTimer);
  clearInterval(refreshTimer);
  if (ws) {
    const s = ws;
    ws = null;
    try {
      s.close(1000);
    } catch {
      /* already closed */
    }
  }
  state.moves.clear();
  state.vehicles.clear();
  state.site = null;
  el.tbody.replaceChildren();
  rows.clear();
  el.vanList.replaceChildren();
  el.live.hidden = true;
}

/** This token may not see this site: say so, and show nothing of it. */
function showForbidden() {
  stop();
  state.forbidden = true;
  setConnection('Not connected', 'red');
  el.forbiddenSite.textContent = siteId;
  el.forbidden.hidden = false;
  el.heading.textContent = 'Incoming board';
}

function tokenRejected() {
  stop();
  token = null;
  forgetToken();
  setConnection('Not connected', 'red');
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

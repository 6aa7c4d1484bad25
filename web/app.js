// movewatch — control room page (/control): the live map of every vehicle
// and site, the alert list, and a selected vehicle's move and recent track.
//
// Works with no internet: the basemap comes from the engine
// (/data/basemap.geojson) and everything is drawn on a <canvas> here.
// Live positions arrive on the WebSocket `fleet` channel; messages only update
// an in-memory Map, and the map is redrawn at most once per animation frame.
// The vehicle table (the text alternative to the map) is refreshed at most
// once a second.

import {
  LiveConnection, authHeaders as headersFor, forgetToken, formatTime as formatTimeShared, hideNotice as hide, readToken, saveToken, setText, showNotice as show,
} from '/common.js';


// Fit England and Wales; Scotland may be cut off at the top.
const BOUNDS = { west: -6.5, east: 2.0, south: 49.8, north: 55.9 };
const KX = Math.cos((53.5 * Math.PI) / 180);
const MAP_W = (BOUNDS.east - BOUNDS.west) * KX; // map units (degrees of latitude)
const MAP_H = BOUNDS.north - BOUNDS.south;

const STALE_MS = 5 * 60 * 1000; // grey a van with no fix for this long
const ALERT_RECENT_MS = 10 * 60 * 1000; // red a van with an alert this recent
const MAX_ALERTS = 50;
const ALERTS_SHOWN = 10;
const MAX_ANIM_MS = 2000;
const JUMP_MAP_UNITS = 0.25; // ~25 km: larger moves are not animated

const COLOURS = {
  sea: '#bcd7ea',
  land: '#f3f2f1',
  coast: '#6f777b',
  tick: '#0b0c0c',
  onMove: '#1d70b8',
  idle: '#6f72af',
  alert: '#d4351c',
  stale: '#b1b4b6',
  staleEdge: '#505a5f',
  vanEdge: '#ffffff',
  highlight: '#ffdd00',
  prison: '#0b0c0c',
  court: '#f47738',
  police: '#00703c',
  other: '#912b88',
};

// ---------------------------------------------------------------------------
// State

/** Exposed for tests: `vehicles` maps a registration to its latest position. */
const state = {
  vehicles: new Map(),
  alerts: [],
  sites: [],
  /** move id -> the latest `move` frame (or snapshot entry). */
  moves: new Map(),
  /** The selected vehicle's registration, or null. */
  selected: null,
  /** The selected vehicle's recent track: [[lon, lat], ...]. */
  track: [],
  connection: 'Not connected',
};
window.movewatchState = state;

/** vehicle -> drawing state: animation from (x0,y0) to (x1,y1), in map units. */
const display = new Map();
/** vehicle -> time (ms) its latest alert was received. */
const alertedAt = new Map();

let token = null;
let running = false;
let uiTimer = null;

let tableDirty = false;
let alertsDirty = false;
let redrawPending = false;
let hovered = null;

let basemapPath = null;
let basemapRequested = false;
let sitesLoaded = false;

const reducedMotion =
  typeof window.matchMedia === 'function' &&
  window.matchMedia('(prefers-reduced-motion: reduce)').matches;

// ---------------------------------------------------------------------------
// Elements

const $ = (id) => document.getElementById(id);
const el = {
  status: $('connection-status'),
  freshness: $('freshness'),
  count: $('vehicle-count'),
  notice: $('notice'),
  tokenSection: $('token-section'),
  tokenForm: $('token-form'),
  tokenGroup: $('token-group'),
  tokenInput: $('token-input'),
  tokenError: $('token-error'),
  tokenErrorText: $('token-error-text'),
  live: $('live-section'),
  wrap: $('map-wrap'),
  canvas: $('map'),
  tooltip: $('map-tooltip'),
  siteCount: $('site-count'),
  alertList: $('alert-list'),
  noAlerts: $('no-alerts'),
  tbody: $('vehicle-tbody'),
  detail: $('vehicle-detail'),
  detailHeading: $('detail-heading'),
  detailMoves: $('detail-moves'),
  detailTrack: $('detail-track'),
  detailClose: $('detail-close'),
};

// ---------------------------------------------------------------------------
// Projection: equirectangular, x scaled by cos(53.5°). Map units are degrees
// of latitude; `view` turns them into CSS pixels.

const mx = (lon) => (lon - BOUNDS.west) * KX;
const my = (lat) => BOUNDS.north - lat;

const view = { cssW: 0, cssH: 0, dpr: 1, scale: 1, ox: 0, oy: 0 };
const sx = (x) => view.ox + x * view.scale;
const sy = (y) => view.oy + y * view.scale;

const ctx = el.canvas.getContext('2d');
const base = document.createElement('canvas');

function layout() {
  const cssW = Math.max(1, Math.floor(el.wrap.clientWidth));
  const maxH = Math.max(360, Math.floor(window.innerHeight * 0.85));
  const cssH = Math.max(300, Math.min(Math.round((cssW * MAP_H) / MAP_W), maxH));
  const dpr = Math.min(window.devicePixelRatio || 1, 3);
  if (cssW === view.cssW && cssH === view.cssH && dpr === view.dpr) return;
  view.cssW = cssW;
  view.cssH = cssH;
  view.dpr = dpr;
  view.scale = Math.min(cssW / MAP_W, cssH / MAP_H);
  view.ox = (cssW - MAP_W * view.scale) / 2;
  view.oy = (cssH - MAP_H * view.scale) / 2;
  el.canvas.style.height = `${cssH}px`;
  el.canvas.width = Math.round(cssW * dpr);
  el.canvas.height = Math.round(cssH * dpr);
  renderBase();
  requestRedraw();
}

// The static layer (sea, land, sites) is drawn once to an offscreen canvas and
// blitted every frame.
function renderBase() {
  base.width = el.canvas.width;
  base.height = el.canvas.height;
  const c = base.getContext('2d');
  c.setTransform(1, 0, 0, 1, 0, 0);
  c.fillStyle = COLOURS.sea;
  c.fillRect(0, 0, base.width, base.height);
  if (basemapPath) {
    const s = view.scale * view.dpr;
    c.setTransform(s, 0, 0, s, view.ox * view.dpr, view.oy * view.dpr);
    c.fillStyle = COLOURS.land;
    c.fill(basemapPath, 'evenodd');
    c.lineWidth = (0.8 * view.dpr) / s;
    c.lineJoin = 'round';
    c.strokeStyle = COLOURS.coast;
    c.stroke(basemapPath);
  }
  c.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
  // Sites are context: slightly muted so the vans stand out.
  c.globalAlpha = 0.8;
  // Draw the most numerous kinds first so prisons stay on top.
  const order = { police: 0, other: 1, court: 2, prison: 3 };
  const sorted = [...state.sites].sort((a, b) => order[siteClass(a.kind)] - order[siteClass(b.kind)]);
  for (const site of sorted) {
    drawSite(c, siteClass(site.kind), sx(mx(site.lon)), sy(my(site.lat)));
  }
  c.globalAlpha = 1;
}

/** A site's name (from /api/sites), or its code when the page knows no name. */
function siteName(code) {
  return state.sites.find((s) => s.id === code)?.name || code;
}

function siteClass(kind) {
  return kind === 'prison' || kind === 'court' || kind === 'police' ? kind : 'other';
}

function drawSite(c, cls, x, y) {
  c.beginPath();
  switch (cls) {
    case 'prison':
      c.fillStyle = COLOURS.prison;
      c.fillRect(x - 3.5, y - 3.5, 7, 7);
      return;
    case 'court':
      c.moveTo(x, y - 4.5);
      c.lineTo(x + 4.5, y + 3.5);
      c.lineTo(x - 4.5, y + 3.5);
      c.closePath();
      c.fillStyle = COLOURS.court;
      c.fill();
      c.lineWidth = 1;
      c.strokeStyle = COLOURS.prison;
      c.stroke();
      return;
    case 'police':
      c.arc(x, y, 3, 0, Math.PI * 2);
      c.fillStyle = COLOURS.police;
      c.fill();
      c.lineWidth = 0.75;
      c.strokeStyle = '#ffffff';
      c.stroke();
      return;
    default:
      c.moveTo(x, y - 4);
      c.lineTo(x + 4, y);
      c.lineTo(x, y + 4);
      c.lineTo(x - 4, y);
      c.closePath();
      c.fillStyle = COLOURS.other;
      c.fill();
      c.lineWidth = 0.75;
      c.strokeStyle = '#ffffff';
      c.stroke();
  }
}

function buildBasemap(geojson) {
  const path = new Path2D();
  const addRing = (ring) => {
    for (let i = 0; i < ring.length; i++) {
      const [lon, lat] = ring[i];
      if (i === 0) path.moveTo(mx(lon), my(lat));
      else path.lineTo(mx(lon), my(lat));
    }
    path.closePath();
  };
  for (const f of geojson.features || []) {
    const g = f && f.geometry;
    if (!g) continue;
    if (g.type === 'Polygon') g.coordinates.forEach(addRing);
    else if (g.type === 'MultiPolygon') g.coordinates.forEach((poly) => poly.forEach(addRing));
  }
  return path;
}

// ---------------------------------------------------------------------------
// Vans: animation and per-frame drawing

function currentPos(d, now) {
  if (d.dur <= 0 || now >= d.t0 + d.dur) return [d.x1, d.y1];
  let t = (now - d.t0) / d.dur;
  if (t < 0) t = 0;
  return [d.x0 + (d.x1 - d.x0) * t, d.y0 + (d.y1 - d.y0) * t];
}

function applyPosition(p, now) {
  if (!p || typeof p.vehicle !== 'string') return;
  const lat = Number(p.lat);
  const lon = Number(p.lon);
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return;
  const pos = {
    vehicle: p.vehicle,
    lat,
    lon,
    speed_kmh: p.speed_kmh ?? null,
    bearing: p.bearing ?? null,
    ts: p.ts,
    move_ids: Array.isArray(p.move_ids) ? p.move_ids : [],
  };
  state.vehicles.set(pos.vehicle, pos);
  if (pos.vehicle === state.selected) detailDirty = true;

  const x = mx(lon);
  const y = my(lat);
  const tsMs = Date.parse(pos.ts);
  let d = display.get(pos.vehicle);
  if (!d) {
    d = { x0: x, y0: y, x1: x, y1: y, t0: now, dur: 0, last: now, tsMs, sx: NaN, sy: NaN };
    display.set(pos.vehicle, d);
  } else {
    const [cx, cy] = currentPos(d, now);
    const jump = Math.hypot(x - cx, y - cy) > JUMP_MAP_UNITS;
    d.x0 = cx;
    d.y0 = cy;
    d.x1 = x;
    d.y1 = y;
    d.t0 = now;
    // Glide over the time since the previous fix arrived, so a van sending
    // every second moves continuously.
    d.dur = reducedMotion || jump ? 0 : Math.min(MAX_ANIM_MS, Math.max(0, now - d.last));
    d.last = now;
    d.tsMs = tsMs;
  }
  tableDirty = true;
}

const VAN_R = 6;
const VAN_FILL = { stale: COLOURS.stale, idle: COLOURS.idle, onMove: COLOURS.onMove, alert: COLOURS.alert };
const sprites = new Map();

/** A van dot of one colour group, drawn once per device pixel ratio. */
function vanSprite(group) {
  const key = `${group}@${view.dpr}`;
  let sprite = sprites.get(key);
  if (!sprite) {
    const size = Math.ceil((VAN_R * 2 + 3) * view.dpr);
    sprite = document.createElement('canvas');
    sprite.width = size;
    sprite.height = size;
    const c = sprite.getContext('2d');
    c.scale(view.dpr, view.dpr);
    c.beginPath();
    c.arc(size / view.dpr / 2, size / view.dpr / 2, VAN_R, 0, Math.PI * 2);
    c.fillStyle = VAN_FILL[group];
    c.fill();
    c.lineWidth = 1.5;
    c.strokeStyle = group === 'stale' ? COLOURS.staleEdge : COLOURS.vanEdge;
    c.stroke();
    sprites.set(key, sprite);
  }
  return sprite;
}

function requestRedraw() {
  if (redrawPending) return;
  redrawPending = true;
  requestAnimationFrame(drawFrame);
}

function drawFrame(now) {
  redrawPending = false;
  if (!running || view.cssW === 0) return;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.drawImage(base, 0, 0);
  ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);

  const wall = Date.now();
  const groups = { onMove: [], idle: [], alert: [], stale: [] };
  const ticks = [];
  let animating = false;
  for (const [vehicle, d] of display) {
    const [x, y] = currentPos(d, now);
    if (d.dur > 0 && now < d.t0 + d.dur) animating = true;
    d.sx = sx(x);
    d.sy = sy(y);
    const pos = state.vehicles.get(vehicle);
    let group;
    if (Number.isFinite(d.tsMs) && wall - d.tsMs > STALE_MS) group = 'stale';
    else if (wall - (alertedAt.get(vehicle) ?? -Infinity) < ALERT_RECENT_MS) group = 'alert';
    else if (pos && pos.move_ids.length > 0) group = 'onMove';
    else group = 'idle';
    groups[group].push(d);
    if (pos && pos.bearing !== null && Number.isFinite(Number(pos.bearing)) && group !== 'stale') {
      ticks.push([d.sx, d.sy, (Number(pos.bearing) * Math.PI) / 180]);
    }
  }

  // Bearing ticks under the dots.
  if (ticks.length) {
    ctx.beginPath();
    for (const [x, y, b] of ticks) {
      ctx.moveTo(x, y);
      ctx.lineTo(x + Math.sin(b) * 14, y - Math.cos(b) * 14);
    }
    ctx.lineWidth = 2.5;
    ctx.lineCap = 'round';
    ctx.strokeStyle = COLOURS.tick;
    ctx.stroke();
  }

  // The selected vehicle's recent track, under the dots.
  if (state.selected && state.track.length > 1) {
    ctx.beginPath();
    state.track.forEach(([lon, lat], i) => {
      const x = sx(mx(lon));
      const y = sy(my(lat));
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.lineWidth = 3;
    ctx.lineJoin = 'round';
    ctx.strokeStyle = COLOURS.alert;
    ctx.stroke();
  }

  // Dots are blitted from small pre-drawn sprites: far cheaper than
  // thousands of arcs when there are many vans.
  for (const group of ['stale', 'idle', 'onMove', 'alert']) {
    const sprite = vanSprite(group);
    const half = sprite.width / view.dpr / 2;
    const size = sprite.width / view.dpr;
    for (const d of groups[group]) ctx.drawImage(sprite, d.sx - half, d.sy - half, size, size);
  }

  const picked = state.selected && display.get(state.selected);
  if (picked) {
    ctx.beginPath();
    ctx.arc(picked.sx, picked.sy, VAN_R + 5, 0, Math.PI * 2);
    ctx.lineWidth = 3;
    ctx.strokeStyle = COLOURS.tick;
    ctx.stroke();
  }

  if (hovered) {
    const d = display.get(hovered);
    if (d) {
      ctx.beginPath();
      ctx.arc(d.sx, d.sy, VAN_R + 4, 0, Math.PI * 2);
      ctx.lineWidth = 4;
      ctx.strokeStyle = COLOURS.tick;
      ctx.stroke();
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = COLOURS.highlight;
      ctx.stroke();
      placeTooltip(d);
    }
  }

  if (animating) requestRedraw();
}

// Pointer hover shows the nearest van's details (the table has them all too).
function onPointerMove(ev) {
  const rect = el.canvas.getBoundingClientRect();
  const x = ev.clientX - rect.left;
  const y = ev.clientY - rect.top;
  let best = null;
  let bestD2 = 12 * 12;
  for (const [vehicle, d] of display) {
    const dx = d.sx - x;
    const dy = d.sy - y;
    const d2 = dx * dx + dy * dy;
    if (d2 < bestD2) {
      bestD2 = d2;
      best = vehicle;
    }
  }
  if (best !== hovered) {
    hovered = best;
    if (!best) el.tooltip.hidden = true;
    requestRedraw();
  }
}

function onPointerLeave() {
  hovered = null;
  el.tooltip.hidden = true;
  requestRedraw();
}

function placeTooltip(d) {
  const pos = state.vehicles.get(hovered);
  if (!pos) return;
  const speed = pos.speed_kmh === null ? 'speed not known' : `${Math.round(pos.speed_kmh)} km/h`;
  const moves = pos.move_ids.length ? ` · ${pos.move_ids.length} move${pos.move_ids.length === 1 ? '' : 's'}` : '';
  const text = `${pos.vehicle} · ${speed} · ${formatTime(pos.ts)}${moves}`;
  if (el.tooltip.textContent !== text) el.tooltip.textContent = text;
  el.tooltip.hidden = false;
  const w = el.tooltip.offsetWidth;
  let left = d.sx + 12;
  if (left + w > view.cssW) left = Math.max(0, d.sx - 12 - w);
  el.tooltip.style.left = `${left}px`;
  el.tooltip.style.top = `${Math.max(0, d.sy - 30)}px`;
}

// ---------------------------------------------------------------------------
// Text: count, table, alerts (at most once a second)

// Times on this page carry seconds (positions arrive every few seconds).
const formatTime = (ts) => formatTimeShared(ts, { seconds: true });

const fmtCoord = (v) => v.toFixed(5);
const fmtSpeed = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? 'Not known' : String(Math.round(Number(v))));

function updateCount() {
  const n = state.vehicles.size;
  const noun = n === 1 ? 'vehicle' : 'vehicles';
  // While disconnected the last known positions stay on screen, but are not
  // called live.
  const text = state.connection === 'Live' || n === 0 ? `${n} ${noun} live` : `${n} ${noun}, not updating`;
  if (el.count.dataset.count !== String(n)) el.count.dataset.count = String(n);
  if (el.count.textContent !== text) el.count.textContent = text;
}

/** registration -> { tr, cells: [td x5] } */
const rows = new Map();
let rowOrder = [];

function updateTable() {
  if (!tableDirty || document.hidden) return;
  tableDirty = false;
  let membershipChanged = false;
  for (const [vehicle, r] of rows) {
    if (!state.vehicles.has(vehicle)) {
      r.tr.remove();
      rows.delete(vehicle);
      membershipChanged = true;
    }
  }
  for (const [vehicle, pos] of state.vehicles) {
    let r = rows.get(vehicle);
    if (!r) {
      const tr = document.createElement('tr');
      const cells = [];
      for (let i = 0; i < 5; i++) {
        const cell = document.createElement(i === 0 ? 'th' : 'td');
        if (i === 0) cell.scope = 'row';
        if (i >= 1 && i <= 3) cell.className = 'numeric';
        tr.appendChild(cell);
        cells.push(cell);
      }
      const pick = document.createElement('button');
      pick.type = 'button';
      pick.className = 'link-button';
      pick.textContent = vehicle;
      pick.addEventListener('click', () => selectVehicle(vehicle));
      cells[0].appendChild(pick);
      r = { tr, cells };
      rows.set(vehicle, r);
      membershipChanged = true;
    }
    setText(r.cells[1], fmtCoord(pos.lat));
    setText(r.cells[2], fmtCoord(pos.lon));
    setText(r.cells[3], fmtSpeed(pos.speed_kmh));
    setText(r.cells[4], formatTime(pos.ts));
  }
  if (membershipChanged) {
    rowOrder = [...rows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const frag = document.createDocumentFragment();
    for (const v of rowOrder) frag.appendChild(rows.get(v).tr);
    el.tbody.appendChild(frag);
  }
}

const ALERT_NAMES = {
  gps_gap: 'GPS gap',
  stopped: 'Stopped',
  device_silent: 'Device silent',
  breakdown: 'Breakdown',
  off_route: 'Off route',
  arriving_30: 'Arriving within 30 minutes',
};

function alertName(kind) {
  if (ALERT_NAMES[kind]) return ALERT_NAMES[kind];
  const s = String(kind || 'Alert').replace(/[_-]+/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function updateAlerts() {
  if (!alertsDirty) return;
  alertsDirty = false;
  const shown = state.alerts.slice(-ALERTS_SHOWN).reverse();
  const frag = document.createDocumentFragment();
  for (const a of shown) {
    const li = document.createElement('li');
    const strong = document.createElement('strong');
    strong.textContent = `${alertName(a.kind)}: ${a.vehicle || 'unknown vehicle'}`;
    li.appendChild(strong);
    if (a.detail) li.appendChild(document.createTextNode(` — ${a.detail}`));
    const meta = document.createElement('span');
    meta.className = 'alerts__meta';
    meta.textContent = formatTime(a.ts) + (a.move_id ? ` · move ${a.move_id}` : '');
    li.appendChild(meta);
    frag.appendChild(li);
  }
  el.alertList.replaceChildren(frag);
  el.noAlerts.hidden = shown.length > 0;
}

function uiTick() {
  updateCount();
  updateTable();
  updateAlerts();
  updateDetail();
  // Colours depend on the clock (stale fixes, recent alerts).
  if (display.size) requestRedraw();
}

// ---------------------------------------------------------------------------
// The selected vehicle: its moves and its track over the last hour

let detailDirty = false;
let trackRequest = 0;

function selectVehicle(vehicle) {
  state.selected = vehicle;
  state.track = [];
  detailDirty = true;
  el.detail.hidden = false;
  updateDetail();
  el.detailHeading.tabIndex = -1;
  el.detailHeading.focus();
  loadTrack(vehicle);
  requestRedraw();
}

function clearSelection() {
  state.selected = null;
  state.track = [];
  el.detail.hidden = true;
  requestRedraw();
}

async function loadTrack(vehicle) {
  const request = ++trackRequest;
  setText(el.detailTrack, 'Loading the track of the last hour…');
  try {
    const res = await fetch(`/api/vehicles/${encodeURIComponent(vehicle)}/track?simplify_m=25`, {
      headers: authHeaders(),
      cache: 'no-store',
    });
    if (request !== trackRequest) return;
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const feature = await res.json();
    if (request !== trackRequest) return;
    const g = feature && feature.geometry;
    state.track = g && g.type === 'LineString' ? g.coordinates : g && g.type === 'Point' ? [g.coordinates] : [];
    const n = feature?.properties?.points_before ?? 0;
    setText(
      el.detailTrack,
      n ? `Track of the last hour: ${n} stored fixes, drawn in red on the map.` : 'No stored fixes in the last hour.',
    );
    el.detailTrack.dataset.points = String(n);
  } catch {
    if (request === trackRequest) setText(el.detailTrack, 'The track could not be loaded.');
  }
  requestRedraw();
}

const STATUS_NAMES = { booked: 'Booked', in_transit: 'In transit', arrived: 'Arrived', completed: 'Completed', cancelled: 'Cancelled' };

function updateDetail() {
  if (!state.selected || !detailDirty) return;
  detailDirty = false;
  const vehicle = state.selected;
  const pos = state.vehicles.get(vehicle);
  setText(el.detailHeading, `Vehicle ${vehicle}`);
  const frag = document.createDocumentFragment();
  const dl = document.createElement('dl');
  const row = (k, v) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    dl.append(dt, dd);
  };
  if (pos) {
    row('Last fix', `${formatTime(pos.ts)} at ${fmtCoord(pos.lat)}, ${fmtCoord(pos.lon)}`);
    row('Speed', pos.speed_kmh === null ? 'Not known' : `${Math.round(pos.speed_kmh)} km/h`);
  }
  const ids = new Set(pos ? pos.move_ids : []);
  for (const m of state.moves.values()) if (m.vehicle === vehicle) ids.add(m.move_id);
  if (ids.size === 0) row('Move', 'Not carrying a move');
  for (const id of ids) {
    const m = state.moves.get(id);
    if (!m) {
      row('Move', id);
      continue;
    }
    const eta = m.eta ? ` · ETA ${formatTime(m.eta)}` : '';
    const left = Number.isFinite(Number(m.distance_remaining_m)) && m.distance_remaining_m !== null
      ? ` · ${(Number(m.distance_remaining_m) / 1000).toFixed(1)} km to go`
      : '';
    row('Move', `${id}: ${siteName(m.from_location)} to ${siteName(m.to_location)}, ${STATUS_NAMES[m.status] || m.status}${eta}${left}`);
  }
  frag.appendChild(dl);
  el.detailMoves.replaceChildren(frag);
}

// ---------------------------------------------------------------------------
// Server frames

function handleMessage(msg) {
  handleFrame(msg, performance.now());
  requestRedraw();
}

function handleFrame(msg, now) {
  if (!msg || typeof msg !== 'object') return;
  switch (msg.type) {
    case 'snapshot': {
      const seen = new Set();
      for (const v of msg.vehicles || []) {
        applyPosition(v, now);
        if (v && typeof v.vehicle === 'string') seen.add(v.vehicle);
      }
      for (const vehicle of [...state.vehicles.keys()]) {
        if (!seen.has(vehicle)) {
          state.vehicles.delete(vehicle);
          display.delete(vehicle);
        }
      }
      state.alerts = [];
      alertedAt.clear();
      for (const a of msg.alerts || []) addAlert(a);
      state.moves.clear();
      for (const m of msg.moves || []) if (m && typeof m.move_id === 'string') state.moves.set(m.move_id, m);
      detailDirty = true;
      tableDirty = true;
      hideNotice();
      // The count at once; the table and alerts follow at the next tick.
      updateCount();
      break;
    }
    case 'position':
      applyPosition(msg, now);
      break;
    case 'alert':
      addAlert(msg);
      break;
    case 'move':
      if (typeof msg.move_id === 'string') {
        state.moves.set(msg.move_id, msg);
        detailDirty = true;
      }
      break;
    case 'error':
      showNotice(
        msg.code === 'forbidden'
          ? `This token may not see the whole fleet: ${msg.message || 'forbidden'}`
          : `The engine reported a problem (${msg.code || 'error'}): ${msg.message || ''}`,
      );
      break;
    default:
      // move, arrival, departure and future frame types are not shown here.
      break;
  }
}

function addAlert(a) {
  if (!a || typeof a !== 'object') return;
  state.alerts.push({ kind: a.kind, vehicle: a.vehicle, move_id: a.move_id, ts: a.ts, detail: a.detail });
  if (state.alerts.length > MAX_ALERTS) state.alerts.splice(0, state.alerts.length - MAX_ALERTS);
  if (typeof a.vehicle === 'string') {
    const t = Date.parse(a.ts);
    // An alert from the snapshot counts from its own time; a live one from now.
    alertedAt.set(a.vehicle, Number.isFinite(t) ? Math.min(Date.now(), Math.max(t, Date.now() - ALERT_RECENT_MS)) : Date.now());
  }
  alertsDirty = true;
}

// ---------------------------------------------------------------------------
// Connection

const live = new LiveConnection({
  channel: 'fleet',
  statusEl: el.status,
  freshnessEl: el.freshness,
  onFrame: handleMessage,
  check: loadSites,
  onRejected: () => tokenRejected(),
  onStatus: (text) => {
    state.connection = text;
    updateCount();
  },
});

function setConnection(text, colour) {
  live.setStatus(text, colour);
}

const showNotice = (text) => show(el.notice, text);
const hideNotice = () => hide(el.notice);
const authHeaders = () => headersFor(token);

/** 'ok', 'rejected' or 'unknown' (network trouble). Loads the sites on success. */
async function loadSites() {
  let res;
  try {
    res = await fetch('/api/sites', { headers: authHeaders(), cache: 'no-store' });
  } catch {
    return 'unknown';
  }
  if (res.status === 401) return 'rejected';
  if (!res.ok) return 'unknown';
  if (!sitesLoaded) {
    try {
      const list = await res.json();
      state.sites = (Array.isArray(list) ? list : [])
        .map((s) => ({ id: s.id, name: s.name, kind: s.kind, lat: Number(s.lat), lon: Number(s.lon), radius_m: s.radius_m }))
        .filter((s) => Number.isFinite(s.lat) && Number.isFinite(s.lon));
      sitesLoaded = true;
      describeSites();
      renderBase();
      requestRedraw();
    } catch {
      return 'unknown';
    }
  }
  return 'ok';
}

function describeSites() {
  const n = { prison: 0, court: 0, police: 0, other: 0 };
  for (const s of state.sites) n[siteClass(s.kind)]++;
  el.siteCount.textContent =
    `${state.sites.length} sites: ${n.prison} prisons, ${n.court} courts, ` +
    `${n.police} police stations, ${n.other} other.`;
}

async function loadBasemap() {
  if (basemapRequested) return;
  basemapRequested = true;
  try {
    const res = await fetch('/data/basemap.geojson', { headers: authHeaders() });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    basemapPath = buildBasemap(await res.json());
    renderBase();
    requestRedraw();
  } catch (err) {
    basemapRequested = false; // try again on the next start
    console.warn('movewatch: basemap not loaded', err);
  }
}

async function start() {
  running = true;
  el.tokenSection.hidden = true;
  el.live.hidden = false;
  setConnection('Connecting…', 'grey');
  layout();
  loadBasemap();
  const check = await loadSites();
  if (!running) return;
  if (check === 'rejected') {
    tokenRejected();
    return;
  }
  if (!uiTimer) uiTimer = setInterval(uiTick, 1000);
  live.start(token);
}

function stop() {
  running = false;
  live.stop();
  clearInterval(uiTimer);
  uiTimer = null;
  state.vehicles.clear();
  state.moves.clear();
  clearSelection();
  state.alerts = [];
  display.clear();
  alertedAt.clear();
  state.sites = [];
  sitesLoaded = false;
  tableDirty = true;
  alertsDirty = true;
  updateCount();
  updateTable();
  updateAlerts();
}

function tokenRejected() {
  stop();
  token = null;
  forgetToken();
  live.stop('Not connected', 'red');
  showTokenForm('Token not accepted');
}

// ---------------------------------------------------------------------------
// Token form

function showTokenForm(error) {
  el.live.hidden = true;
  el.tokenSection.hidden = false;
  el.tokenInput.value = '';
  if (error) {
    el.tokenErrorText.textContent = error;
    el.tokenError.hidden = false;
    el.tokenGroup.classList.add('form-group--error');
    el.tokenInput.setAttribute('aria-describedby', 'token-hint token-error');
    el.tokenInput.setAttribute('aria-invalid', 'true');
    el.tokenInput.focus();
  } else {
    el.tokenError.hidden = true;
    el.tokenGroup.classList.remove('form-group--error');
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

// ---------------------------------------------------------------------------
// Start-up

el.canvas.addEventListener('pointermove', onPointerMove);
el.canvas.addEventListener('pointerleave', onPointerLeave);
el.canvas.addEventListener('click', (ev) => {
  onPointerMove(ev);
  if (hovered) selectVehicle(hovered);
});
el.detailClose.addEventListener('click', clearSelection);
// Lay out in the next frame, never inside the observer's own callback.
let layoutPending = false;
function scheduleLayout() {
  if (layoutPending) return;
  layoutPending = true;
  requestAnimationFrame(() => {
    layoutPending = false;
    if (running) layout();
  });
}
new ResizeObserver(scheduleLayout).observe(el.wrap);
window.addEventListener('resize', scheduleLayout);

token = readToken();
if (token) {
  start();
} else {
  setConnection('Not connected', 'grey');
  showTokenForm(null);
}

// movewatch — control room page (/control): the alerts first (counts by
// kind, action or information, acknowledged by whom and when, shared live
// with every control-room screen), a search, the map (zoom and pan, nearby
// vans grouped, labels that never overlap, site names), the chosen van's
// details beside the map, and the table of the same vans as the map.
//
// Works with no internet: the basemap comes from the engine
// (/data/basemap.geojson) and everything is drawn on a <canvas> here (see
// docs/PAGES.md for why not a map library). Live positions arrive on the
// WebSocket `fleet` channel; frames only update in-memory maps, and the map
// is redrawn at most once per animation frame; the text at most once a second.

import {
  LiveConnection, ago, authHeaders as headersFor, distance, forgetToken, formatTime as formatTimeShared,
  hideNotice as hide, readToken, saveToken, setText, showNotice as show,
} from '/common.js';
import {
  COLOURS, LABEL_FONT, MAP_H, MAP_W, MapView, STALE_MS, VAN_R, kmBetween, loadBasemap as loadBasemapPath, mx, my, renderKey, siteClass,
} from '/map.js';

// Fit England and Wales; Scotland may be cut off at the top.
const ALERT_RECENT_MS = 10 * 60 * 1000; // red a van with an action alert this recent
const MAX_ALERTS = 100;
const ALERTS_SHOWN = 12;
const MAX_ANIM_MS = 2000;
const JUMP_MAP_UNITS = 0.25; // ~25 km: larger moves are not animated
const CLUSTER_CELL = 46; // px: vans closer than about this are grouped
const CLUSTER_UNTIL_ZOOM = 40; // at this zoom and closer every van stands alone
const SITE_LABELS_FROM_ZOOM = 1.5; // below this only prisons are named
const OPERATOR_KEY = 'movewatch.operator';

// Alerts that ask someone to act; any other kind is information.
const INFO_KINDS = new Set(['arriving_30']);

// ---------------------------------------------------------------------------
// State

/** Exposed for tests: `vehicles` maps a registration to its latest position. */
const state = {
  vehicles: new Map(),
  alerts: [],
  /** alert key -> { by, at } */
  acks: new Map(),
  sites: [],
  /** move id -> the latest `move` frame (or snapshot entry). */
  moves: new Map(),
  /** move id -> reference; vehicle -> supplier (from GET /api/fleet). */
  references: new Map(),
  suppliers: new Map(),
  /** The search text, lower case, trimmed. */
  query: '',
  /** The vans the search finds (every van when there is no search). */
  shown: new Set(),
  /** The selected vehicle's registration, or null. */
  selected: null,
  /** The selected vehicle's recent track: [[lon, lat], ...]. */
  track: [],
  connection: 'Not connected',
};
window.movewatchState = state;

/** vehicle -> drawing state: animation from (x0,y0) to (x1,y1), in map units. */
const display = new Map();
/** vehicle -> time (ms) its latest action alert was received. */
const alertedAt = new Map();

let token = null;
let running = false;
let uiTimer = null;

let tableDirty = false;
let alertsDirty = false;
let redrawPending = false;
let hovered = null;

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
  alertSummary: $('alert-summary'),
  alertCounts: $('alert-counts'),
  alertList: $('alert-list'),
  alertMore: $('alert-more'),
  operatorGroup: $('operator-group'),
  operatorInput: $('operator-input'),
  operatorError: $('operator-error'),
  search: $('search-input'),
  searchResult: $('search-result'),
  tbody: $('vehicle-tbody'),
  tableCount: $('vehicle-table-count'),
  detail: $('vehicle-detail'),
  detailHeading: $('detail-heading'),
  detailEmpty: $('detail-empty'),
  detailMoves: $('detail-moves'),
  detailTrack: $('detail-track'),
  detailClose: $('detail-close'),
  zoomIn: $('zoom-in'),
  zoomOut: $('zoom-out'),
  zoomReset: $('zoom-reset'),
  key: $('map-key'),
};

// ---------------------------------------------------------------------------
// The map (web/map.js): projection, basemap, site symbols, zoom and pan. The
// control room adds the vans, their grouping and the labels' order.

const map = new MapView(el.canvas, {
  minZoom: 1,
  maxZoom: 200,
  onView: (v) => {
    el.zoomOut.disabled = v.zoom <= map.minZoom;
    el.zoomIn.disabled = v.zoom >= map.maxZoom;
    requestRedraw();
  },
});
const view = map.view;
const drawn = map.drawn;
const ctx = map.ctx;
const sx = (x) => map.sx(x);
const sy = (y) => map.sy(y);

function layout() {
  const cssW = Math.max(1, Math.floor(el.wrap.clientWidth));
  const maxH = Math.max(320, Math.floor(window.innerHeight * 0.75));
  const cssH = Math.max(300, Math.min(Math.round((cssW * MAP_H) / MAP_W), maxH));
  el.canvas.style.height = `${cssH}px`;
  map.setSize(cssW, cssH);
}

/** A site's name (from /api/sites), or its code when the page knows no name. */
function siteName(code) {
  return siteById.get(code)?.name || code || 'Not known';
}
let siteById = new Map();

// ---------------------------------------------------------------------------
// Vans: animation

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
  const known = state.vehicles.has(p.vehicle);
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
  if (!known || pos.move_ids.some((m) => !state.references.has(m))) fleetInfoWanted();
  // A new van the search takes is shown at once (the filter is re-run every second).
  if (!known && matches(pos.vehicle, state.query)) state.shown.add(pos.vehicle);

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
    // Glide over the time since the previous fix arrived.
    d.dur = reducedMotion || jump ? 0 : Math.min(MAX_ANIM_MS, Math.max(0, now - d.last));
    d.last = now;
    d.tsMs = tsMs;
  }
  tableDirty = true;
}

const isStale = (pos, wall = Date.now()) => {
  const t = Date.parse(pos?.ts);
  return !Number.isFinite(t) || wall - t > STALE_MS;
};

// ---------------------------------------------------------------------------
// Search: one filter for the map and the table

/** Every move of a vehicle: the ones its position names and the ones naming it. */
function movesOf(vehicle) {
  const ids = new Set(state.vehicles.get(vehicle)?.move_ids || []);
  for (const m of state.moves.values()) if (m.vehicle === vehicle) ids.add(m.move_id);
  return [...ids];
}

function matches(vehicle, q) {
  if (!q) return true;
  if (vehicle.toLowerCase().includes(q.replace(/\s+/g, ''))) return true;
  if ((state.suppliers.get(vehicle) || '').toLowerCase().includes(q)) return true;
  for (const id of movesOf(vehicle)) {
    if ((state.references.get(id) || '').toLowerCase().includes(q)) return true;
    const m = state.moves.get(id);
    if (!m) continue;
    for (const code of [m.from_location, m.to_location]) {
      if (!code) continue;
      if (code.toLowerCase().includes(q) || siteName(code).toLowerCase().includes(q)) return true;
    }
  }
  return false;
}

function refilter() {
  const shown = new Set();
  for (const v of state.vehicles.keys()) if (matches(v, state.query)) shown.add(v);
  const changed = shown.size !== state.shown.size || [...shown].some((v) => !state.shown.has(v));
  state.shown = shown;
  if (changed) {
    tableDirty = true;
    requestRedraw();
  }
  const n = shown.size;
  const text = state.query
    ? `${n} ${n === 1 ? 'vehicle matches' : 'vehicles match'} “${el.search.value.trim()}”, on the map and in the table.`
    : '';
  setText(el.searchResult, text);
}

// ---------------------------------------------------------------------------
// Drawing: vans, clusters, labels (decluttered)

function requestRedraw() {
  if (redrawPending) return;
  redrawPending = true;
  requestAnimationFrame(drawFrame);
}

function drawFrame(now) {
  redrawPending = false;
  if (!running || view.cssW === 0) return;
  map.beginFrame();

  const wall = Date.now();
  const singles = [];
  let animating = false;

  // Screen positions of the vans the search finds.
  const cells = new Map();
  const clustering = view.zoom < CLUSTER_UNTIL_ZOOM;
  for (const [vehicle, d] of display) {
    if (!state.shown.has(vehicle)) {
      d.sx = NaN;
      continue;
    }
    const [x, y] = currentPos(d, now);
    if (d.dur > 0 && now < d.t0 + d.dur) animating = true;
    d.sx = sx(x);
    d.sy = sy(y);
    const key = clustering ? `${Math.floor(d.sx / CLUSTER_CELL)},${Math.floor(d.sy / CLUSTER_CELL)}` : vehicle;
    let cell = cells.get(key);
    if (!cell) cells.set(key, (cell = []));
    cell.push(vehicle);
  }

  // Nearby vans (one grid cell) become one bubble with their count; the
  // selected van always stands alone.
  const clusters = [];
  for (const members of cells.values()) {
    const alone = members.filter((v) => v === state.selected);
    const rest = members.filter((v) => v !== state.selected);
    if (rest.length >= 2) {
      let cx = 0;
      let cy = 0;
      for (const v of rest) {
        cx += display.get(v).sx;
        cy += display.get(v).sy;
      }
      const alert = rest.some((v) => wall - (alertedAt.get(v) ?? -Infinity) < ALERT_RECENT_MS);
      clusters.push({ x: cx / rest.length, y: cy / rest.length, count: rest.length, members: rest, alert });
    } else {
      alone.push(...rest);
    }
    singles.push(...alone);
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

  // Single vans: bearing ticks, then dots from pre-drawn sprites.
  const groups = { onMove: [], idle: [], alert: [], stale: [] };
  ctx.beginPath();
  for (const vehicle of singles) {
    const d = display.get(vehicle);
    const pos = state.vehicles.get(vehicle);
    let group;
    if (isStale(pos, wall)) group = 'stale';
    else if (wall - (alertedAt.get(vehicle) ?? -Infinity) < ALERT_RECENT_MS) group = 'alert';
    else if (pos && movesOf(vehicle).length > 0) group = 'onMove';
    else group = 'idle';
    groups[group].push(d);
    if (pos && pos.bearing !== null && Number.isFinite(Number(pos.bearing)) && group !== 'stale') {
      const b = (Number(pos.bearing) * Math.PI) / 180;
      ctx.moveTo(d.sx, d.sy);
      ctx.lineTo(d.sx + Math.sin(b) * 14, d.sy - Math.cos(b) * 14);
    }
  }
  ctx.lineWidth = 2.5;
  ctx.lineCap = 'round';
  ctx.strokeStyle = COLOURS.tick;
  ctx.stroke();
  map.drawVans(Object.entries(groups).flatMap(([group, ds]) => ds.map((d) => ({ x: d.sx, y: d.sy, group }))));

  // Cluster bubbles: a dark circle with the count (red ring if one of them
  // has an alert needing action).
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.font = '700 12px Arial, sans-serif';
  for (const c of clusters) {
    c.r = c.count < 10 ? 11 : c.count < 100 ? 13 : 15;
    ctx.beginPath();
    ctx.arc(c.x, c.y, c.r, 0, Math.PI * 2);
    ctx.fillStyle = COLOURS.cluster;
    ctx.fill();
    ctx.lineWidth = 3;
    ctx.strokeStyle = c.alert ? COLOURS.alert : '#ffffff';
    ctx.stroke();
    ctx.fillStyle = '#ffffff';
    ctx.fillText(String(c.count), c.x, c.y + 0.5);
  }

  const picked = state.selected && display.get(state.selected);
  if (picked && Number.isFinite(picked.sx)) {
    ctx.beginPath();
    ctx.arc(picked.sx, picked.sy, VAN_R + 5, 0, Math.PI * 2);
    ctx.lineWidth = 3;
    ctx.strokeStyle = COLOURS.tick;
    ctx.stroke();
  }

  // Labels: the marks (dots, bubbles) are obstacles; each label goes where
  // it covers no mark and no other label, or is left out. Most important
  // first: the selected van, vans with alerts, vans on a move, the rest,
  // then site names (prisons first).
  const taken = [];
  for (const c of clusters) taken.push({ x: c.x - c.r, y: c.y - c.r, w: c.r * 2, h: c.r * 2 });
  for (const v of singles) {
    const d = display.get(v);
    taken.push({ x: d.sx - VAN_R, y: d.sy - VAN_R, w: VAN_R * 2, h: VAN_R * 2 });
  }
  const rank = (v) => (v === state.selected ? 0 : alertedAt.has(v) ? 1 : movesOf(v).length ? 2 : 3);
  const order = [...singles].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1));
  const labels = [];
  for (const v of order) {
    const d = display.get(v);
    const box = map.placeLabel(taken, d.sx, d.sy, VAN_R, map.textWidth(v, LABEL_FONT) + 6);
    if (!box) continue;
    taken.push(box);
    labels.push({ ...box, text: v, kind: 'van' });
  }
  const allSites = view.zoom >= SITE_LABELS_FROM_ZOOM;
  map.placeSiteLabels(taken, labels, (site) => allSites || siteClass(site.kind) === 'prison');
  map.drawLabels(labels);

  if (hovered) {
    const d = display.get(hovered);
    if (d && Number.isFinite(d.sx)) {
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

  drawn.vans = singles.map((v) => ({ vehicle: v, x: display.get(v).sx, y: display.get(v).sy }));
  drawn.clusters = clusters.map((c) => ({ x: c.x, y: c.y, r: c.r, count: c.count, members: c.members }));

  if (animating) requestRedraw();
}

// ---------------------------------------------------------------------------
// Pointer: hover, choose, drag to pan, wheel and pinch to zoom

/** The van or cluster under (x, y) in CSS pixels. */
function hitTest(x, y) {
  for (const c of drawn.clusters) if (Math.hypot(c.x - x, c.y - y) <= c.r + 3) return { cluster: c };
  let best = null;
  let bestD2 = 12 * 12;
  for (const v of drawn.vans) {
    const d2 = (v.x - x) ** 2 + (v.y - y) ** 2;
    if (d2 < bestD2) {
      bestD2 = d2;
      best = v.vehicle;
    }
  }
  return best ? { vehicle: best } : null;
}

function onHover(x, y) {
  const hit = hitTest(x, y);
  const best = hit?.vehicle || null;
  el.canvas.style.cursor = hit ? 'pointer' : 'grab';
  if (best !== hovered) {
    hovered = best;
    if (!best) el.tooltip.hidden = true;
    requestRedraw();
  }
}

function onTap(x, y) {
  const hit = hitTest(x, y);
  if (hit?.cluster) {
    // Zoom in on the group until its vans separate.
    const c = hit.cluster;
    map.zoomAt(4, c.x, c.y);
  } else if (hit?.vehicle) {
    selectVehicle(hit.vehicle);
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
  const ref = movesOf(hovered).map((id) => state.references.get(id)).filter(Boolean)[0];
  const text = `${pos.vehicle}${ref ? ` · ${ref}` : ''} · ${speedText(pos.speed_kmh)} · ${formatTime(pos.ts)}`;
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
const speedText = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? 'speed not known' : `${Math.round(Number(v))} km/h`);

function updateCount() {
  const wall = Date.now();
  let live = 0;
  for (const pos of state.vehicles.values()) if (!isStale(pos, wall)) live++;
  const noun = live === 1 ? 'vehicle' : 'vehicles';
  const stale = state.vehicles.size - live;
  // While disconnected the last known positions stay on screen, but are not
  // called live; vans silent for 5 minutes are never counted live.
  let text = state.connection === 'Live' || state.vehicles.size === 0 ? `${live} ${noun} live` : `${live} ${noun}, not updating`;
  if (stale > 0) text += ` (${stale} silent for 5 minutes or more)`;
  if (el.count.dataset.count !== String(live)) el.count.dataset.count = String(live);
  setText(el.count, text);
}

const STATUS_NAMES = { booked: 'Booked', in_transit: 'On the way', arrived: 'Arrived', completed: 'Completed', cancelled: 'Cancelled' };

/** The vehicle's main move (in transit first), or null. */
function mainMove(vehicle) {
  const ms = movesOf(vehicle).map((id) => state.moves.get(id) || { move_id: id });
  return ms.find((m) => m.status === 'in_transit') || ms[0] || null;
}

/** registration -> { tr, cells: [th, td x5] } */
const rows = new Map();

function updateTable() {
  if (!tableDirty || document.hidden) return;
  tableDirty = false;
  const wall = Date.now();
  for (const [vehicle, r] of rows) {
    if (!state.shown.has(vehicle) || !state.vehicles.has(vehicle)) {
      r.tr.remove();
      rows.delete(vehicle);
    }
  }
  for (const vehicle of state.shown) {
    const pos = state.vehicles.get(vehicle);
    if (!pos) continue;
    let r = rows.get(vehicle);
    if (!r) {
      const tr = document.createElement('tr');
      tr.dataset.vehicle = vehicle;
      const cells = [];
      for (let i = 0; i < 6; i++) {
        const cell = document.createElement(i === 0 ? 'th' : 'td');
        if (i === 0) cell.scope = 'row';
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
    }
    const m = mainMove(vehicle);
    setText(r.cells[1], state.suppliers.get(vehicle) || 'Not known');
    setText(r.cells[2], m ? state.references.get(m.move_id) || 'Reference not known' : 'No move');
    setText(r.cells[3], m && m.from_location ? `${siteName(m.from_location)} to ${siteName(m.to_location)}` : '—');
    const status = m && m.status ? STATUS_NAMES[m.status] || m.status : 'Not on a move';
    setText(r.cells[4], m && m.status === 'in_transit' && m.eta ? `${status}, due ${formatTimeShared(m.eta)}` : status);
    setText(r.cells[5], isStale(pos, wall) ? `${formatTime(pos.ts)} (silent ${ago(wall - Date.parse(pos.ts))})` : formatTime(pos.ts));
  }
  const order = [...rows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const current = [...el.tbody.children].map((tr) => tr.dataset.vehicle);
  if (current.length !== order.length || current.some((v, i) => v !== order[i])) {
    const frag = document.createDocumentFragment();
    for (const v of order) frag.appendChild(rows.get(v).tr);
    el.tbody.appendChild(frag);
  }
  setText(el.tableCount, `(${order.length})`);
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

/** The key an alert and its acknowledgement share: kind, vehicle, move, time (to the ms). */
const alertKey = (a) => `${a.kind}|${a.vehicle}|${a.move_id || ''}|${Date.parse(a.ts)}`;
const severity = (kind) => (INFO_KINDS.has(kind) ? 'info' : 'action');

function updateAlerts() {
  if (!alertsDirty) return;
  alertsDirty = false;
  // Counts by kind, actions first.
  const byKind = new Map();
  let open = 0;
  for (const a of state.alerts) {
    const k = byKind.get(a.kind) || { kind: a.kind, total: 0, open: 0 };
    k.total++;
    if (!state.acks.has(alertKey(a))) {
      k.open++;
      if (severity(a.kind) === 'action') open++;
    }
    byKind.set(a.kind, k);
  }
  const kinds = [...byKind.values()].sort(
    (a, b) => (severity(a.kind) === 'action' ? 0 : 1) - (severity(b.kind) === 'action' ? 0 : 1) || b.open - a.open,
  );
  const counts = document.createDocumentFragment();
  for (const k of kinds) {
    const li = document.createElement('li');
    li.className = `alert-count alert-count--${severity(k.kind)}`;
    li.dataset.kind = k.kind;
    li.dataset.count = String(k.total);
    const n = document.createElement('strong');
    n.textContent = String(k.total);
    li.append(n, ` ${alertName(k.kind)}`);
    if (k.open !== k.total) li.append(` (${k.open} not acknowledged)`);
    counts.appendChild(li);
  }
  el.alertCounts.replaceChildren(counts);
  setText(
    el.alertSummary,
    state.alerts.length === 0
      ? 'No alerts.'
      : `${state.alerts.length} recent alert${state.alerts.length === 1 ? '' : 's'}; ${open} needing action not yet acknowledged.`,
  );

  // Actions not yet acknowledged first, then everything else newest first
  // (an acknowledged alert stays where it was, greyed, with who and when).
  const rank = (a) => (severity(a.kind) === 'action' && !state.acks.has(alertKey(a)) ? 0 : 1);
  const sorted = [...state.alerts].sort((a, b) => rank(a) - rank(b) || Date.parse(b.ts) - Date.parse(a.ts));
  const shown = showAllAlerts ? sorted : sorted.slice(0, ALERTS_SHOWN);
  const frag = document.createDocumentFragment();
  for (const a of shown) frag.appendChild(alertItem(a));
  el.alertList.replaceChildren(frag);
  el.alertMore.hidden = sorted.length <= ALERTS_SHOWN;
  el.alertMore.setAttribute('aria-expanded', String(showAllAlerts));
  setText(el.alertMore, showAllAlerts ? 'Show fewer alerts' : `Show all ${sorted.length} alerts`);
}

let showAllAlerts = false;

/** An engine detail with site codes put as names ("arriving at Leeds (HMP) in about 2 min"). */
function namedDetail(text) {
  return String(text || '').replace(/\b[A-Z0-9][A-Z0-9-]{1,39}\b/g, (code) => siteById.get(code)?.name || code);
}

function alertItem(a) {
  const key = alertKey(a);
  const ack = state.acks.get(key);
  const sev = severity(a.kind);
  const li = document.createElement('li');
  li.className = `alert alert--${sev}${ack ? ' alert--acked' : ''}`;
  li.dataset.key = key;
  li.dataset.kind = a.kind;
  const title = document.createElement('p');
  title.className = 'alert__title';
  const tag = document.createElement('strong');
  tag.className = `tag tag--${sev === 'action' ? 'red' : 'blue'} alert__tag`;
  tag.textContent = sev === 'action' ? 'Action' : 'Information';
  const name = document.createElement('strong');
  name.textContent = ` ${alertName(a.kind)}: `;
  const pick = document.createElement('button');
  pick.type = 'button';
  pick.className = 'link-button';
  pick.textContent = a.vehicle || 'unknown vehicle';
  if (a.vehicle) pick.addEventListener('click', () => selectVehicle(a.vehicle));
  title.append(tag, name, pick);
  li.appendChild(title);
  const about = [];
  const ref = a.move_id && state.references.get(a.move_id);
  if (ref) about.push(`move ${ref}`);
  const m = a.move_id && state.moves.get(a.move_id);
  if (m && m.from_location) about.push(`${siteName(m.from_location)} to ${siteName(m.to_location)}`);
  const supplier = state.suppliers.get(a.vehicle);
  if (supplier) about.push(supplier);
  const meta = document.createElement('p');
  meta.className = 'alerts__meta';
  meta.textContent = [`at ${formatTimeShared(a.ts)}`, ...about].join(' · ') + (a.detail ? ` — ${namedDetail(a.detail)}` : '');
  li.appendChild(meta);
  if (ack) {
    const done = document.createElement('p');
    done.className = 'alert__ack';
    done.textContent = `Acknowledged by ${ack.by} at ${formatTimeShared(ack.at)}`;
    li.appendChild(done);
  } else {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'button button--secondary button--small';
    b.textContent = 'Acknowledge';
    const label = `Acknowledge ${alertName(a.kind)} for ${a.vehicle}`;
    b.setAttribute('aria-label', label);
    b.addEventListener('click', () => acknowledge(a, b));
    li.appendChild(b);
  }
  return li;
}

async function acknowledge(a, button) {
  const by = el.operatorInput.value.trim();
  if (!by) {
    el.operatorError.hidden = false;
    el.operatorGroup.classList.add('form-group--error');
    el.operatorInput.setAttribute('aria-invalid', 'true');
    el.operatorInput.focus();
    return;
  }
  el.operatorError.hidden = true;
  el.operatorGroup.classList.remove('form-group--error');
  el.operatorInput.removeAttribute('aria-invalid');
  try {
    localStorage.setItem(OPERATOR_KEY, by);
  } catch {
    /* storage unavailable */
  }
  button.disabled = true;
  let res;
  try {
    res = await fetch('/api/alerts/ack', {
      method: 'POST',
      headers: { ...authHeaders(), 'Content-Type': 'application/json' },
      body: JSON.stringify({ kind: a.kind, vehicle: a.vehicle, move_id: a.move_id || null, ts: a.ts, by }),
      cache: 'no-store',
    });
  } catch {
    button.disabled = false;
    showNotice('The acknowledgement could not be sent: the engine did not answer. Try again.');
    return;
  }
  if (res.status === 401) return tokenRejected();
  if (!res.ok) {
    button.disabled = false;
    let message = `HTTP ${res.status}`;
    try {
      message = (await res.json()).message || message;
    } catch {
      /* not JSON */
    }
    showNotice(`The acknowledgement was not kept: ${message}`);
    return;
  }
  try {
    applyAck(await res.json());
  } catch {
    /* the alert_ack frame brings it too */
  }
}

function applyAck(k) {
  if (!k || typeof k.by !== 'string' || typeof k.kind !== 'string') return;
  state.acks.set(alertKey(k), { by: k.by, at: k.at });
  alertsDirty = true;
  updateAlerts();
}

/** The acknowledgements kept so far (a screen opened late, or after a reconnect). */
async function loadAcks() {
  try {
    const res = await fetch('/api/alerts', { headers: authHeaders(), cache: 'no-store' });
    if (!res.ok) return;
    const body = await res.json();
    for (const k of body.acks || []) applyAck(k);
    // Alerts the snapshot did not carry (older than its window) stay out.
  } catch {
    /* the next snapshot tries again */
  }
}

// The fleet's names (suppliers, move references), re-read at most every 5 s
// when a van or move the page does not know appears.
let fleetTimer = null;
let fleetLoadedAt = 0;
function fleetInfoWanted() {
  if (fleetTimer) return;
  const wait = Math.max(0, 5000 - (Date.now() - fleetLoadedAt));
  fleetTimer = setTimeout(loadFleetInfo, wait);
}

async function loadFleetInfo() {
  fleetTimer = null;
  fleetLoadedAt = Date.now();
  if (!running) return;
  try {
    const res = await fetch('/api/fleet', { headers: authHeaders(), cache: 'no-store' });
    if (!res.ok) return;
    const body = await res.json();
    for (const v of body.vehicles || []) if (v && v.vehicle && v.supplier) state.suppliers.set(v.vehicle, v.supplier);
    for (const m of body.moves || []) {
      if (!m || !m.move_id) continue;
      if (m.reference) state.references.set(m.move_id, m.reference);
      if (m.vehicle && m.supplier) state.suppliers.set(m.vehicle, m.supplier);
    }
    tableDirty = true;
    alertsDirty = true;
    detailDirty = true;
    refilter();
  } catch {
    /* try again on the next unknown van */
  }
}

function uiTick() {
  refilter();
  updateCount();
  updateTable();
  updateAlerts();
  updateDetail();
  // Colours depend on the clock (stale fixes, recent alerts).
  if (display.size) requestRedraw();
}

// ---------------------------------------------------------------------------
// The selected vehicle: beside the map — its moves by name and reference,
// where it is (the nearest site), and its track over the last hour

let detailDirty = false;
let trackRequest = 0;

function selectVehicle(vehicle) {
  state.selected = vehicle;
  state.track = [];
  detailDirty = true;
  updateDetail();
  el.detailHeading.tabIndex = -1;
  el.detailHeading.focus({ preventScroll: true });
  el.detail.scrollIntoView({ block: 'nearest' });
  loadTrack(vehicle);
  requestRedraw();
}

function clearSelection() {
  state.selected = null;
  state.track = [];
  detailDirty = true;
  updateDetail();
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
    setText(el.detailTrack, n ? `Track of the last hour: ${n} stored reports, drawn in red on the map.` : 'No stored reports in the last hour.');
    el.detailTrack.dataset.points = String(n);
  } catch {
    if (request === trackRequest) setText(el.detailTrack, 'The track could not be loaded.');
  }
  requestRedraw();
}

/** 'near Leeds (HMP), 2.3 km' — the nearest site, never raw coordinates. */
function whereIs(pos) {
  let best = null;
  let bestKm = Infinity;
  for (const s of state.sites) {
    const km = kmBetween(pos.lat, pos.lon, s.lat, s.lon);
    if (km < bestKm) {
      bestKm = km;
      best = s;
    }
  }
  if (!best) return 'Not known';
  return bestKm < 0.5 ? `At ${best.name || best.id}` : `${distance(bestKm * 1000)} from ${best.name || best.id}`;
}

function updateDetail() {
  if (!detailDirty) return;
  detailDirty = false;
  const vehicle = state.selected;
  el.detailEmpty.hidden = Boolean(vehicle);
  el.detailClose.hidden = !vehicle;
  if (!vehicle) {
    setText(el.detailHeading, 'No vehicle chosen');
    el.detailMoves.replaceChildren();
    setText(el.detailTrack, '');
    return;
  }
  const pos = state.vehicles.get(vehicle);
  setText(el.detailHeading, `Vehicle ${vehicle}`);
  const dl = document.createElement('dl');
  const row = (k, v) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    dl.append(dt, dd);
  };
  row('Supplier', state.suppliers.get(vehicle) || 'Not known');
  if (pos) {
    row('Where', whereIs(pos));
    const silent = isStale(pos) ? ` — silent for ${ago(Date.now() - Date.parse(pos.ts))}` : '';
    row('Last report', `${formatTime(pos.ts)}${silent}`);
    row('Speed', speedText(pos.speed_kmh));
  }
  const ids = movesOf(vehicle);
  if (ids.length === 0) row('Move', 'Not carrying a move');
  for (const id of ids) {
    const m = state.moves.get(id);
    row('Move', state.references.get(id) || 'Reference not known');
    if (!m) continue;
    row('From', siteName(m.from_location));
    row('To', siteName(m.to_location));
    row('Status', STATUS_NAMES[m.status] || m.status || 'Not known');
    if (m.eta) row('Expected', `${formatTimeShared(m.eta)}${m.eta_low && m.eta_high ? ` (between ${formatTimeShared(m.eta_low)} and ${formatTimeShared(m.eta_high)})` : ''}`);
    if (m.distance_remaining_m !== null && m.distance_remaining_m !== undefined) row('Distance to go', distance(m.distance_remaining_m));
  }
  const open = state.alerts.filter((a) => a.vehicle === vehicle && !state.acks.has(alertKey(a)));
  if (open.length) row('Alerts', open.map((a) => alertName(a.kind)).join(', '));
  el.detailMoves.replaceChildren(dl);
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
      loadAcks();
      loadFleetInfo();
      refilter();
      updateCount();
      break;
    }
    case 'position':
      applyPosition(msg, now);
      break;
    case 'alert':
      addAlert(msg);
      break;
    case 'alert_ack':
      applyAck(msg);
      break;
    case 'move':
      if (typeof msg.move_id === 'string') {
        if (!state.references.has(msg.move_id)) fleetInfoWanted();
        state.moves.set(msg.move_id, msg);
        detailDirty = true;
        tableDirty = true;
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
      // arrival, departure and future frame types are not shown here.
      break;
  }
}

function addAlert(a) {
  if (!a || typeof a !== 'object') return;
  const alert = { kind: a.kind, vehicle: a.vehicle, move_id: a.move_id, ts: a.ts, detail: a.detail };
  const key = alertKey(alert);
  if (state.alerts.some((x) => alertKey(x) === key)) return;
  state.alerts.push(alert);
  if (state.alerts.length > MAX_ALERTS) state.alerts.splice(0, state.alerts.length - MAX_ALERTS);
  if (typeof a.vehicle === 'string' && severity(a.kind) === 'action') {
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

// Tests close the socket to check the reconnects.
window.movewatchControl = { live };

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
      siteById = new Map(state.sites.map((s) => [s.id, s]));
      sitesLoaded = true;
      map.setSites(state.sites);
      describeSites();
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
  const path = await loadBasemapPath(authHeaders());
  if (!path) return; // tried again on the next start
  map.setBasemap(path);
  requestRedraw();
}

async function start() {
  running = true;
  el.tokenSection.hidden = true;
  el.live.hidden = false;
  live.setStatus('Connecting…', 'grey');
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
  clearTimeout(fleetTimer);
  fleetTimer = null;
  state.vehicles.clear();
  state.moves.clear();
  state.acks.clear();
  clearSelection();
  state.alerts = [];
  state.shown = new Set();
  display.clear();
  alertedAt.clear();
  state.sites = [];
  siteById = new Map();
  map.setSites([]);
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

map.attachPointer({ onTap, onHover, onLeave: onPointerLeave });
el.zoomIn.addEventListener('click', () => map.zoomAt(2));
el.zoomOut.addEventListener('click', () => map.zoomAt(0.5));
el.zoomReset.addEventListener('click', () => map.resetView());
renderKey(el.key, [
  ['onMove', 'Van carrying a move'],
  ['idle', 'Van not on a move'],
  ['alert', 'Van with an alert needing action'],
  ['stale', 'No report for 5 minutes (not counted live)'],
  ['cluster', 'Vans close together: zoom in to separate them'],
  ['prison', 'Prison'],
  ['court', 'Court'],
  ['police', 'Police station'],
  ['other', 'Other site (hospital, immigration or secure children’s estate)'],
]);
el.alertMore.addEventListener('click', () => {
  showAllAlerts = !showAllAlerts;
  alertsDirty = true;
  updateAlerts();
});
el.detailClose.addEventListener('click', clearSelection);
el.search.addEventListener('input', () => {
  state.query = el.search.value.trim().toLowerCase();
  refilter();
  updateTable();
});
try {
  el.operatorInput.value = localStorage.getItem(OPERATOR_KEY) || '';
} catch {
  /* storage unavailable */
}
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
  live.setStatus('Not connected', 'grey');
  showTokenForm(null);
}

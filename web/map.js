// movewatch — the map layer both pages share (/control and /site/{id}).
//
// One canvas map, drawn here with no library and nothing from the internet
// (docs/PAGES.md): the projection, the basemap (/data/basemap.geojson), the
// site symbols, the van dots, labels that never overlap and never leave the
// canvas (placed or dropped), zoom and pan (buttons, wheel, drag, pinch), and
// the key built from the same colours the canvas uses. A page keeps only what
// is its own: which vans and sites to draw, and in which order to label them.
// What was drawn last is kept in `window.movewatchMap` for the browser tests.

// Fit England and Wales; Scotland may be cut off at the top.
const BOUNDS = { west: -6.5, east: 2.0, south: 49.8, north: 55.9 };
const KX = Math.cos((53.5 * Math.PI) / 180);
export const MAP_W = (BOUNDS.east - BOUNDS.west) * KX; // map units (degrees of latitude)
export const MAP_H = BOUNDS.north - BOUNDS.south;
const KM_PER_UNIT = 111.2;

/** Projection: equirectangular, x scaled by cos(53.5°); map units are degrees of latitude. */
export const mx = (lon) => (lon - BOUNDS.west) * KX;
export const my = (lat) => BOUNDS.north - lat;

export const COLOURS = {
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
  cluster: '#0b0c0c',
};

export const VAN_R = 6;
const VAN_FILL = { stale: COLOURS.stale, idle: COLOURS.idle, onMove: COLOURS.onMove, alert: COLOURS.alert };

export const LABEL_FONT = '600 12px Arial, sans-serif';
export const SITE_FONT = '12px Arial, sans-serif';
export const HOME_FONT = '700 13px Arial, sans-serif';
export const LABEL_H = 16;

export const SITE_RANK = { prison: 3, court: 2, other: 1, police: 0 };

export function siteClass(kind) {
  return kind === 'prison' || kind === 'court' || kind === 'police' ? kind : 'other';
}

/** A site's symbol at (x, y) in CSS pixels; `home` is the board's own site. */
export function drawSite(c, cls, x, y) {
  c.beginPath();
  switch (cls) {
    case 'home':
      c.fillStyle = COLOURS.highlight;
      c.fillRect(x - 9, y - 9, 18, 18);
      c.fillStyle = COLOURS.prison;
      c.fillRect(x - 6, y - 6, 12, 12);
      return;
    case 'prison':
      c.fillStyle = COLOURS.prison;
      c.fillRect(x - 3.5, y - 3.5, 7, 7);
      return;
    case 'origin':
      c.fillStyle = '#ffffff';
      c.fillRect(x - 5, y - 5, 10, 10);
      c.lineWidth = 2;
      c.strokeStyle = COLOURS.prison;
      c.strokeRect(x - 5, y - 5, 10, 10);
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

/** The basemap's polygons as one Path2D in map units. */
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
  for (const f of geojson.features || [geojson]) {
    const g = f && (f.geometry || f);
    if (!g) continue;
    if (g.type === 'Polygon') g.coordinates.forEach(addRing);
    else if (g.type === 'MultiPolygon') g.coordinates.forEach((poly) => poly.forEach(addRing));
  }
  return path;
}

let basemapLoad = null;
/** The engine's basemap (fetched once per page; retried after a failure). */
export function loadBasemap(headers = {}) {
  if (!basemapLoad) {
    basemapLoad = fetch('/data/basemap.geojson', { headers })
      .then((res) => {
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return res.json();
      })
      .then(buildBasemap)
      .catch((err) => {
        basemapLoad = null;
        console.warn('movewatch: basemap not loaded', err);
        return null;
      });
  }
  return basemapLoad;
}

export const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

/** Kilometres between two points (near enough at these distances). */
export function kmBetween(lat1, lon1, lat2, lon2) {
  const k = Math.cos((((lat1 + lat2) / 2) * Math.PI) / 180);
  return Math.hypot((lat2 - lat1) * KM_PER_UNIT, (lon2 - lon1) * KM_PER_UNIT * k);
}

/**
 * A canvas map: the view (zoom and centre over the fitted scale), the static
 * layer (sea, land, coast, site symbols) on an offscreen canvas redrawn once
 * per change of view, van sprites, and labels.
 */
export class MapView {
  constructor(canvas, { minZoom = 1, maxZoom = 200, onView = null } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.base = document.createElement('canvas');
    this.minZoom = minZoom;
    this.maxZoom = maxZoom;
    this.onView = onView;
    this.view = { cssW: 0, cssH: 0, dpr: 1, fit: 1, zoom: 1, cx: MAP_W / 2, cy: MAP_H / 2, scale: 1, ox: 0, oy: 0 };
    this.basemap = null;
    this.sites = []; // least important first (drawn first, so prisons stay on top)
    this.sprites = new Map();
    this.widths = new Map();
    /** What was drawn last: for the tests, hit-testing and the text alternative's checks. */
    this.drawn = { vans: [], clusters: [], labels: [], zoom: 1, ox: 0, oy: 0, width: 0, height: 0, frames: 0 };
    window.movewatchMap = this.drawn;
  }

  sx(x) {
    return this.view.ox + x * this.view.scale;
  }

  sy(y) {
    return this.view.oy + y * this.view.scale;
  }

  /** [x, y] in CSS pixels of a longitude and latitude. */
  project(lon, lat) {
    return [this.sx(mx(lon)), this.sy(my(lat))];
  }

  /** Sizes the canvas (CSS pixels); true when anything changed. */
  setSize(cssW, cssH) {
    const v = this.view;
    const dpr = Math.min(window.devicePixelRatio || 1, 3);
    if (cssW === v.cssW && cssH === v.cssH && dpr === v.dpr) return false;
    v.cssW = cssW;
    v.cssH = cssH;
    v.dpr = dpr;
    v.fit = Math.min(cssW / MAP_W, cssH / MAP_H);
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    this.drawn.width = cssW;
    this.drawn.height = cssH;
    this.applyView();
    return true;
  }

  applyView() {
    const v = this.view;
    v.zoom = Math.min(this.maxZoom, Math.max(this.minZoom, v.zoom));
    v.scale = v.fit * v.zoom;
    // Keep the centre on the map.
    v.cx = Math.min(MAP_W, Math.max(0, v.cx));
    v.cy = Math.min(MAP_H, Math.max(0, v.cy));
    v.ox = v.cssW / 2 - v.cx * v.scale;
    v.oy = v.cssH / 2 - v.cy * v.scale;
    this.drawn.zoom = v.zoom;
    // Where the map's origin is drawn (CSS pixels): a drag moves it.
    this.drawn.ox = v.ox;
    this.drawn.oy = v.oy;
    this.renderBase();
    if (this.onView) this.onView(v);
  }

  /** Zooms by `factor` keeping the map point under (px, py) where it is. */
  zoomAt(factor, px = this.view.cssW / 2, py = this.view.cssH / 2) {
    const v = this.view;
    const x = (px - v.ox) / v.scale;
    const y = (py - v.oy) / v.scale;
    v.zoom = Math.min(this.maxZoom, Math.max(this.minZoom, v.zoom * factor));
    const scale = v.fit * v.zoom;
    v.cx = x - (px - v.cssW / 2) / scale;
    v.cy = y - (py - v.cssH / 2) / scale;
    this.applyView();
  }

  panBy(dx, dy) {
    this.view.cx -= dx / this.view.scale;
    this.view.cy -= dy / this.view.scale;
    this.applyView();
  }

  resetView() {
    this.view.zoom = 1;
    this.view.cx = MAP_W / 2;
    this.view.cy = MAP_H / 2;
    this.applyView();
  }

  /**
   * Fits the view to points ([lon, lat]) with `pad` CSS pixels kept free on
   * every side, showing at least `minKm` across. Only when something changed.
   */
  fitTo(points, { pad = 40, minKm = 20 } = {}) {
    const v = this.view;
    if (!points.length || !v.cssW) return;
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const [lon, lat] of points) {
      x0 = Math.min(x0, mx(lon));
      x1 = Math.max(x1, mx(lon));
      y0 = Math.min(y0, my(lat));
      y1 = Math.max(y1, my(lat));
    }
    const min = minKm / KM_PER_UNIT;
    const w = Math.max(x1 - x0, min);
    const h = Math.max(y1 - y0, min);
    const scale = Math.min((v.cssW - 2 * pad) / w, (v.cssH - 2 * pad) / h);
    const zoom = Math.min(this.maxZoom, Math.max(this.minZoom, scale / v.fit));
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    if (Math.abs(zoom - v.zoom) < 1e-6 && Math.abs(cx - v.cx) < 1e-9 && Math.abs(cy - v.cy) < 1e-9) return;
    v.zoom = zoom;
    v.cx = cx;
    v.cy = cy;
    this.applyView();
  }

  setBasemap(path) {
    this.basemap = path;
    this.renderBase();
  }

  /** Sites to draw ({ id, name, kind, lat, lon, cls? }); `cls` overrides the kind's symbol. */
  setSites(sites) {
    const rank = (s) => (s.cls === 'home' ? 9 : s.cls === 'origin' ? 8 : SITE_RANK[siteClass(s.kind)]);
    this.sites = [...sites].sort((a, b) => rank(a) - rank(b));
    this.renderBase();
  }

  // The static layer: sea, land and coast, site symbols. Site names are drawn
  // with the vans' labels, so that no two labels ever overlap.
  renderBase() {
    const v = this.view;
    if (!v.cssW) return;
    const base = this.base;
    base.width = this.canvas.width;
    base.height = this.canvas.height;
    const c = base.getContext('2d');
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.fillStyle = COLOURS.sea;
    c.fillRect(0, 0, base.width, base.height);
    if (this.basemap) {
      const s = v.scale * v.dpr;
      c.setTransform(s, 0, 0, s, v.ox * v.dpr, v.oy * v.dpr);
      c.fillStyle = COLOURS.land;
      c.fill(this.basemap, 'evenodd');
      c.lineWidth = (0.8 * v.dpr) / s;
      c.lineJoin = 'round';
      c.strokeStyle = COLOURS.coast;
      c.stroke(this.basemap);
    }
    c.setTransform(v.dpr, 0, 0, v.dpr, 0, 0);
    for (const site of this.sites) {
      const [x, y] = this.project(site.lon, site.lat);
      if (x < -10 || y < -10 || x > v.cssW + 10 || y > v.cssH + 10) continue;
      const cls = site.cls || siteClass(site.kind);
      c.globalAlpha = cls === 'home' ? 1 : 0.8;
      drawSite(c, cls, x, y);
    }
    c.globalAlpha = 1;
  }

  /** Starts a frame: the static layer, then CSS-pixel drawing on the canvas. */
  beginFrame() {
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(this.view.dpr, 0, 0, this.view.dpr, 0, 0);
    return ctx;
  }

  /** A van dot of one colour group (stale, idle, onMove, alert), drawn once per device pixel ratio. */
  vanSprite(group) {
    const dpr = this.view.dpr;
    const key = `${group}@${dpr}`;
    let sprite = this.sprites.get(key);
    if (!sprite) {
      const size = Math.ceil((VAN_R * 2 + 3) * dpr);
      sprite = document.createElement('canvas');
      sprite.width = size;
      sprite.height = size;
      const c = sprite.getContext('2d');
      c.scale(dpr, dpr);
      c.beginPath();
      c.arc(size / dpr / 2, size / dpr / 2, VAN_R, 0, Math.PI * 2);
      c.fillStyle = VAN_FILL[group];
      c.fill();
      c.lineWidth = 1.5;
      c.strokeStyle = group === 'stale' ? COLOURS.staleEdge : COLOURS.vanEdge;
      c.stroke();
      this.sprites.set(key, sprite);
    }
    return sprite;
  }

  /** Van dots: `vans` are { x, y, group } in CSS pixels. */
  drawVans(vans) {
    const size = (VAN_R * 2 + 3);
    for (const group of ['stale', 'idle', 'onMove', 'alert']) {
      const sprite = this.vanSprite(group);
      const s = sprite.width / this.view.dpr || size;
      for (const d of vans) if (d.group === group) this.ctx.drawImage(sprite, d.x - s / 2, d.y - s / 2, s, s);
    }
  }

  textWidth(text, font) {
    const key = `${font}|${text}`;
    let w = this.widths.get(key);
    if (w === undefined) {
      this.ctx.font = font;
      w = Math.ceil(this.ctx.measureText(text).width);
      if (this.widths.size > 5000) this.widths.clear();
      this.widths.set(key, w);
    }
    return w;
  }

  /**
   * Places a label of `w` beside a point of radius `r` at (x, y): right, left,
   * above, below, then the four corners — the first spot inside the map that
   * covers no label and no mark already placed. Null when there is none (the
   * label is left out).
   */
  placeLabel(taken, x, y, r, w, h = LABEL_H) {
    const spots = [
      { x: x + r + 3, y: y - h / 2 },
      { x: x - r - 3 - w, y: y - h / 2 },
      { x: x - w / 2, y: y - r - 2 - h },
      { x: x - w / 2, y: y + r + 2 },
      { x: x - r, y: y - r - 2 - h },
      { x: x + r - w, y: y - r - 2 - h },
      { x: x - r, y: y + r + 2 },
      { x: x + r - w, y: y + r + 2 },
    ];
    for (const b of spots) {
      const box = { x: b.x, y: b.y, w, h };
      if (box.x < 0 || box.y < 0 || box.x + w > this.view.cssW || box.y + h > this.view.cssH) continue;
      if (taken.some((t) => overlaps(t, box))) continue;
      return box;
    }
    return null;
  }

  /**
   * Labels the sites (most important first) where they fit, after the vans.
   * `only(site)` says which to name; the labels are pushed onto `labels`.
   */
  placeSiteLabels(taken, labels, only = () => true) {
    const v = this.view;
    for (let i = this.sites.length - 1; i >= 0; i--) {
      const s = this.sites[i];
      if (s.cls === 'home' || !only(s)) continue;
      const [x, y] = this.project(s.lon, s.lat);
      if (x < 0 || y < 0 || x > v.cssW || y > v.cssH) continue;
      const text = s.name || s.id;
      const box = this.placeLabel(taken, x, y, 4, this.textWidth(text, SITE_FONT) + 6);
      if (!box) continue;
      taken.push(box);
      labels.push({ ...box, text, kind: 'site' });
    }
  }

  /** Draws labels ({ x, y, w, h, text, kind: van | site | home }) and keeps them in `drawn`. */
  drawLabels(labels) {
    const ctx = this.ctx;
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    for (const l of labels) {
      const home = l.kind === 'home';
      ctx.fillStyle = home ? '#0b0c0c' : l.kind === 'van' ? 'rgba(255,255,255,0.92)' : 'rgba(243,242,241,0.85)';
      ctx.fillRect(l.x, l.y, l.w, l.h);
      ctx.font = home ? HOME_FONT : l.kind === 'van' ? LABEL_FONT : SITE_FONT;
      ctx.fillStyle = home ? '#ffffff' : l.kind === 'van' ? '#0b0c0c' : '#383f43';
      ctx.fillText(l.text, l.x + 3, l.y + l.h / 2 + 0.5);
    }
    this.drawn.labels = labels.map(({ x, y, w, h, text, kind }) => ({ x, y, w, h, text, kind }));
    this.drawn.frames++;
  }

  /**
   * Drag to pan, wheel and two fingers to zoom; `onTap(x, y)` for a click
   * that was no drag, `onHover(x, y)` and `onLeave()` for the pointer.
   */
  attachPointer({ onTap = () => {}, onHover = () => {}, onLeave = () => {} } = {}) {
    const canvas = this.canvas;
    const pointers = new Map();
    let dragged = false;
    let pinchStart = null;
    const local = (ev) => {
      const rect = canvas.getBoundingClientRect();
      return [ev.clientX - rect.left, ev.clientY - rect.top];
    };
    canvas.addEventListener('pointerdown', (ev) => {
      canvas.setPointerCapture(ev.pointerId);
      pointers.set(ev.pointerId, local(ev));
      dragged = false;
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        pinchStart = { dist: Math.hypot(a[0] - b[0], a[1] - b[1]), zoom: this.view.zoom };
      }
    });
    canvas.addEventListener('pointermove', (ev) => {
      const [x, y] = local(ev);
      const prev = pointers.get(ev.pointerId);
      if (!prev) {
        onHover(x, y);
        return;
      }
      pointers.set(ev.pointerId, [x, y]);
      if (pointers.size === 2 && pinchStart) {
        const [a, b] = [...pointers.values()];
        const dist = Math.hypot(a[0] - b[0], a[1] - b[1]);
        if (pinchStart.dist > 0) this.zoomAt((pinchStart.zoom * dist) / pinchStart.dist / this.view.zoom, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
        dragged = true;
        return;
      }
      const dx = x - prev[0];
      const dy = y - prev[1];
      if (dragged || Math.hypot(dx, dy) > 3) {
        dragged = true;
        canvas.classList.add('map--dragging');
        this.panBy(dx, dy);
      } else {
        pointers.set(ev.pointerId, prev);
      }
    });
    const up = (ev) => {
      const wasDrag = dragged;
      pointers.delete(ev.pointerId);
      if (pointers.size < 2) pinchStart = null;
      canvas.classList.remove('map--dragging');
      if (wasDrag || ev.type === 'pointercancel') return;
      onTap(...local(ev));
    };
    canvas.addEventListener('pointerup', up);
    canvas.addEventListener('pointercancel', up);
    canvas.addEventListener('pointerleave', () => onLeave());
    canvas.addEventListener(
      'wheel',
      (ev) => {
        ev.preventDefault();
        const [x, y] = local(ev);
        this.zoomAt(Math.exp(-ev.deltaY * 0.002), x, y);
      },
      { passive: false },
    );
  }
}

// ---------------------------------------------------------------------------
// The key: the same symbols as the canvas, as small SVGs beside their words.

export const STALE_MS = 5 * 60 * 1000; // no report for this long: a grey dot

const SVG = 'http://www.w3.org/2000/svg';
const KEY_SHAPES = {
  van: (fill, edge = '#ffffff') => [['circle', { cx: 8, cy: 8, r: 5.5, fill, stroke: edge, 'stroke-width': 1.5 }]],
  cluster: () => [['circle', { cx: 8, cy: 8, r: 7, fill: COLOURS.cluster }], ['text', { x: 8, y: 11, 'font-size': 8, 'text-anchor': 'middle', fill: '#ffffff' }, '3']],
  home: () => [['rect', { x: 1, y: 1, width: 14, height: 14, fill: COLOURS.highlight }], ['rect', { x: 3.5, y: 3.5, width: 9, height: 9, fill: COLOURS.prison }]],
  prison: () => [['rect', { x: 4, y: 4, width: 8, height: 8, fill: COLOURS.prison }]],
  origin: () => [['rect', { x: 3, y: 3, width: 10, height: 10, fill: '#ffffff', stroke: COLOURS.prison, 'stroke-width': 2 }]],
  court: () => [['polygon', { points: '8,3 13,12 3,12', fill: COLOURS.court, stroke: COLOURS.prison, 'stroke-width': 1 }]],
  police: () => [['circle', { cx: 8, cy: 8, r: 4, fill: COLOURS.police, stroke: '#ffffff', 'stroke-width': 1 }]],
  other: () => [['polygon', { points: '8,3 13,8 8,13 3,8', fill: COLOURS.other, stroke: '#ffffff', 'stroke-width': 1 }]],
};
const KEY_SYMBOLS = {
  onMove: () => KEY_SHAPES.van(COLOURS.onMove),
  idle: () => KEY_SHAPES.van(COLOURS.idle),
  alert: () => KEY_SHAPES.van(COLOURS.alert),
  stale: () => KEY_SHAPES.van(COLOURS.stale, COLOURS.staleEdge),
  cluster: KEY_SHAPES.cluster,
  home: KEY_SHAPES.home,
  prison: KEY_SHAPES.prison,
  origin: KEY_SHAPES.origin,
  court: KEY_SHAPES.court,
  police: KEY_SHAPES.police,
  other: KEY_SHAPES.other,
};

/** Fills a list with the key: `items` are [symbol, words] ('onMove', 'Van carrying a move'). */
export function renderKey(list, items) {
  const frag = document.createDocumentFragment();
  for (const [symbol, words] of items) {
    const li = document.createElement('li');
    li.dataset.symbol = symbol;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'legend__swatch');
    svg.setAttribute('viewBox', '0 0 16 16');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    for (const [tag, attrs, text] of KEY_SYMBOLS[symbol]()) {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text) node.textContent = text;
      svg.appendChild(node);
    }
    li.append(svg, words);
    frag.appendChild(li);
  }
  list.replaceChildren(frag);
}

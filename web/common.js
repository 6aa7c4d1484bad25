// movewatch — what both pages (/control and /site/{id}) share: the access
// token, the live connection (WebSocket with reconnect and back-off, its
// status and staleness), notices, and how times, countdowns and distances are
// written.
//
// The token rule: taken once from `?token=` (then removed from the address
// bar, so it stays out of history, bookmarks and screenshots) or typed into
// the token form; kept in this tab's sessionStorage only; sent as
// `Authorization: Bearer` to the REST API and as a WebSocket subprotocol
// (`movewatch.token.<hex>`) — never in a URL, so no console message (Chromium
// prints a failed WebSocket's URL) and no log line can show it.

const TOKEN_KEY = 'movewatch.token';

/** The token from the address bar (kept for this tab) or the one kept before, or null. */
export function readToken() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get('token');
  if (fromUrl !== null) {
    params.delete('token');
    const q = params.toString();
    history.replaceState(history.state, '', location.pathname + (q ? `?${q}` : '') + location.hash);
    if (fromUrl.trim()) {
      saveToken(fromUrl.trim());
      return fromUrl.trim();
    }
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** Keeps `token` for this tab (memory only when storage is unavailable). */
export function saveToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* storage unavailable: memory only */
  }
}

/** Forgets the kept token (it was refused, or the user asked for another). */
export function forgetToken() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable */
  }
}

/** Headers for the REST API. */
export function authHeaders(token) {
  return { Authorization: `Bearer ${token}` };
}

/** The WebSocket subprotocols carrying the token (hex of its UTF-8, so any token fits). */
export function socketProtocols(token) {
  const hex = [...new TextEncoder().encode(token)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return ['movewatch.v1', `movewatch.token.${hex}`];
}

// ---------------------------------------------------------------------------
// Formatting: one implementation for both pages.

// Formatters are costly to create: make them once.
const HM = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', hour12: false });
const HMS = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
const DAY = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short' });

/**
 * A time as HH:MM (or HH:MM:SS with `seconds`), local time, with the day
 * before it when it is not today; 'Not known' for a missing or bad time.
 */
export function formatTime(ts, { seconds = false } = {}) {
  if (ts === null || ts === undefined || ts === '') return 'Not known';
  const t = new Date(ts);
  if (Number.isNaN(t.getTime())) return 'Not known';
  const time = (seconds ? HMS : HM).format(t);
  if (t.toDateString() === new Date().toDateString()) return time;
  return `${DAY.format(t)} ${time}`;
}

/** 'In 12 min', 'In 1 h 05 min', 'Due now'. */
export function countdown(ts) {
  const t = Date.parse(ts);
  if (!Number.isFinite(t)) return 'Not known';
  const mins = Math.round((t - Date.now()) / 60000);
  if (mins <= 0) return 'Due now';
  if (mins < 60) return `In ${mins} min`;
  return `In ${Math.floor(mins / 60)} h ${String(mins % 60).padStart(2, '0')} min`;
}

/** '850 m', '12.4 km', or 'Not known'. */
export function distance(m) {
  const v = Number(m);
  if (m === null || m === undefined || !Number.isFinite(v)) return 'Not known';
  return v < 1000 ? `${Math.round(v)} m` : `${(v / 1000).toFixed(1)} km`;
}

/** 'just now', '1 min ago', '12 min ago', '2 h 05 min ago'. */
export function ago(ms) {
  const mins = Math.floor(ms / 60000);
  if (mins < 1) return 'just now';
  if (mins < 60) return `${mins} min ago`;
  return `${Math.floor(mins / 60)} h ${String(mins % 60).padStart(2, '0')} min ago`;
}

export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// ---------------------------------------------------------------------------
// Notices

export function showNotice(node, text) {
  node.textContent = text;
  node.hidden = false;
}

export function hideNotice(node) {
  node.hidden = true;
  node.textContent = '';
}

// ---------------------------------------------------------------------------
// The live connection

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const OFFLINE_AFTER = 4; // failed attempts in a row before 'Offline'
const STALE_AFTER_MS = 60_000; // 'Last update … ago' once no frame for this long

/**
 * One WebSocket subscribed to `channel`, reconnecting with exponential
 * back-off and jitter. Shows its state in `statusEl` (Live / Connecting… /
 * Reconnecting… / Offline / Not connected) and, in `freshnessEl`, how long
 * ago the last frame came once that is more than a minute.
 *
 * - `onFrame(msg)` gets every frame (arrays are unpacked).
 * - `check()` runs before a reconnect when the socket never opened (a
 *   WebSocket refused at the handshake gives no reason): it resolves to
 *   'ok', 'rejected' (401: `onRejected`), 'forbidden' (403: `onForbidden`)
 *   or anything else (try again later).
 *   With `checkAlways`, it runs before every reconnect (to re-read state).
 * - `onStatus(text)` is told each change of status.
 */
export class LiveConnection {
  constructor({ channel, statusEl, freshnessEl = null, onFrame, check, checkAlways = false, onRejected, onForbidden = onRejected, onStatus = () => {} }) {
    Object.assign(this, { channel, statusEl, freshnessEl, onFrame, check, checkAlways, onRejected, onForbidden, onStatus });
    this.token = null;
    this.ws = null;
    this.running = false;
    this.attempts = 0;
    this.timer = null;
    this.lastFrameAt = 0;
    this.status = 'Not connected';
    this.freshnessTimer = null;
    this.onOnline = () => {
      if (this.running && !this.ws) this.connect();
    };
  }

  start(token) {
    this.token = token;
    this.running = true;
    this.attempts = 0;
    this.setStatus('Connecting…', 'grey');
    window.addEventListener('online', this.onOnline);
    clearInterval(this.freshnessTimer);
    this.freshnessTimer = setInterval(() => this.showFreshness(), 5000);
    this.connect();
  }

  stop(status = 'Not connected', colour = 'grey') {
    this.running = false;
    clearTimeout(this.timer);
    this.timer = null;
    clearInterval(this.freshnessTimer);
    this.freshnessTimer = null;
    window.removeEventListener('online', this.onOnline);
    if (this.ws) {
      const s = this.ws;
      this.ws = null;
      try {
        s.close(1000);
      } catch {
        /* already closed */
      }
    }
    this.lastFrameAt = 0;
    this.setStatus(status, colour);
  }

  setStatus(text, colour) {
    this.status = text;
    setText(this.statusEl, text);
    this.statusEl.className = `tag tag--${colour}`;
    this.showFreshness();
    this.onStatus(text);
  }

  /** 'Last update 2 min ago' once frames stop coming (or the link is down). */
  showFreshness() {
    if (!this.freshnessEl) return;
    const age = Date.now() - this.lastFrameAt;
    const stale = this.lastFrameAt > 0 && (age > STALE_AFTER_MS || (this.status !== 'Live' && this.running));
    const text = stale ? `Last update ${ago(age)}` : '';
    setText(this.freshnessEl, text);
    this.freshnessEl.hidden = !stale;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.running) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let sock;
    try {
      sock = new WebSocket(`${proto}//${location.host}/ws`, socketProtocols(this.token));
    } catch {
      this.scheduleReconnect(false);
      return;
    }
    this.ws = sock;
    let opened = false;
    sock.onopen = () => {
      if (this.ws !== sock) return;
      opened = true;
      sock.send(JSON.stringify({ type: 'subscribe', channel: this.channel }));
    };
    sock.onmessage = (ev) => {
      if (this.ws !== sock || typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not JSON: ignore
      }
      this.lastFrameAt = Date.now();
      const frames = Array.isArray(msg) ? msg : [msg];
      for (const f of frames) {
        if (f && f.type === 'snapshot') {
          this.attempts = 0;
          this.setStatus('Live', 'green');
        }
        this.onFrame(f);
      }
      this.showFreshness();
    };
    sock.onclose = (ev) => {
      if (this.ws !== sock) return;
      this.ws = null;
      if (!this.running) return;
      if (ev.code === 1008) {
        this.onRejected();
        return;
      }
      this.scheduleReconnect(opened);
    };
  }

  scheduleReconnect(wasOpen) {
    const offline = navigator.onLine === false || this.attempts >= OFFLINE_AFTER;
    this.setStatus(offline ? 'Offline' : 'Reconnecting…', offline ? 'red' : 'yellow');
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts) * (0.75 + Math.random() * 0.5);
    this.attempts = Math.min(this.attempts + 1, 10);
    this.timer = setTimeout(async () => {
      this.timer = null;
      if (!this.running) return;
      if ((!wasOpen || this.checkAlways) && this.check) {
        const r = await this.check();
        if (!this.running) return;
        if (r === 'rejected') return this.onRejected();
        if (r === 'forbidden') return this.onForbidden();
      }
      this.connect();
    }, delay);
  }
}

// movewatch — the access token both pages use: taken from `?token=` (and then
// removed from the address bar, so it stays out of screenshots and
// shoulder-surfing) or from this tab's sessionStorage. Storage may be
// unavailable (private modes, policies): the token then lives in memory only.

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

/** Keeps `token` for this tab. */
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

// The pages' only way to the API: fetch with the access token held in memory, the refresh token
// in sessiond's HttpOnly cookie (cookie mode, with the CSRF header), and DOM building that only
// ever sets textContent, so no value from the API is read as HTML.
'use strict';

// DPoP (RFC 9449) for a page that binds its session to this browser: an ECDSA P-256 key pair
// made by WebCrypto with a non-extractable private key, kept in IndexedDB (a CryptoKey survives
// there without ever being exported), signs a proof for each login, refresh and API call. A
// copied refresh cookie is useless without it.
const Dpop = (() => {
  const DB = 'sessiond-dpop', STORE = 'keys', ID = 'device';
  let key = null;
  let nonce = null;

  function idb(mode, op) {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open(DB, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(STORE);
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const req = op(open.result.transaction(STORE, mode).objectStore(STORE));
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      };
    });
  }

  function b64url(bytes) {
    let s = '';
    for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  const text = (s) => new TextEncoder().encode(s);

  function deviceKey() {
    if (!key) {
      key = (async () => {
        let pair = await idb('readonly', (s) => s.get(ID));
        if (!pair) {
          pair = await crypto.subtle.generateKey(
            { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
          await idb('readwrite', (s) => s.put(pair, ID));
        }
        const { kty, crv, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
        return { pair, jwk: { kty, crv, x, y } };
      })();
    }
    return key;
  }

  // A proof for `method` on `path` of this origin; with an access token, bound to it (`ath`).
  async function proof(method, path, accessToken) {
    const k = await deviceKey();
    const header = { typ: 'dpop+jwt', alg: 'ES256', jwk: k.jwk };
    const claims = {
      jti: crypto.randomUUID(), htm: method, htu: location.origin + path,
      iat: Math.floor(Date.now() / 1000),
    };
    if (accessToken) claims.ath = b64url(await crypto.subtle.digest('SHA-256', text(accessToken)));
    if (nonce) claims.nonce = nonce;
    const input = b64url(text(JSON.stringify(header))) + '.' + b64url(text(JSON.stringify(claims)));
    // WebCrypto's ECDSA signature is r || s, the form JWS ES256 takes.
    const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, k.pair.privateKey, text(input));
    return input + '.' + b64url(sig);
  }

  // Remembers the server's nonce; true when the answer asks for a retry with it.
  async function sawAnswer(r) {
    const n = r.headers.get('DPoP-Nonce');
    if (n) nonce = n;
    if (!n || r.ok) return false;
    const data = await r.clone().json().catch(() => null);
    return !!data && data.error === 'use_dpop_nonce';
  }

  return { proof, sawAnswer };
})();

const Api = (() => {
  let accessToken = null;
  let tokenType = 'Bearer';
  let bound = false;

  // Sends with a DPoP proof once `useDpop` was called (retrying once for a server nonce).
  async function send(method, path, init, withToken) {
    for (let attempt = 0; ; attempt++) {
      const headers = Object.assign({}, init.headers);
      if (bound) headers['DPoP'] = await Dpop.proof(method, path, withToken ? accessToken : null);
      const r = await fetch(path, Object.assign({}, init, { method, headers, credentials: 'same-origin' }));
      if (!bound || attempt > 0 || !(await Dpop.sawAnswer(r))) return r;
    }
  }

  async function request(method, path, body) {
    const headers = {};
    if (accessToken) headers['Authorization'] = tokenType + ' ' + accessToken;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return send(method, path, {
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    }, tokenType === 'DPoP');
  }

  function took(data) {
    accessToken = data.access_token;
    tokenType = data.token_type === 'DPoP' ? 'DPoP' : 'Bearer';
  }

  async function call(method, path, body) {
    let r = await request(method, path, body);
    if (r.status === 401 && accessToken && (await refresh())) {
      r = await request(method, path, body);
    }
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const e = new Error((data && data.message) || ('HTTP ' + r.status));
      e.status = r.status;
      e.code = data && data.error;
      throw e;
    }
    return data;
  }

  async function login(username, password) {
    const r = await send('POST', '/v1/auth/login', {
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password, mode: 'cookie' }),
    }, false);
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new Error((data && data.message) || ('HTTP ' + r.status));
    took(data);
    return data;
  }

  // A new access token from the refresh cookie, if the browser still has one.
  async function refresh() {
    const r = await send('POST', '/v1/auth/refresh', { headers: { 'X-Sessiond-CSRF': '1' } }, false);
    if (!r.ok) {
      accessToken = null;
      return false;
    }
    took(await r.json());
    return true;
  }

  // Binds this page's sessions to the browser's DPoP key (call before signing in).
  function useDpop() {
    bound = !!(window.crypto && crypto.subtle && window.indexedDB);
  }

  // Signing out must work with an expired access token too: the refresh cookie ends the
  // session and the server clears it, so the reload that follows cannot sign back in.
  async function logout() {
    accessToken = null;
    await fetch('/v1/auth/refresh/logout', {
      method: 'POST',
      headers: { 'X-Sessiond-CSRF': '1' },
      credentials: 'same-origin',
    }).catch(() => {});
  }

  // el('td', {class: 'x'}, 'text', otherNode): strings become text nodes, never markup.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'onclick') node.addEventListener('click', v);
      else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function place(loc) {
    if (!loc) return 'unknown place';
    const parts = [loc.city, loc.country].filter(Boolean);
    return parts.length ? parts.join(', ') : 'unknown place';
  }

  function device(d, ua) {
    if (!d) return ua || 'unknown device';
    const parts = [d.browser, d.os, d.category].filter((p) => p && p !== 'UNKNOWN');
    return parts.length ? parts.join(' · ') : (ua || 'unknown device');
  }

  function when(t) {
    if (!t) return '';
    const d = new Date(t);
    return isNaN(d) ? t : d.toLocaleString();
  }

  return { call, login, refresh, logout, useDpop, el, place, device, when };
})();

// Sign-in form wiring shared by both pages: calls onSignedIn once a token is held.
function wireSignIn(onSignedIn) {
  const form = document.getElementById('signin');
  const error = document.getElementById('signin-error');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      await Api.login(form.elements.username.value, form.elements.password.value);
      form.reset();
      await onSignedIn();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  // A browser that still holds the refresh cookie goes straight in.
  Api.refresh().then((ok) => (ok ? onSignedIn() : null));
}

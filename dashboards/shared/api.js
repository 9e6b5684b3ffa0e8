// The pages' only way to the API: fetch with the access token held in memory, the refresh token
// in sessiond's HttpOnly cookie (cookie mode, with the CSRF header), and DOM building that only
// ever sets textContent, so no value from the API is read as HTML.
'use strict';

const Api = (() => {
  let accessToken = null;

  async function request(method, path, body) {
    const headers = {};
    if (accessToken) headers['Authorization'] = 'Bearer ' + accessToken;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
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
    const r = await fetch('/v1/auth/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password, mode: 'cookie' }),
      credentials: 'same-origin',
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new Error((data && data.message) || ('HTTP ' + r.status));
    accessToken = data.access_token;
    return data;
  }

  // A new access token from the refresh cookie, if the browser still has one.
  async function refresh() {
    const r = await fetch('/v1/auth/refresh', {
      method: 'POST',
      headers: { 'X-Sessiond-CSRF': '1' },
      credentials: 'same-origin',
    });
    if (!r.ok) {
      accessToken = null;
      return false;
    }
    accessToken = (await r.json()).access_token;
    return true;
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

  return { call, login, refresh, logout, el, place, device, when };
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

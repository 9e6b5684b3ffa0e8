// "Your devices": list the signed-in user's sessions, revoke one, or all but this one; the
// sign-in notices, answered "this was me" or "this wasn't me".
'use strict';

const $ = (id) => document.getElementById(id);

async function showDevices() {
  const me = await Api.call('GET', '/v1/me');
  $('who').textContent = me.user.username;
  $('signin-section').classList.add('hidden');
  $('devices-section').classList.remove('hidden');
  $('signout').classList.remove('hidden');
  const list = await Api.call('GET', '/v1/me/sessions');
  const rows = list.map((s) =>
    Api.el('tr', { 'data-session': s.session_id, class: s.current ? 'current' : null },
      Api.el('td', {},
        Api.device(s.device, s.user_agent), ' ',
        s.current ? Api.el('span', { class: 'tag current' }, 'this device') : null,
        Api.el('div', { class: 'muted ua' }, s.user_agent || '')),
      Api.el('td', {}, Api.place(s.location)),
      Api.el('td', {}, Api.el('code', {}, s.ip || '')),
      Api.el('td', {}, Api.when(s.last_seen_at)),
      Api.el('td', {}, Api.when(s.created_at)),
      Api.el('td', {}, s.current ? null : Api.el('button', {
        class: 'danger revoke', type: 'button',
        onclick: () => revoke(s),
      }, 'Revoke'))));
  $('devices').replaceChildren(...rows);
  await showNotices();
}

const REASONS = { new_device: 'new device', new_country: 'new country' };

async function showNotices() {
  const list = await Api.call('GET', '/v1/me/notices');
  $('notices-section').classList.toggle('hidden', list.length === 0);
  const rows = list.map((n) =>
    Api.el('tr', { 'data-notice': n.notice_id },
      Api.el('td', {}, Api.device(n.device)),
      Api.el('td', {}, Api.place(n.place)),
      Api.el('td', {}, Api.when(n.created_at)),
      Api.el('td', {}, n.reasons.map((r) => REASONS[r] || r).join(', ')),
      Api.el('td', {}, Api.el('span', { class: 'tag' }, n.status)),
      Api.el('td', {}, n.status !== 'open' ? null : [
        Api.el('button', {
          class: 'secondary confirm', type: 'button',
          onclick: () => answer(n, 'confirm'),
        }, 'This was me'), ' ',
        Api.el('button', {
          class: 'danger deny', type: 'button',
          onclick: () => answer(n, 'deny'),
        }, "This wasn't me")])));
  $('notices').replaceChildren(...rows);
}

async function answer(n, what) {
  if (what === 'deny' && !confirm("Sign out everywhere? You will have to change your password to sign in again.")) return;
  $('notices-error').textContent = '';
  try {
    await Api.call('POST', '/v1/me/notices/' + encodeURIComponent(n.notice_id) + '/' + what);
    if (what === 'deny') {
      location.reload();
      return;
    }
    await showNotices();
  } catch (e) {
    $('notices-error').textContent = e.message;
  }
}

async function revoke(s) {
  if (!confirm('Sign out ' + Api.device(s.device) + ' (' + Api.place(s.location) + ')?')) return;
  await act(() => Api.call('DELETE', '/v1/me/sessions/' + encodeURIComponent(s.session_id)));
}

async function act(f) {
  $('devices-error').textContent = '';
  try {
    await f();
    await showDevices();
  } catch (e) {
    $('devices-error').textContent = e.message;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  // The account page binds its session to this browser's key: a copied cookie is useless.
  Api.useDpop();
  wireSignIn(() => act(async () => {}));
  $('revoke-others').addEventListener('click', () => {
    if (confirm('Sign out every other device?')) act(() => Api.call('DELETE', '/v1/me/sessions'));
  });
  $('signout').addEventListener('click', async () => {
    await Api.logout();
    location.reload();
  });
});

// "Your devices": list the signed-in user's sessions, revoke one, or all but this one.
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

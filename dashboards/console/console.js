// The security console: find a user, a session or an address; read a session's timeline with
// each event's place and device; see rule firings and reuse on a map of its places and a
// diagram of its refresh family (draw.js); revoke with confirmation.
'use strict';

const $ = (id) => document.getElementById(id);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const IP = /^[0-9a-f:.]+(\/\d{1,3})?$/i;

function show(title, actions, ...body) {
  $('result-title').textContent = title;
  $('result-actions').replaceChildren(...actions);
  $('result-body').replaceChildren(...body);
  $('result').classList.remove('hidden');
}

async function guard(f) {
  $('error').textContent = '';
  try {
    await f();
  } catch (e) {
    $('error').textContent = e.message;
  }
}

function ctxOf(e) {
  const d = e.data || {};
  return d.context || (d.inputs && d.inputs.context) || {};
}

function flags(e) {
  const out = [];
  if (e.type === 'rule.fired') {
    const d = e.data || {};
    out.push(Api.el('span', { class: 'tag rule' }, 'rule ' + (d.rule_id || (d.rule && d.rule.id) || '')));
    if (d.mode) out.push(Api.el('span', { class: 'tag' }, d.mode));
    if (d.action) out.push(Api.el('span', { class: 'tag' }, d.action));
  }
  if (e.type === 'session.reuse_detected') {
    out.push(Api.el('span', { class: 'tag reuse' }, 'reuse ' + (e.data.class || '')));
  }
  return out;
}

function detail(e) {
  const d = e.data || {};
  if (e.type === 'rule.fired') return d.explanation || '';
  if (e.type === 'login.failed') return 'username ' + (d.username || '') + ' (' + (d.reason || '') + ')';
  if (d.reason) return String(d.reason);
  return '';
}

function timeline(events) {
  const rows = events.map((e) => {
    const ctx = ctxOf(e);
    return Api.el('tr', { 'data-type': e.type, class: 'event' },
      Api.el('td', {}, Api.when(e.occurred_at)),
      Api.el('td', {}, Api.el('code', {}, e.type), ' ', flags(e)),
      Api.el('td', {}, Api.place(ctx.geo)),
      Api.el('td', {}, ctx.device ? Api.device(ctx.device) : (ctx.user_agent || '')),
      Api.el('td', {}, Api.el('code', {}, ctx.ip || '')),
      Api.el('td', { class: 'detail' }, detail(e)));
  });
  return Api.el('table', {},
    Api.el('thead', {}, Api.el('tr', {},
      ['Time', 'Event', 'Place', 'Device', 'Address', 'Detail'].map((h) => Api.el('th', {}, h)))),
    Api.el('tbody', {}, rows));
}

function confirmed(text, f) {
  return () => { if (confirm(text)) guard(f); };
}

async function openUser(key) {
  const u = await Api.call('GET', '/v1/admin/users/' + encodeURIComponent(key));
  const places = await Api.call('GET', '/v1/admin/users/' + u.user_id + '/places');
  const rows = u.sessions.map((s) => Api.el('tr', { 'data-session': s.session_id },
    Api.el('td', {}, Api.el('a', { href: '#', class: 'open-session', onclick: (ev) => { ev.preventDefault(); guard(() => openSession(s.session_id)); } }, s.session_id)),
    Api.el('td', {}, s.status),
    Api.el('td', {}, Api.place(s.last_context.geo)),
    Api.el('td', {}, Api.device(s.last_context.device, s.last_context.user_agent)),
    Api.el('td', {}, Api.el('code', {}, s.last_context.ip || '')),
    Api.el('td', {}, Api.when(s.last_seen_at))));
  show('User ' + u.username + ' (' + u.status + ')', [
    Api.el('button', { class: 'danger', type: 'button', id: 'logout-everywhere',
      onclick: confirmed('Log ' + u.username + ' out of every session?', async () => {
        await Api.call('POST', '/v1/admin/users/' + u.user_id + '/logout-everywhere');
        await openUser(u.user_id);
      }) }, 'Log out everywhere'),
  ], Api.el('table', {},
    Api.el('thead', {}, Api.el('tr', {}, ['Session', 'Status', 'Place', 'Device', 'Address', 'Last seen'].map((h) => Api.el('th', {}, h)))),
    Api.el('tbody', {}, rows)), await Draw.map(places));
}

async function openSession(id) {
  const s = await Api.call('GET', '/v1/admin/sessions/' + encodeURIComponent(id));
  const base = '/v1/admin/sessions/' + s.session.session_id;
  const [places, family] = await Promise.all([Api.call('GET', base + '/places'), Api.call('GET', base + '/lineage')]);
  const lineage = s.lineage.map((g) => Api.el('li', {},
    'generation ' + g.generation + ' issued ' + Api.when(g.issued_at) +
    (g.rotated_at ? ', rotated ' + Api.when(g.rotated_at) : ', current') +
    (g.retries.length ? ', ' + g.retries.length + ' grace retr' + (g.retries.length === 1 ? 'y' : 'ies') : '')));
  const reuse = s.reuse.map((r) => Api.el('li', { class: 'reuse' }, 'reuse (' + r.class + ') at ' + Api.when(r.at)));
  const actions = s.session.status === 'active'
    ? [Api.el('button', { class: 'danger', type: 'button', id: 'revoke-session',
        onclick: confirmed('Revoke this session?', async () => {
          await Api.call('POST', '/v1/admin/sessions/' + s.session.session_id + '/revoke');
          await openSession(s.session.session_id);
        }) }, 'Revoke session')]
    : [];
  show('Session ' + s.session.session_id + ' (' + s.session.status + ')', actions,
    await Draw.map(places),
    Draw.lineage(family),
    Api.el('ul', {}, lineage, reuse),
    timeline(s.timeline));
}

async function openAddress(ip) {
  const page = await Api.call('GET', '/v1/admin/ips/' + encodeURIComponent(ip) + '/timeline?limit=200');
  show('Address ' + ip, [], timeline(page.events));
}

// An alert's verdict, or the two buttons that record one (a false positive may add an
// exception for that rule and user for 30 days).
function verdictCell(a) {
  if (a.verdict) {
    return Api.el('span', { class: 'tag verdict' }, a.verdict.verdict.replace('_', ' ') +
      (a.verdict.exception_id ? ' (exception)' : ''));
  }
  const box = Api.el('input', { type: 'checkbox', class: 'verdict-exception' });
  const judge = (verdict) => () => guard(async () => {
    const body = { verdict };
    if (verdict === 'false_positive' && box.checked) body.exception = { expires_in: '30d' };
    await Api.call('POST', '/v1/admin/alerts/' + a.position + '/verdict', body);
    await openAlerts();
  });
  return Api.el('span', { class: 'verdict-actions' },
    Api.el('button', { type: 'button', class: 'secondary verdict-true', onclick: judge('true_positive') }, 'True positive'),
    ' ',
    Api.el('button', { type: 'button', class: 'secondary verdict-false', onclick: judge('false_positive') }, 'False positive'),
    ' ',
    Api.el('label', {}, box, ' add exception for 30 days'));
}

function ruleStats(stats) {
  const share = (r) => (r.false_share === null ? '—' : Math.round(r.false_share * 100) + '%');
  return Api.el('table', { id: 'rule-stats' },
    Api.el('thead', {}, Api.el('tr', {},
      ['Rule', 'Alerts', 'True positive', 'False positive', 'Share false'].map((h) => Api.el('th', {}, h)))),
    Api.el('tbody', {}, stats.rules.map((r) => Api.el('tr', { 'data-rule': r.rule_id },
      Api.el('td', {}, Api.el('code', {}, r.rule_id)),
      Api.el('td', {}, String(r.alerts)),
      Api.el('td', {}, String(r.true_positive)),
      Api.el('td', {}, String(r.false_positive)),
      Api.el('td', {}, share(r))))));
}

async function openAlerts() {
  const [page, stats] = await Promise.all([
    Api.call('GET', '/v1/admin/alerts?limit=200'),
    Api.call('GET', '/v1/admin/rules/stats'),
  ]);
  const rows = page.events.map((a) => Api.el('tr', { class: 'alert', 'data-position': a.position },
    Api.el('td', {}, Api.when(a.occurred_at)),
    Api.el('td', {}, flags(a)),
    Api.el('td', {}, Api.place(ctxOf(a).geo)),
    Api.el('td', { class: 'detail' }, detail(a)),
    Api.el('td', {}, verdictCell(a))));
  show('Alerts', [], ruleStats(stats), Api.el('table', { id: 'alerts' },
    Api.el('thead', {}, Api.el('tr', {},
      ['Time', 'Rule', 'Place', 'Detail', 'Verdict'].map((h) => Api.el('th', {}, h)))),
    Api.el('tbody', {}, rows)));
}

async function search(q) {
  q = q.trim();
  if (UUID.test(q)) {
    try {
      return await openSession(q);
    } catch (e) {
      if (e.status !== 404) throw e;
    }
    return openUser(q);
  }
  if (IP.test(q) && (q.includes('.') || q.includes(':'))) return openAddress(q);
  return openUser(q);
}

document.addEventListener('DOMContentLoaded', () => {
  wireSignIn(async () => {
    const me = await Api.call('GET', '/v1/me');
    if (!me.user.roles.includes('security')) {
      $('signin-error').textContent = 'This console is for users with the security role.';
      await Api.logout();
      return;
    }
    $('who').textContent = me.user.username;
    $('signin-section').classList.add('hidden');
    $('console').classList.remove('hidden');
    $('signout').classList.remove('hidden');
  });
  $('search').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guard(() => search($('q').value));
  });
  $('alerts-button').addEventListener('click', () => guard(openAlerts));
  $('signout').addEventListener('click', async () => {
    await Api.logout();
    location.reload();
  });
});

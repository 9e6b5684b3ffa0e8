// The console's drawings, as inline SVG built node by node (text only ever as textContent, no
// style attributes: the page's CSP allows neither inline styles nor markup from the API):
// a world map of a session's or user's places with each leg's distance, time and speed, the
// legs a rule judged marked; and a refresh family's lineage. The server computes every figure;
// this file only draws. Land outlines: Natural Earth 1:110m (public domain), /console/world.json.
'use strict';

const Draw = (() => {
  const NS = 'http://www.w3.org/2000/svg';

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  let world = null;
  function land() {
    if (!world) {
      world = fetch('/console/world.json').then((r) => {
        if (!r.ok) throw new Error('the world map did not load (HTTP ' + r.status + ')');
        return r.json();
      });
    }
    return world;
  }

  // Equirectangular, as world.json is: x = lon + 180, y = 90 - lat.
  const project = (p) => [p.longitude + 180, 90 - p.latitude];

  function km(x) { return Math.round(x).toLocaleString('en') + ' km'; }

  function duration(s) {
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.round(s / 60) + ' min';
    if (s < 86400) return (s / 3600).toFixed(1).replace(/\.0$/, '') + ' h';
    return (s / 86400).toFixed(1).replace(/\.0$/, '') + ' d';
  }

  function speed(v) { return v === null || v === undefined ? 'same instant' : Math.round(v).toLocaleString('en') + ' km/h'; }

  function legText(l) { return km(l.distance_km) + ' · ' + duration(l.duration_s) + ' · ' + speed(l.speed_kmh); }

  function placeName(p) { return [p.city, p.country].filter(Boolean).join(', ') || 'unknown place'; }

  function rules(judged) { return judged.map((j) => j.rule_id + ' (' + j.mode + ', ' + j.action + ')').join('; '); }

  // The part of the world the places are in, with a margin, at the map's 2:1 shape.
  function frame(points) {
    if (!points.length) return [0, 0, 360, 180];
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const pad = Math.max(12, 0.2 * Math.max(x1 - x0, 2 * (y1 - y0)));
    let w = Math.max(x1 - x0 + 2 * pad, 2 * (y1 - y0 + 2 * pad), 40);
    w = Math.min(w, 360);
    const h = w / 2;
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    const x = Math.min(Math.max(cx - w / 2, 0), 360 - w);
    const y = Math.min(Math.max(cy - h / 2, 0), 180 - h);
    return [x, y, w, h];
  }

  // A map of `data` ({places, legs} from /places), with a table of the legs under it.
  async function map(data) {
    const w = await land();
    const pts = data.places.map(project);
    const [vx, vy, vw, vh] = frame(pts);
    const font = vw / 70;
    const legs = data.legs.map((l, i) => {
      const [a, b] = [pts[l.from], pts[l.to]];
      const judged = l.judged_by.length > 0;
      const mid = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2 - font * 0.6];
      return svg('g', { class: 'leg' + (judged ? ' judged' : ''), 'data-leg': i, 'data-judged': judged ? rules(l.judged_by) : null },
        svg('title', {}, placeName(data.places[l.from]) + ' → ' + placeName(data.places[l.to]) + ': ' + legText(l) +
          (judged ? '. Judged by ' + rules(l.judged_by) : '')),
        svg('line', { x1: a[0], y1: a[1], x2: b[0], y2: b[1] }),
        svg('text', { class: 'leg-label', x: mid[0], y: mid[1], 'font-size': font, 'text-anchor': 'middle' },
          (judged ? '⚠ ' + l.judged_by.map((j) => j.rule_id).join(', ') + ': ' : '') + legText(l)));
    });
    const places = data.places.map((p, i) => {
      const [x, y] = pts[i];
      const reuse = p.events.includes('session.reuse_detected');
      const below = i % 2 === 1;
      return svg('g', { class: 'place' + (reuse ? ' reuse' : '') + (p.judged_by.length ? ' judged' : ''), 'data-place': i },
        svg('title', {}, placeName(p) + ' (' + (p.ip || '') + '), ' + p.sightings + ' sighting(s) ' +
          Api.when(p.first_seen) + ' – ' + Api.when(p.last_seen) + (reuse ? '; a spent token came back from here' : '')),
        p.accuracy_radius_km ? svg('circle', { class: 'radius', cx: x, cy: y, r: Math.min(p.accuracy_radius_km / 111, 20) }) : null,
        svg('circle', { class: 'dot', cx: x, cy: y, r: font * 0.35 }),
        svg('text', { class: 'place-label', x: x + font * 0.5, y: below ? y + font * 1.2 : y - font * 0.4, 'font-size': font },
          (i + 1) + ' ' + placeName(p) + (reuse ? ' (reuse)' : '')));
    });
    const picture = svg('svg', { id: 'map', class: 'map', viewBox: [vx, vy, vw, vh].join(' '), role: 'img',
      'aria-label': 'Map of ' + data.places.length + ' places and ' + data.legs.length + ' legs' },
    svg('rect', { class: 'sea', x: 0, y: 0, width: 360, height: 180 }),
    svg('path', { class: 'land', d: w.land }),
    legs, places);
    const rows = data.legs.map((l, i) => Api.el('tr', { class: 'leg-row' + (l.judged_by.length ? ' judged' : ''), 'data-leg': i },
      Api.el('td', {}, (l.from + 1) + ' ' + placeName(data.places[l.from]) + ' → ' + (l.to + 1) + ' ' + placeName(data.places[l.to])),
      Api.el('td', {}, km(l.distance_km)),
      Api.el('td', {}, duration(l.duration_s)),
      Api.el('td', {}, speed(l.speed_kmh)),
      Api.el('td', {}, l.judged_by.map((j) => Api.el('span', { class: 'tag rule', title: j.explanation }, j.rule_id + ' · ' + j.mode + ' · ' + j.action)))));
    return Api.el('div', { class: 'drawing' },
      Api.el('h3', {}, 'Places'),
      data.places.length ? picture : Api.el('p', { class: 'muted' }, 'No located sightings (no GeoIP database, or erased).'),
      Api.el('p', { class: 'muted small' }, 'Land: Natural Earth 1:110m (public domain). Dashed red legs were judged by a rule.'),
      rows.length ? Api.el('table', { class: 'legs' },
        Api.el('thead', {}, Api.el('tr', {}, ['Leg', 'Distance', 'Time', 'Speed', 'Judged by'].map((h) => Api.el('th', {}, h)))),
        Api.el('tbody', {}, rows)) : null);
  }

  function shortTime(t) {
    const d = new Date(t);
    return isNaN(d) ? t : d.toLocaleTimeString();
  }

  function cut(s, n) { s = String(s || ''); return s.length > n ? s.slice(0, n - 1) + '…' : s; }

  // Lines of text about who made a request: time, address, place, device.
  function who(p) {
    const c = p.context || {};
    return [shortTime(p.at), c.ip || 'no address', Api.place(c.geo), cut(Api.device(c.device, c.user_agent), 24)];
  }

  function box(cls, x, y, w, lines, attrs) {
    return svg('g', Object.assign({ class: 'node ' + cls }, attrs || {}),
      svg('rect', { x, y, width: w, height: 16 + lines.length * 15, rx: 6 }),
      lines.map((t, i) => svg('text', { x: x + 8, y: y + 17 + i * 15, class: i === 0 ? 'head' : null }, t)));
  }

  function arrow(cls, x1, y1, x2, y2, label) {
    return svg('g', { class: 'edge ' + cls },
      svg('line', { x1, y1, x2, y2, 'marker-end': 'url(#arrowhead-' + cls + ')' }),
      label ? svg('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, 'text-anchor': 'middle' }, label) : null);
  }

  // A family's lineage ({generations, reuse, revoked} from /lineage): generations left to
  // right with who presented the token that got each; grace retries under the generation they
  // were answered with; reuse detections under the generation whose spent token came back.
  function lineage(data) {
    const W = 225, GAP = 50, BW = W - GAP, TOP = 20;
    const col = new Map(data.generations.map((g, i) => [g.generation, i]));
    const x = (i) => 10 + i * W;
    const parts = [];
    const genH = 16 + 6 * 15;
    data.generations.forEach((g, i) => {
      const current = i === data.generations.length - 1 && !data.revoked;
      if (i > 0) parts.push(arrow('rotate', x(i - 1) + BW, TOP + genH / 2, x(i) - 2, TOP + genH / 2, 'rotated'));
      parts.push(box('gen' + (current ? ' current' : ''), x(i), TOP, BW,
        ['generation ' + g.generation + (g.parent === null ? ' (login)' : ''), 'token ' + g.token].concat(who(g.presented)),
        { 'data-generation': g.generation, 'data-parent': g.parent === null ? 'none' : g.parent }));
    });
    let retryRows = 0;
    data.generations.forEach((g, i) => {
      g.retries.forEach((r, k) => {
        const y = TOP + genH + 40 + k * 100;
        retryRows = Math.max(retryRows, k + 1);
        parts.push(arrow('retry', x(i) + BW / 2, y, x(i) + BW / 2, TOP + genH + 2, 'same successor'));
        parts.push(box('retry', x(i), y, BW,
          ['retry ' + r.retry + (r.late ? ' (late)' : '') + ' of gen ' + (g.parent === null ? '?' : g.parent)].concat(who(r.presented)),
          { 'data-retry-of': g.generation }));
      });
    });
    const reuseTop = TOP + genH + 40 + retryRows * 100;
    data.reuse.forEach((r, k) => {
      const i = col.has(r.presented_generation) ? col.get(r.presented_generation) : 0;
      const y = reuseTop + k * 110;
      parts.push(arrow('reuse', x(i) + BW / 2 + 20, y, x(i) + BW / 2 + 20, TOP + genH + 2, 'presented again'));
      parts.push(box('reuse', x(i), y, BW + 30,
        ['REUSE ' + r.class, 'gen ' + r.presented_generation + ' (current ' + r.current_generation + ')'].concat(who({ at: r.at, context: r.context })),
        { 'data-reuse-of': r.presented_generation }));
    });
    const n = data.generations.length;
    if (data.revoked) {
      parts.push(arrow('end', x(n - 1) + BW, TOP + genH / 2, x(n) - 2, TOP + genH / 2, ''));
      parts.push(box('end', x(n), TOP, BW, ['family ended', 'revoked: ' + data.revoked.reason, shortTime(data.revoked.at)],
        { 'data-revoked': data.revoked.reason }));
    }
    const width = x(n + (data.revoked ? 1 : 0)) + 30;
    const height = reuseTop + data.reuse.length * 110 + 10;
    const defs = svg('defs', {}, ['rotate', 'retry', 'reuse', 'end'].map((c) =>
      svg('marker', { id: 'arrowhead-' + c, class: 'arrowhead ' + c, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        svg('path', { d: 'M0 0L10 5L0 10Z' }))));
    return Api.el('div', { class: 'drawing' },
      Api.el('h3', {}, 'Refresh family'),
      Api.el('div', { class: 'scroll' },
        svg('svg', { id: 'lineage', class: 'lineage', width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img',
          'aria-label': n + ' generations, ' + data.reuse.length + ' reuse detection(s)' }, defs, parts)));
  }

  return { map, lineage };
})();

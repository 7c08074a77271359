// enlist dashboard: a snapshot from the API, then live updates over server-sent events.
'use strict';

const nodes = new Map();   // mac -> node view
let csrf = null;           // set when logged in
let loggedIn = false;

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
};

function message(text) { $('#message').textContent = text || ''; }

async function api(method, path, body) {
  const headers = { 'content-type': 'application/json' };
  if (csrf) headers['x-csrf-token'] = csrf;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, credentials: 'same-origin' });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

function ago(secs) {
  if (secs === null || secs === undefined) return '-';
  if (secs < 60) return secs + ' s ago';
  if (secs < 3600) return Math.floor(secs / 60) + ' min ago';
  return Math.floor(secs / 3600) + ' h ago';
}

function time(ts) { return new Date(ts * 1000).toLocaleTimeString(); }

function actionsFor(n) {
  if (!loggedIn) return [];
  const list = [];
  if (!n.approved) list.push('approve');
  if (n.released) list.push('enlist'); else list.push('release', 'reboot');
  list.push('rename');
  return list.map((a) => {
    const b = el('button', { textContent: a, onclick: () => act(n, a) });
    b.dataset.action = a;
    b.dataset.mac = n.mac;
    return b;
  });
}

async function act(n, action) {
  try {
    let body;
    if (action === 'rename') {
      const name = prompt('New name for ' + n.name, n.name);
      if (!name) return;
      body = { name };
    }
    const v = await api('POST', '/api/v1/nodes/' + encodeURIComponent(n.mac) + '/' + action, body);
    upsert(v);
    message(action + ' sent to ' + n.name);
  } catch (e) { message(action + ' failed: ' + e.message); }
}

function upsert(n) { nodes.set(n.mac, n); render(); }

function render() {
  const tbody = $('#nodes tbody');
  tbody.replaceChildren();
  const sorted = [...nodes.values()].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  const count = { up: 0, booting: 0, pending: 0, lost: 0 };
  for (const n of sorted) {
    if (n.state === 'healthy' || n.state === 'registered') count.up++;
    if (n.state === 'seen' || n.state === 'booting') count.booting++;
    if (n.state === 'pending') count.pending++;
    if (n.state === 'lost') count.lost++;
    const info = n.info || {};
    const hb = n.heartbeat || {};
    const tr = el('tr', { id: 'node-' + n.mac.replaceAll(':', '') },
      el('td', { className: 'name' }, el('a', { href: '#node/' + n.mac, textContent: n.name })),
      el('td', {}, el('span', { className: 'state s-' + n.state, textContent: n.state })),
      el('td', { className: 'wide', textContent: n.mac }),
      el('td', { textContent: n.ip || '-' }),
      el('td', { className: 'wide', textContent: info.cpu_model ? info.cpu_model + (info.cpu_mhz ? ' @' + info.cpu_mhz + ' MHz' : '') : '-' }),
      el('td', { className: 'wide', textContent: info.mem_total_kb ? Math.round(info.mem_total_kb / 1024) + ' MB' : '-' }),
      el('td', { textContent: hb.load1 !== undefined ? hb.load1.toFixed(2) : '-' }),
      el('td', { className: 'wide', textContent: ago(n.silent_secs) }),
      el('td', { className: 'wide timeline', textContent: n.boot_seconds ? n.boot_seconds.toFixed(0) + ' s to join' : '' }),
      el('td', {}, ...actionsFor(n)));
    tbody.append(tr);
  }
  for (const k of Object.keys(count)) $('#c-' + k).textContent = count[k];
  renderDetail();
}

function addEvent(list, ev, max) {
  const name = nodes.get(ev.mac) ? nodes.get(ev.mac).name : ev.mac;
  const li = el('li', {}, el('span', { className: 'time', textContent: time(ev.ts) }), name + ' ' + ev.kind + ': ' + ev.detail);
  list.prepend(li);
  while (list.children.length > max) list.lastChild.remove();
}

async function renderDetail() {
  const m = location.hash.match(/^#node\/(.+)$/);
  $('#detail').hidden = !m;
  $('#list').hidden = !!m;
  if (!m) return;
  const mac = decodeURIComponent(m[1]);
  const n = nodes.get(mac);
  if (!n) return;
  $('#d-name').textContent = n.name;
  const info = n.info || {}, hb = n.heartbeat || {};
  const facts = [
    ['State', n.state], ['MAC', n.mac], ['IP', n.ip || '-'], ['Group', n.group],
    ['CPU', info.cpu_model || '-'], ['Cores', info.cores || '-'], ['RAM', info.mem_total_kb ? Math.round(info.mem_total_kb / 1024) + ' MB' : '-'],
    ['Free RAM', hb.mem_free_kb ? Math.round(hb.mem_free_kb / 1024) + ' MB' : '-'], ['Kernel', info.kernel || '-'],
    ['Booted by', info.boot_method || '-'], ['NICs', (info.nics || []).map((x) => x.name + ' ' + x.mac + ' ' + x.driver).join(', ') || '-'],
    ['Boot took', n.boot_seconds ? n.boot_seconds.toFixed(1) + ' s' : '-'], ['Uptime', hb.uptime_secs ? hb.uptime_secs + ' s' : '-'],
    ['Released', n.released ? 'yes (boots from its own disk)' : 'no'], ['Approved', n.approved ? 'yes' : 'no'],
  ];
  $('#d-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', { textContent: k }), el('dd', { textContent: String(v) })]));
  $('#d-actions').replaceChildren(...actionsFor(n));
  if ($('#d-events').dataset.mac !== mac) {
    $('#d-events').dataset.mac = mac;
    try {
      const d = await api('GET', '/api/v1/nodes/' + encodeURIComponent(mac));
      $('#d-events').replaceChildren();
      for (const ev of d.events.slice().reverse()) addEvent($('#d-events'), ev, 200);
    } catch (e) { message(e.message); }
  }
}

async function snapshot() {
  const d = await api('GET', '/api/v1/nodes');
  nodes.clear();
  for (const n of d.nodes) nodes.set(n.mac, n);
  render();
  const ev = await api('GET', '/api/v1/events?limit=50');
  $('#events').replaceChildren();
  for (const e of ev.events.slice().reverse()) addEvent($('#events'), e, 50);
}

let source = null;
function live() {
  if (source) source.close();
  source = new EventSource('/api/v1/stream');
  source.addEventListener('node', (e) => upsert(JSON.parse(e.data).Node || JSON.parse(e.data)));
  source.addEventListener('event', (e) => {
    const ev = JSON.parse(e.data);
    addEvent($('#events'), ev, 50);
    if ($('#d-events').dataset.mac === ev.mac) addEvent($('#d-events'), ev, 200);
  });
  source.addEventListener('resync', () => snapshot().catch((e) => message(e.message)));
  source.onerror = () => message('connection to the head lost; reconnecting...');
  source.onopen = () => message('');
}

async function session() {
  const s = await api('GET', '/api/v1/session');
  loggedIn = s.logged_in;
  csrf = s.csrf;
  $('#login').hidden = loggedIn;
  $('#logout').hidden = !loggedIn;
  if (loggedIn || s.public_read) {
    await snapshot();
    live();
  } else {
    message('Log in to see the nodes.');
  }
}

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const r = await api('POST', '/api/v1/login', { password: $('#password').value });
    csrf = r.csrf;
    $('#password').value = '';
    message('');
    await session();
  } catch (err) { message('Login failed: ' + err.message); }
});

$('#logout').addEventListener('click', async () => {
  try { await api('POST', '/api/v1/logout'); } catch (e) { /* already logged out */ }
  location.reload();
});

window.addEventListener('hashchange', render);
session().catch((e) => message(e.message));

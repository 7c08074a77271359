// enlist dashboard: a snapshot from the API, then live updates over server-sent events.
'use strict';

const nodes = new Map();   // mac -> node view
const selected = new Set(); // macs ticked for "run a command"
let csrf = null;           // set when logged in
let loggedIn = false;
let publicRead = false;    // the head lets anyone read the node list
let summaryTimer = null;   // polls the summary (counters while logged out, jobs capacity)
let lentTimer = null;      // polls what the groups lent (it grows by the second; the stream sends changes only)

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

// A number as text, or '-' for anything that is not a finite number: the dashboard shows
// whatever the head sends and must survive any value.
function num(v, digits) {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '-';
}
function mb(kb) { return typeof kb === 'number' && Number.isFinite(kb) && kb > 0 ? Math.round(kb / 1024) + ' MB' : '-'; }
function text(v) { return v === null || v === undefined ? '-' : String(v); }

function actionsFor(n) {
  if (!loggedIn) return [];
  const list = [];
  if (!n.approved) list.push('approve');
  if (n.released) list.push('enlist'); else list.push('release', 'reboot');
  list.push('rename', 'group');
  return list.map((a) => {
    const b = el('button', { textContent: a, onclick: () => act(n, a) });
    b.dataset.action = a;
    b.dataset.mac = n.mac;
    return b;
  });
}

// What an action does to a PC, asked before it is sent (it cannot be taken back).
const confirmText = {
  release: (n) => 'Release ' + n.name + '? Its jobs are drained, then its agent reboots it into its own disk.',
  reboot: (n) => 'Reboot ' + n.name + ' into the node OS? Its running jobs are lost.',
};

async function act(n, action) {
  if (confirmText[action] && !confirm(confirmText[action](n))) return;
  try {
    let body;
    if (action === 'rename') {
      const name = prompt('New name for ' + n.name, n.name);
      if (!name) return;
      body = { name };
    }
    if (action === 'group') {
      const group = prompt('Group of ' + n.name, n.group);
      if (!group) return;
      body = { group };
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
  const byGroup = {};
  for (const n of sorted) {
    const g = stateGroups[n.state];
    if (g) byGroup[g] = (byGroup[g] || 0) + 1;
    const info = n.info || {};
    const hb = n.heartbeat || {};
    const tick = el('input', { type: 'checkbox', className: 'sel', checked: selected.has(n.mac), hidden: !loggedIn });
    tick.setAttribute('aria-label', 'select ' + n.name);
    tick.addEventListener('change', () => { if (tick.checked) selected.add(n.mac); else selected.delete(n.mac); });
    const tr = el('tr', { id: 'node-' + n.mac.replaceAll(':', '') },
      el('td', {}, tick),
      el('td', { className: 'name' }, el('a', { href: '#node/' + n.mac, textContent: n.name })),
      el('td', {}, el('span', { className: 'state s-' + n.state, textContent: n.state }),
        n.problem ? el('div', { className: 'problem', textContent: text(n.problem) }) : ''),
      el('td', { className: 'wide', textContent: n.mac }),
      el('td', { textContent: n.ip || '-' }),
      el('td', { className: 'wide', textContent: info.cpu_model ? text(info.cpu_model) + (info.cpu_mhz ? ' @' + num(info.cpu_mhz, 0) + ' MHz' : '') : '-' }),
      el('td', { className: 'wide', textContent: mb(info.mem_total_kb) }),
      el('td', { className: 'sched', textContent: schedText(n) }),
      el('td', { textContent: num(hb.load1, 2) }),
      el('td', { className: 'wide', textContent: ago(n.silent_secs) }),
      el('td', { className: 'wide timeline', textContent: num(n.boot_seconds, 0) === '-' ? '' : num(n.boot_seconds, 0) + ' s to join' }),
      el('td', {}, ...actionsFor(n)));
    tbody.append(tr);
  }
  renderTickGroup(sorted);
  // The head says which counter each state goes to (the summary's state_groups).
  if (Object.keys(stateGroups).length) counters(byGroup); else soonSummary();
  renderStorm(sorted);
  renderDetail();
}

// Tick a whole room (a group), every node, or none: the choices follow the nodes' groups.
function renderTickGroup(sorted) {
  const groups = [...new Set(sorted.map((n) => n.group))].sort();
  const want = ['', '*', ...groups, '-'];
  const sel = $('#tick-group');
  const have = [...sel.options].map((o) => o.value);
  if (JSON.stringify(have) === JSON.stringify(want)) return;
  sel.replaceChildren(...want.map((g) => el('option', {
    value: g,
    textContent: g === '' ? 'tick a room...' : g === '*' ? 'every node' : g === '-' ? 'none' : 'room ' + g,
  })));
}

function tickGroup() {
  const g = $('#tick-group').value;
  if (g === '') return;
  for (const n of nodes.values()) {
    if (g === '-') selected.delete(n.mac);
    else if (g === '*' || n.group === g) selected.add(n.mac);
  }
  $('#tick-group').value = '';
  render();
}

// Boots drawn, so "where did the minute go" is seen: each step of a boot (DHCP, script,
// kernel, initrd, registered, ...) is a segment from its request to the next step's, coloured
// by the protocol it came by (the initrd's runs until the node OS has booted and registered).
function bootSegments(steps) {
  const s = (Array.isArray(steps) ? steps : []).filter((x) => Number.isFinite(x.at_ms)).sort((a, b) => a.at_ms - b.at_ms);
  return s.map((x, i) => ({
    step: text(x.step), via: text(x.via), detail: text(x.detail),
    start: x.at_ms, end: i + 1 < s.length ? s[i + 1].at_ms : x.at_ms,
  }));
}

function secs(ms) { return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + ' s'; }

function bootBar(segs, t0, span) {
  const bar = el('div', { className: 'bootbar' });
  for (const g of segs) {
    const seg = el('div', { className: 'seg via-' + g.via, title: g.step + ' (' + g.via + ') ' + secs(g.end - g.start) + ': ' + g.detail });
    seg.dataset.step = g.step;
    seg.style.left = (100 * (g.start - t0) / span) + '%';
    seg.style.width = Math.max(0.5, 100 * (g.end - g.start) / span) + '%';
    if ((g.end - g.start) / span > 0.1) seg.textContent = g.step;
    bar.append(seg);
  }
  return bar;
}

// The last storm: every node whose boot began within ten minutes of the latest one, on one
// time axis from the first of them.
function renderStorm(sorted) {
  const boots = sorted.map((n) => [n, bootSegments(n.boot)]).filter(([, s]) => s.length > 0);
  $('#storm').hidden = boots.length === 0;
  if (boots.length === 0) return;
  const latest = Math.max(...boots.map(([, s]) => s[0].start));
  const storm = boots.filter(([, s]) => latest - s[0].start < 600000);
  const t0 = Math.min(...storm.map(([, s]) => s[0].start));
  const span = Math.max(1000, ...storm.map(([, s]) => s[s.length - 1].end - t0));
  $('#storm-axis').textContent = storm.length + (storm.length === 1 ? ' PC, ' : ' PCs, ') + secs(span) + ' from the first DHCP';
  $('#storm-chart').replaceChildren(...storm.map(([n, s]) => {
    const row = el('div', { className: 'bootrow' }, el('a', { href: '#node/' + n.mac, textContent: n.name }), bootBar(s, t0, span));
    row.dataset.mac = n.mac;
    return row;
  }));
}

// A node's last boot: its bar, and each step with when it began and how long it took.
function renderBoot(n) {
  const segs = bootSegments(n.boot);
  if (segs.length === 0) {
    $('#d-boot').replaceChildren(el('p', { className: 'timeline', textContent: 'no boot seen since the head started' }));
    return;
  }
  const t0 = segs[0].start, span = Math.max(1000, segs[segs.length - 1].end - t0);
  const rows = segs.map((g) => el('tr', {},
    el('td', { textContent: '+' + secs(g.start - t0) }), el('td', { textContent: g.step }),
    el('td', { textContent: g.via }), el('td', { textContent: g.end > g.start ? secs(g.end - g.start) : '' }),
    el('td', { className: 'wide', textContent: g.detail })));
  const head = el('tr', {}, ...['at', 'step', 'by', 'until the next', ''].map((h) => el('th', { textContent: h })));
  $('#d-boot').replaceChildren(bootBar(segs, t0, span), el('table', { className: 'steps' }, el('thead', {}, head), el('tbody', {}, ...rows)));
}

// The node's part in the jobs: the scheduler's state and running jobs, else what its agent
// says (starting, failed: ...), else '-' (jobs off).
function schedText(n) {
  if (n.sched) {
    const j = n.sched.jobs;
    // Slurm's mark for a node asleep (power saving), and why it is held out (sinfo -R).
    return n.sched.state + (n.sched.asleep ? '~ (asleep)' : '') +
      (j ? ' · ' + j + (j === 1 ? ' job' : ' jobs') : '') +
      (n.sched.reason ? ': ' + text(n.sched.reason) : '');
  }
  return n.jobs ? text(n.jobs) : '-';
}

// The cluster's capacity for jobs, from the summary (nodes in service, free CPUs and memory).
function jobsCounter(j) {
  const c = $('#c-jobs');
  if (!j || !j.nodes) { c.hidden = true; return; }
  c.hidden = false;
  $('#c-cpus').textContent = j.cpus_free + '/' + j.cpus;
  $('#c-mem').textContent = Math.round(j.mem_free_mb) + '/' + Math.round(j.mem_mb);
  $('#c-running').textContent = j.jobs;
}

// Run a command on the ticked nodes (POST /api/v1/exec), then show the answers as they come,
// nodes with the same answer under one header (as `enlist exec -b`).
async function runExec(ev) {
  ev.preventDefault();
  const names = [...selected].map((m) => nodes.get(m)).filter(Boolean).map((n) => n.name);
  if (!names.length) { message('tick the nodes to run the command on'); return; }
  const cmd = $('#exec-cmd').value;
  if (!confirm('Run as root on ' + names.length + ' node(s) (' + names.join(', ') + '):\n\n' + cmd)) return;
  const out = $('#exec-out');
  out.replaceChildren(el('p', { textContent: 'running on ' + names.length + ' node(s)...' }));
  try {
    const r = await api('POST', '/api/v1/exec', {
      command: cmd, nodes: names.join(','),
      timeout_secs: Number($('#exec-timeout').value) || 60,
    });
    for (;;) {
      const v = await api('GET', '/api/v1/exec/' + r.id);
      showExec(v);
      if (v.done) break;
      await new Promise((res) => setTimeout(res, 500));
    }
  } catch (e) { out.replaceChildren(el('p', { textContent: 'exec failed: ' + e.message })); }
}

function showExec(v) {
  const groups = new Map();
  for (const r of v.results) {
    const ending = r.status === 'exited' ? (r.exit === 0 ? '' : 'exit code ' + r.exit)
      : r.status === 'signal' ? 'killed by signal ' + r.signal
      : r.status === 'unreachable' ? 'unreachable: ' + (r.reason || '') : r.status;
    const key = JSON.stringify([ending, r.output, r.cut_bytes]);
    if (!groups.has(key)) groups.set(key, { ending, output: r.output, cut: r.cut_bytes, nodes: [] });
    groups.get(key).nodes.push(r.node);
  }
  const out = $('#exec-out');
  out.replaceChildren();
  for (const g of groups.values()) {
    const head = g.nodes.join(',') + ' (' + g.nodes.length + ')' + (g.ending ? ' - ' + g.ending : '');
    const body = g.output + (g.cut ? '\n[output cut: ' + g.cut + ' more bytes not shown]' : '');
    out.append(el('div', { className: 'exec-group' },
      el('h4', { textContent: head }), el('pre', { textContent: body })));
  }
}

// The header's counters: the head groups the states (StateGroup in the API); the node list
// is counted with its mapping as it changes, else the summary's counts are shown.
let stateGroups = {};
function counters(groups) {
  for (const g of ['up', 'booting', 'pending', 'lost']) $('#c-' + g).textContent = groups[g] || 0;
}

// The grouping not known yet (the summary not read): read it soon, once for a burst of changes.
let summarySoon = null;
function soonSummary() {
  if (summarySoon) return;
  summarySoon = setTimeout(() => { summarySoon = null; summary(); }, 300);
}

// The enrollment window (admins): open, how long it stays so, and the policy otherwise.
function enrollmentView(e) {
  const open = typeof e.window_secs === 'number';
  $('#enroll-state').textContent = open
    ? 'New PCs join for ' + Math.ceil(e.window_secs / 60) + ' min more'
    : 'New PCs: ' + text(e.policy);
  $('#enroll-close').hidden = !open;
}

async function enrollment(forSecs) {
  if (!loggedIn) return;
  try {
    const e = forSecs === undefined
      ? await api('GET', '/api/v1/enrollment')
      : await api('POST', '/api/v1/enrollment', { for_secs: forSecs });
    enrollmentView(e);
  } catch (err) { message('enrollment: ' + err.message); }
}

// The header's counters and the jobs capacity (public: counts are not secret).
async function summary() {
  try {
    const s = await api('GET', '/api/v1/summary');
    const first = !Object.keys(stateGroups).length;
    stateGroups = s.state_groups || {};
    if (!loggedIn && !publicRead) counters(s.groups || {});
    else if (first) render();
    jobsCounter(s.jobs);
  } catch (e) { /* the head is away; the counters keep their last values */ }
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
    ['State', text(n.state) + (n.problem ? ': ' + text(n.problem) : '')], ['Jobs', schedText(n)], ['MAC', text(n.mac)], ['IP', text(n.ip)], ['Group', text(n.group)],
    ['CPU', text(info.cpu_model)], ['Cores', num(info.cores, 0)], ['RAM', mb(info.mem_total_kb)],
    ['Free RAM', mb(hb.mem_free_kb)], ['Kernel', text(info.kernel)],
    ['Booted by', text(info.boot_method)], ['NICs', (Array.isArray(info.nics) ? info.nics : []).map((x) => text(x.name) + ' ' + text(x.mac) + ' ' + text(x.driver)).join(', ') || '-'],
    ['Boot took', num(n.boot_seconds, 1) === '-' ? '-' : num(n.boot_seconds, 1) + ' s'], ['Uptime', num(hb.uptime_secs, 0) === '-' ? '-' : num(hb.uptime_secs, 0) + ' s'],
    ['Released', n.released ? 'yes (boots from its own disk)' : 'no'], ['Approved', n.approved ? 'yes' : 'no'],
    ['Lent', hours(n.enlisted_secs) + ' enlisted, ' + hours(n.job_secs) + ' running jobs (h:mm)'],
    ['Woke', n.wakes_tried ? wakeRate(n.wakes_woke, n.wakes_tried) + ' Wake-on-LAN tries' : '-'],
    ['Boots with', n.kernel_args ? text(n.kernel_args) + ' (found by the head for its hardware)' : '-'],
  ];
  $('#d-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', { textContent: k }), el('dd', { textContent: String(v) })]));
  $('#d-actions').replaceChildren(...actionsFor(n));
  renderBoot(n);
  if ($('#d-events').dataset.mac !== mac) {
    $('#d-events').dataset.mac = mac;
    try {
      const d = await api('GET', '/api/v1/nodes/' + encodeURIComponent(mac));
      $('#d-events').replaceChildren();
      for (const ev of d.events.slice().reverse()) addEvent($('#d-events'), ev, 200);
    } catch (e) { message(e.message); }
  }
  if ($('#d-log').dataset.mac !== mac) {
    $('#d-log').dataset.mac = mac;
    loadLog(mac);
  }
}

// The node's log at the head (its kernel, agent, slurmd, munged; kept across reboots): the
// last 16 KiB, as text (never markup), for admins.
async function loadLog(mac) {
  try {
    const l = await api('GET', '/api/v1/nodes/' + encodeURIComponent(mac) + '/logs?tail=16384');
    $('#d-log').textContent = l.text || '(nothing yet)';
  } catch (e) { $('#d-log').textContent = '(' + e.message + ': log in to see the log)'; }
}

// Schedules: each group's phase and next change; skip it or run it now (logged in).
function localTime(rfc3339) {
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? text(rfc3339) : d.toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit', day: 'numeric', month: 'short' });
}

function scheduleRow(g) {
  const next = g.next ? g.next.phase + ' ' + localTime(g.next.at) + (g.next.skipped ? ' (skipped)' : '') : '-';
  const buttons = [];
  if (loggedIn && g.next) {
    const skip = g.next.skipped ? 'unskip' : 'skip';
    buttons.push(el('button', { textContent: skip, onclick: () => scheduleAct(g.group, skip) }));
  }
  if (loggedIn) {
    const now = g.phase === 'enlisted' ? 'release now' : 'enlist now';
    buttons.push(el('button', { textContent: now, onclick: () => scheduleAct(g.group, 'run-now') }));
  }
  for (const b of buttons) b.dataset.group = g.group;
  const row = el('tr', {},
    el('td', { textContent: text(g.group) }),
    el('td', { textContent: text(g.phase) + (g.since ? ' since ' + localTime(g.since) : '') }),
    el('td', { textContent: next }),
    el('td', { className: 'wide', textContent: 'enlist "' + text(g.enlist) + '", release "' + text(g.release) + '"' }),
    el('td', {}, ...buttons));
  row.dataset.group = g.group;
  return row;
}

// A time lent: hours and minutes (125:07).
function hours(secs) {
  if (typeof secs !== 'number') return '-';
  return Math.floor(secs / 3600) + ':' + String(Math.floor((secs % 3600) / 60)).padStart(2, '0');
}

// Wake-on-LAN tries that woke the PC(s): '3 of 4', or '-' if none was tried.
function wakeRate(woke, tried) {
  return tried ? num(woke, 0) + ' of ' + num(tried, 0) : '-';
}

// What each group lent: hours enlisted, hours running jobs, Wake-on-LAN tries that woke.
function renderLent(groups) {
  const list = Array.isArray(groups) ? groups : [];
  $('#lent').hidden = list.length === 0;
  $('#lent-table tbody').replaceChildren(...list.map((g) => {
    const row = el('tr', {},
      el('td', { textContent: text(g.group) }),
      el('td', { textContent: num(g.nodes, 0) }),
      el('td', { textContent: hours(g.enlisted_secs) }),
      el('td', { textContent: hours(g.job_secs) }),
      el('td', { textContent: wakeRate(g.wakes_woke, g.wakes_tried) }));
    row.dataset.group = g.group;
    return row;
  }));
}

async function lent() {
  try {
    renderLent((await api('GET', '/api/v1/nodes')).groups);
  } catch (e) { /* logged out without public read, or the head is away */ }
}

async function schedules() {
  try {
    const d = await api('GET', '/api/v1/schedules');
    const list = Array.isArray(d.schedules) ? d.schedules : [];
    $('#schedules').hidden = list.length === 0;
    $('#sched-table tbody').replaceChildren(...list.map(scheduleRow));
  } catch (e) { /* logged out without public read, or the head is away */ }
}

async function scheduleAct(group, action) {
  try {
    await api('POST', '/api/v1/schedules/' + encodeURIComponent(group) + '/' + action);
    message(action + ': group ' + group);
  } catch (e) { message(action + ' failed: ' + e.message); }
  await schedules();
}

async function snapshot() {
  const d = await api('GET', '/api/v1/nodes');
  nodes.clear();
  for (const n of d.nodes) nodes.set(n.mac, n);
  render();
  renderLent(d.groups);
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
    // enlist node forget: the node's row is gone (its history stays).
    if (ev.kind === 'forgotten' && nodes.delete(ev.mac)) render();
  });
  source.addEventListener('resync', () => snapshot().catch((e) => message(e.message)));
  source.onerror = () => message('connection to the head lost; reconnecting...');
  source.onopen = () => message('');
}

async function session() {
  const s = await api('GET', '/api/v1/session');
  loggedIn = s.logged_in;
  publicRead = s.public_read;
  csrf = s.csrf;
  $('#login').hidden = loggedIn;
  $('#logout').hidden = !loggedIn;
  $('#exec-form').hidden = !loggedIn;
  $('#enroll').hidden = !loggedIn;
  if (summaryTimer) { clearInterval(summaryTimer); summaryTimer = null; }
  if (lentTimer) { clearInterval(lentTimer); lentTimer = null; }
  if (loggedIn || s.public_read) {
    await snapshot();
    live();
  } else {
    message('Log in to see the nodes.');
  }
  // The counters while logged out; the jobs capacity always (it is not in the node stream).
  await summary();
  await schedules();
  await enrollment();
  summaryTimer = setInterval(() => { summary(); schedules(); enrollment(); }, 5000);
  lentTimer = setInterval(lent, 60000);
}

$('#enroll-open').addEventListener('click', () => enrollment(15 * 60));
$('#enroll-close').addEventListener('click', () => enrollment(0));
$('#d-log-refresh').addEventListener('click', () => { if ($('#d-log').dataset.mac) loadLog($('#d-log').dataset.mac); });

$('#exec-form').addEventListener('submit', runExec);
$('#tick-group').addEventListener('change', tickGroup);

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

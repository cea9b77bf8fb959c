// The Sluice console: a single page over the REST API (/api/v1), no framework, no build step.
// Every view renders from the API; errors the API names by field are shown beside the field.

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const banner = document.getElementById('banner');
let csrf = sessionStorage.getItem('csrf') || '';
let stream = null;
let countdown = null;
let poll = null;

/** An element with attributes and children. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/** An error of the API: its problem document. */
class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
  const res = await fetch(`/api/v1${path}`, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = text;
  try { data = JSON.parse(text); } catch { /* text */ }
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith('/login') && !path.startsWith('/setup')) {
      location.hash = '#/login';
    }
    throw new ApiError(res.status, typeof data === 'object' ? data : { detail: text });
  }
  return data;
}

/** The page a banner message belongs to: leaving that page clears it. */
let bannerPage = '';

function say(message, error = false, page = location.hash) {
  bannerPage = page;
  banner.textContent = message;
  banner.className = error ? 'error' : '';
  banner.hidden = !message;
}

/** Shows a problem's field errors beside their inputs (data-field), the rest in the banner. */
function showProblem(form, err) {
  form.querySelectorAll('.field-error').forEach((e) => { e.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
  const errors = (err.problem && err.problem.errors) || [];
  let placed = false;
  for (const fe of errors) {
    const name = String(fe.field).split('.').pop().replace(/\[\d+\]$/, '');
    const slot = form.querySelector(`.field-error[data-field="${name}"]`);
    const input = form.querySelector(`[name="${name}"]`);
    if (slot) { slot.textContent = fe.message; placed = true; }
    if (input) input.setAttribute('aria-invalid', 'true');
  }
  say(placed ? 'Please correct the fields marked.' : err.message, true);
}

function field(label, name, attrs = {}) {
  return el('label', {}, label, el('input', { name, ...attrs }),
    el('span', { class: 'field-error', 'data-field': name, role: 'alert' }));
}

function values(form) {
  return Object.fromEntries(new FormData(form).entries());
}

// ---- views ----

async function setupView() {
  nav.hidden = true;
  const form = el('form', { 'aria-label': 'First-run setup' },
    el('p', {}, 'Create the first administrator with the one-time setup token the router printed at its first start (also in STATE/setup-token).'),
    field('Setup token', 'token', { autocomplete: 'off', required: true }),
    field('User name', 'username', { autocomplete: 'username', required: true }),
    field('Password (10 characters or more)', 'password', { type: 'password', autocomplete: 'new-password', required: true }),
    el('button', { type: 'submit' }, 'Create administrator'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('POST', '/setup', values(form));
      say('Administrator created: log in.', false, '#/login');
      location.hash = '#/login';
    } catch (err) { showProblem(form, err); }
  });
  return [el('h1', {}, 'Set up this router'), form];
}

async function loginView() {
  nav.hidden = true;
  const form = el('form', { 'aria-label': 'Log in' },
    field('User name', 'username', { autocomplete: 'username', required: true }),
    field('Password', 'password', { type: 'password', autocomplete: 'current-password', required: true }),
    el('button', { type: 'submit' }, 'Log in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const me = await api('POST', '/login', values(form));
      csrf = me.csrf_token;
      sessionStorage.setItem('csrf', csrf);
      say('');
      location.hash = '#/dashboard';
    } catch (err) { showProblem(form, err); }
  });
  return [el('h1', {}, 'Log in'), form];
}

/** A rolling line chart of one series on a canvas. */
function chart(label) {
  const canvas = el('canvas', { width: 600, height: 120, role: 'img', 'aria-label': label });
  const points = [];
  return {
    canvas,
    push(v) {
      points.push(v);
      if (points.length > 60) points.shift();
      const g = canvas.getContext('2d');
      const max = Math.max(1, ...points);
      g.clearRect(0, 0, canvas.width, canvas.height);
      g.strokeStyle = '#0b62c4';
      g.lineWidth = 2;
      g.beginPath();
      points.forEach((p, i) => {
        const x = (i / 59) * canvas.width;
        const y = canvas.height - (p / max) * (canvas.height - 8) - 4;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    },
  };
}

function rate(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(0);
}

/** What the console says while no interface is a routed port. */
const NO_ROUTED_PORT = 'No routed port: XDP forwards nothing yet. Attach an interface on the Interfaces page '
  + '(on the appliance, add a NIC to the VM first: the first NIC is management). An attached port is kept in '
  + 'the configuration and attached again at each start, also when it appears later.';

async function dashboardView() {
  const cards = el('div', { class: 'cards' });
  const noPort = el('p', { class: 'error', role: 'status', id: 'no-routed-port' }, NO_ROUTED_PORT);
  noPort.hidden = true;
  const reasons = el('tbody');
  const perIface = new Map();
  let last = null;
  stream = new EventSource('/api/v1/counters/stream');
  stream.addEventListener('counters', (ev) => {
    const snap = JSON.parse(ev.data);
    noPort.hidden = (snap.interfaces || []).length > 0;
    const now = performance.now();
    const totals = new Map();
    for (const i of snap.interfaces || []) {
      let pk = 0; let by = 0;
      for (const c of Object.values(i.counters || {})) { pk += c.packets; by += c.bytes; }
      totals.set(i.name, { pk, by, i });
    }
    if (last) {
      const dt = (now - last.at) / 1000;
      for (const [name, t] of totals) {
        const before = last.totals.get(name);
        if (!before) continue;
        let card = perIface.get(name);
        if (!card) {
          const pps = el('div', { class: 'big' }, '0');
          const bps = el('div', { class: 'muted' }, '0 bit/s');
          const c = chart(`packets per second on ${name}`);
          cards.append(el('section', { class: 'card', 'aria-label': name },
            el('h3', {}, `${name} (${t.i.xdp_mode})`), pps, bps, c.canvas));
          card = { pps, bps, c };
          perIface.set(name, card);
        }
        const pps = Math.max(0, (t.pk - before.pk) / dt);
        card.pps.textContent = `${rate(pps)} packets/s`;
        card.bps.textContent = `${rate(Math.max(0, ((t.by - before.by) * 8) / dt))}bit/s`;
        card.c.push(pps);
      }
    }
    last = { at: now, totals };
    reasons.replaceChildren(...(snap.interfaces || []).flatMap((i) => Object.entries(i.counters || {})
      .filter(([, c]) => c.packets > 0)
      .map(([r, c]) => el('tr', {}, el('td', {}, i.name), el('td', {}, r), el('td', {}, c.packets), el('td', {}, c.bytes)))));
  });
  return [el('h1', {}, 'Dashboard'), noPort, cards, ...topTalkers(),
    el('h2', {}, 'Forwarded, passed and dropped, by reason'),
    el('div', { class: 'scroll' }, el('table', {},
      el('thead', {}, el('tr', {}, el('th', {}, 'Interface'), el('th', {}, 'Reason'), el('th', {}, 'Packets'), el('th', {}, 'Bytes'))),
      reasons))];
}

/** The sources forwarding the most, from the dataplane's samples, every 2 seconds. */
function topTalkers() {
  const body = el('tbody');
  const note = el('p', { class: 'muted', id: 'talkers-note' }, 'Measuring…');
  const refresh = async () => {
    let top;
    try { top = await api('GET', '/top-talkers?limit=10'); } catch (err) { note.textContent = err.message; return; }
    note.textContent = top.window_s > 0
      ? `Over the last ${top.window_s.toFixed(0)} s, estimated from 1 in ${top.sample_every} forwarded packets.`
      : 'Measuring…';
    body.replaceChildren(...top.talkers.map((t) => el('tr', {}, el('td', {}, t.address),
      el('td', {}, `${rate(t.packets_per_s)} packets/s`), el('td', {}, `${rate(t.bits_per_s)}bit/s`))));
    if (top.window_s > 0 && !top.talkers.length) body.append(el('tr', {}, el('td', { colspan: 3, class: 'muted' }, 'Nothing forwarded in that time.')));
  };
  refresh();
  poll = setInterval(refresh, 2000);
  return [el('h2', {}, 'Top talkers'), note, el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Top talkers' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Source'), el('th', {}, 'Packets'), el('th', {}, 'Bits'))), body))];
}

async function routesView() {
  const statics = await api('GET', '/routes/static');
  const body = el('tbody');
  const filter = el('input', { type: 'search', name: 'filter', placeholder: 'Search prefix, next hop, interface, origin', 'aria-label': 'Search routes' });
  const count = el('p', { class: 'muted', id: 'route-count', 'aria-live': 'polite' });
  const SHOWN = 500;
  let pending = null;
  const render = async () => {
    const q = filter.value.trim();
    let dp;
    try { dp = await api('GET', `/routes?limit=${SHOWN}${q ? `&q=${encodeURIComponent(q)}` : ''}`); } catch (err) { say(err.message, true); return; }
    count.textContent = `${dp.matched} of ${dp.total} routes${dp.matched > SHOWN ? `; the first ${SHOWN} shown, search to narrow` : ''}.`;
    body.replaceChildren(...dp.routes.map((r) => el('tr', {},
      el('td', {}, r.prefix),
      el('td', {}, r.action),
      el('td', {}, r.nexthops.map((n) => `${n.via || ''} ${n.dev}${n.resolved ? '' : ' (unresolved)'}`).join(', ') || r.dev || ''),
      el('td', {}, r.origin || ''))));
  };
  filter.addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(render, 250); });
  await render();
  const tables = el('p', { class: 'muted', id: 'lookup-tables' });
  api('GET', '/lookup-tables').then((t) => {
    const mib = (b) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    tables.textContent = `Lookup tables: IPv4 ${mib(t.ipv4.bytes)} (${t.ipv4.groups} of ${t.ipv4.groups_max} groups of longer prefixes, `
      + `${t.ipv4.results} of ${t.ipv4.results_max} distinct routes), IPv6 ${mib(t.ipv6.bytes)} (${t.ipv6.nodes} of ${t.ipv6.nodes_max} nodes).`;
  }, (err) => { tables.textContent = `Lookup tables: ${err.message}`; });
  const form = el('form', { 'aria-label': 'Add a static route' },
    el('div', { class: 'row' },
      field('Prefix', 'prefix', { placeholder: '10.99.0.0/24', required: true }),
      field('Via', 'via', { placeholder: 'gateway' }),
      field('Interface', 'dev', { placeholder: 'optional' }),
      field('Metric', 'metric', { type: 'number', min: 0, value: 0 })),
    el('label', {}, 'Roll back unless confirmed within (seconds, optional)',
      el('input', { name: 'confirm_seconds', type: 'number', min: 10, max: 3600 }),
      el('span', { class: 'field-error', 'data-field': 'confirm_seconds' })),
    el('button', { type: 'submit' }, 'Add route'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = values(form);
    const route = { prefix: v.prefix, metric: Number(v.metric || 0) };
    if (v.via) route.via = v.via;
    if (v.dev) route.dev = v.dev;
    const q = v.confirm_seconds ? `?confirm_seconds=${encodeURIComponent(v.confirm_seconds)}` : '';
    try {
      await api('POST', `/routes/static${q}`, route);
      say(v.confirm_seconds ? `Route ${v.prefix} added: confirm it on the Configuration page.` : `Route ${v.prefix} added.`);
      render();
      route.prefix && setTimeout(() => { if (location.hash === '#/routes') show(); }, 500);
    } catch (err) { showProblem(form, err); }
  });
  const staticRows = statics.map((r) => el('tr', {},
    el('td', {}, r.prefix), el('td', {}, r.via || ''), el('td', {}, r.dev || ''), el('td', {}, r.metric),
    el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: async () => {
      try { await api('DELETE', '/routes/static', { prefix: r.prefix, metric: r.metric }); show(); } catch (err) { say(err.message, true); }
    } }, `Remove ${r.prefix}`))));
  return [el('h1', {}, 'Routes'),
    el('h2', {}, 'Static routes'), form,
    el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Static routes' },
      el('thead', {}, el('tr', {}, ...['Prefix', 'Via', 'Interface', 'Metric', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, staticRows))),
    el('h2', {}, "The dataplane's routes"), filter, count, tables,
    el('div', { class: 'scroll' }, el('table', { 'aria-label': "The dataplane's routes" },
      el('thead', {}, el('tr', {}, ...['Prefix', 'Action', 'Next hops', 'Origin'].map((h) => el('th', {}, h)))),
      body))];
}

/** The changes of a candidate against the running configuration, one line each. */
function diffList(changes) {
  if (!changes.length) return el('p', { class: 'muted', id: 'diff' }, 'No pending changes: the candidate is the running configuration.');
  const mark = { added: '+', removed: '−', changed: '~' };
  const json = (v) => (v === undefined ? '' : JSON.stringify(v));
  return el('ul', { class: 'diff', id: 'diff', 'aria-label': 'Pending changes' }, changes.map((c) => el('li', { class: `diff-${c.kind}` },
    el('span', { class: 'diff-mark', 'aria-hidden': 'true' }, mark[c.kind] || '?'), ` ${c.kind} `, el('strong', {}, c.item),
    c.before !== undefined ? el('code', { class: 'before' }, json(c.before)) : '',
    c.before !== undefined && c.after !== undefined ? ' → ' : '',
    c.after !== undefined ? el('code', { class: 'after' }, json(c.after)) : '')));
}

/** A problem's errors, every one, in a form's slot for `name`. */
function showErrors(form, name, err) {
  const slot = form.querySelector(`.field-error[data-field="${name}"]`);
  const errors = (err.problem && err.problem.errors) || [];
  slot.textContent = errors.length ? errors.map((e) => `${e.field}: ${e.message}`).join('\n') : err.message;
  form.querySelector(`[name="${name}"]`).setAttribute('aria-invalid', 'true');
  say('The configuration was refused: see the errors under it.', true);
}

/** The candidate: an editor, the pending changes, commit (with or without confirm), discard. */
function candidateSection(candidate, changes) {
  const form = el('form', { 'aria-label': 'Candidate', class: 'wide' },
    el('label', {}, 'Candidate configuration (JSON)', el('textarea', { name: 'config', rows: 14, spellcheck: 'false' }, JSON.stringify(candidate, null, 2))),
    el('span', { class: 'field-error', 'data-field': 'config', role: 'alert' }),
    el('label', {}, 'Commit message', el('input', { name: 'message', value: 'from the console' })),
    el('label', {}, 'Confirm within (seconds)', el('input', { name: 'confirm_seconds', type: 'number', min: 10, max: 3600, value: 120 }),
      el('span', { class: 'field-error', 'data-field': 'confirm_seconds', role: 'alert' })),
    el('div', { class: 'buttons' },
      el('button', { type: 'submit', value: 'stage' }, 'Stage'),
      el('button', { type: 'submit', value: 'commit', class: 'secondary' }, 'Commit'),
      el('button', { type: 'submit', value: 'confirm', class: 'secondary' }, 'Commit with confirm'),
      el('button', { type: 'submit', value: 'discard', class: 'secondary' }, 'Discard')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const what = (e.submitter && e.submitter.value) || 'stage';
    const v = values(form);
    form.querySelectorAll('.field-error').forEach((x) => { x.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach((x) => x.removeAttribute('aria-invalid'));
    try {
      if (what === 'discard') {
        await api('DELETE', '/config/candidate');
        say('Candidate discarded.');
        show();
        return;
      }
      // What the editor holds is staged first: a commit commits what is on the screen.
      let config;
      try { config = JSON.parse(v.config); } catch (err) {
        showErrors(form, 'config', { message: `not JSON: ${err.message}` });
        return;
      }
      await api('PUT', '/config/candidate', config);
      if (what === 'stage') {
        say('Candidate staged: review the changes, then commit.');
      } else {
        const body = { message: v.message };
        if (what === 'confirm') body.confirm_seconds = Number(v.confirm_seconds);
        const r = await api('POST', '/config/commit', body);
        say(r.pending_confirm ? `Revision ${r.revision} committed: confirm it before the countdown ends.` : `Revision ${r.revision} committed.`);
      }
      show();
    } catch (err) {
      if (err.problem && (err.problem.errors || []).some((x) => x.field === 'confirm_seconds')) showProblem(form, err);
      else showErrors(form, 'config', err);
    }
  });
  return [el('h2', {}, 'Candidate'), el('p', { class: 'muted' }, 'Stage a whole configuration, see what it changes, then commit it.'),
    el('h3', {}, 'Pending changes'), diffList(changes), form];
}

/** Restore: a backup file (as downloaded below) committed as a new revision. */
function restoreSection() {
  const form = el('form', { 'aria-label': 'Restore' },
    el('label', {}, 'Backup file (.json)', el('input', { type: 'file', name: 'backup', accept: '.json,application/json', required: true })),
    el('span', { class: 'field-error', 'data-field': 'backup', role: 'alert' }),
    el('button', { type: 'submit' }, 'Restore'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const file = form.querySelector('input[name=backup]').files[0];
    form.querySelector('.field-error').textContent = '';
    if (!file) return;
    let config;
    try { config = JSON.parse(await file.text()); } catch (err) {
      showErrors(form, 'backup', { message: `${file.name} is not a configuration (JSON): ${err.message}` });
      return;
    }
    try {
      const r = await api('POST', `/config/import?message=${encodeURIComponent(`restore of ${file.name}`)}`, config);
      say(`Restored ${file.name} as revision ${r.revision}.`);
      show();
    } catch (err) { showErrors(form, 'backup', err); }
  });
  return form;
}

async function configView() {
  const [running, history, candidate, changes] = await Promise.all([api('GET', '/config'),
    api('GET', '/config/revisions'), api('GET', '/config/candidate'), api('GET', '/config/diff')]);
  const parts = [el('h1', {}, 'Configuration'), el('p', {}, `Running revision ${running.revision ?? 'none'}.`)];
  const pending = running.pending_confirm;
  if (pending) {
    const left = el('span', { class: 'countdown', id: 'countdown' });
    const tick = () => {
      const s = Math.max(0, Math.round((pending.deadline_ms - Date.now()) / 1000));
      left.textContent = `${s} s`;
      if (s === 0) { clearInterval(countdown); setTimeout(show, 2500); }
    };
    tick();
    countdown = setInterval(tick, 1000);
    parts.push(el('section', { class: 'card', 'aria-label': 'Commit waiting for confirmation' },
      el('p', {}, `Revision ${pending.revision} rolls back in `, left, ' unless confirmed.'),
      el('button', { type: 'button', onclick: async () => {
        try { await api('POST', '/config/confirm'); say('Confirmed.'); show(); } catch (err) { say(err.message, true); }
      } }, 'Confirm')));
  }
  parts.push(...candidateSection(candidate, changes));
  parts.push(el('h2', {}, 'History'), el('div', { class: 'scroll' }, el('table', { 'aria-label': 'History' },
    el('thead', {}, el('tr', {}, ...['Revision', 'When', 'Who', 'From', 'Message', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, [...history].reverse().map((r) => el('tr', {},
      el('td', {}, r.id), el('td', {}, new Date(r.at_ms).toLocaleString()), el('td', {}, r.author.who),
      el('td', {}, r.author.from), el('td', {}, r.author.message),
      el('td', {}, r.id === running.revision ? 'running' : el('button', { type: 'button', class: 'secondary', onclick: async () => {
        try { await api('POST', '/config/rollback', { revision: r.id, message: `rollback to ${r.id}` }); say(`Rolled back to revision ${r.id}.`); show(); } catch (err) { say(err.message, true); }
      } }, `Roll back to ${r.id}`))))))));
  parts.push(el('h2', {}, 'Backup and restore'), el('p', {}, el('a', { href: '/api/v1/config/export', download: 'sluice-config.json' }, 'Download the running configuration')),
    restoreSection());
  return parts;
}

/** A file's bytes as base64. */
async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** A plugin's resource use, in a line. */
function usageText(u) {
  if (!u) return '';
  const mib = (b) => (b / 1048576).toFixed(1);
  return `${u.calls} calls, ${(u.busy_us / 1000).toFixed(1)} ms in all (last ${(u.last_call_us / 1000).toFixed(2)} ms, longest ${(u.max_call_us / 1000).toFixed(2)} ms); memory ${mib(u.memory_bytes)} of ${mib(u.memory_limit_bytes)} MiB`;
}

async function pluginsView() {
  const list = await api('GET', '/plugins');
  const form = el('form', { 'aria-label': 'Add a plugin' },
    el('label', {}, 'Component (.wasm)', el('input', { type: 'file', name: 'wasm', accept: '.wasm', required: true }),
      el('span', { class: 'field-error', 'data-field': 'wasm_base64' })),
    el('label', {}, 'Manifest (.json)', el('input', { type: 'file', name: 'manifest', accept: '.json,application/json', required: true }),
      el('span', { class: 'field-error', 'data-field': 'manifest' })),
    el('label', {}, 'Configuration (JSON)', el('textarea', { name: 'config', rows: 4 }, '{}'),
      el('span', { class: 'field-error', 'data-field': 'config' })),
    el('span', { class: 'field-error', 'data-field': 'plugin', role: 'alert' }),
    el('button', { type: 'submit' }, 'Add plugin'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const wasm = form.elements.wasm.files[0];
    const manifestFile = form.elements.manifest.files[0];
    let manifest; let config;
    try { manifest = JSON.parse(await manifestFile.text()); } catch { showProblem(form, new ApiError(400, { errors: [{ field: 'manifest', message: 'not JSON' }] })); return; }
    try { config = JSON.parse(form.elements.config.value || '{}'); } catch { showProblem(form, new ApiError(400, { errors: [{ field: 'config', message: 'not JSON' }] })); return; }
    try {
      await api('POST', '/plugins', { manifest, wasm_base64: await base64Of(wasm), config });
      say(`Plugin ${manifest.name} added and running.`);
      show();
    } catch (err) { showProblem(form, err); }
  });
  const rows = list.map((p) => {
    const state = p.status.state + (p.status.reason ? `: ${p.status.reason}` : '');
    const editor = el('textarea', { rows: 3, 'aria-label': `Configuration of ${p.name}` }, JSON.stringify(p.config ?? {}, null, 1));
    const logs = el('pre', { class: 'muted', hidden: true });
    return el('tr', {},
      el('td', {}, p.name), el('td', {}, p.version ?? ''), el('td', {}, (p.tables || []).join(', ')),
      el('td', {}, state), el('td', {}, p.rules), el('td', { class: 'usage' }, usageText(p.usage)),
      el('td', {}, p.source === 'store' ? [
        editor,
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try { await api('PUT', `/plugins/${p.name}/config`, JSON.parse(editor.value)); say(`${p.name} reconfigured.`); show(); } catch (err) { say(err.message, true); }
        } }, 'Save configuration'),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try { await api('PATCH', `/plugins/${p.name}`, { enabled: !p.enabled }); show(); } catch (err) { say(err.message, true); }
        } }, p.enabled ? 'Disable' : 'Enable'),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try { const l = await api('GET', `/plugins/${p.name}/logs`); logs.textContent = l.map((x) => `${new Date(x.at_ms).toLocaleTimeString()} ${x.level} ${x.message}`).join('\n'); logs.hidden = false; } catch (err) { say(err.message, true); }
        } }, 'Logs'),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          if (!confirm(`Remove ${p.name}, its rules and its store?`)) return;
          try { await api('DELETE', `/plugins/${p.name}`); show(); } catch (err) { say(err.message, true); }
        } }, 'Remove'), logs] : 'from the plugin directory'));
  });
  return [el('h1', {}, 'Plugins'), form,
    el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Plugins' },
      el('thead', {}, el('tr', {}, ...['Name', 'Version', 'Tables', 'State', 'Rules', 'Resource use', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows)))];
}

/** Waits (up to 10 s) until the daemon has attached or detached a port, then shows the page. */
async function settlePort(name, attached) {
  for (let i = 0; i < 20; i += 1) {
    const port = (await api('GET', '/interfaces')).find((p) => p.name === name);
    if (!port || Boolean(port.xdp_mode) === attached) break;
    await new Promise((r) => { setTimeout(r, 500); });
  }
  if (location.hash === '#/interfaces') show();
}

async function interfacesView() {
  const list = await api('GET', '/interfaces');
  const action = (i) => {
    if (i.name === 'lo') return '';
    if (i.routed === 'fixed') return el('span', { class: 'muted' }, 'attached by --attach');
    if (i.routed === 'configured') {
      return el('button', { type: 'button', class: 'secondary', 'aria-label': `Detach ${i.name}`, onclick: async () => {
        try { await api('POST', `/interfaces/${i.name}/detach`); say(`${i.name} detached: no longer routed.`); await settlePort(i.name, false); } catch (err) { say(err.message, true); }
      } }, 'Detach');
    }
    const mode = el('select', { 'aria-label': `XDP mode for ${i.name}` },
      ...['auto', 'native', 'generic'].map((m) => el('option', { value: m }, m)));
    return el('span', { class: 'inline' }, mode, el('button', { type: 'button', 'aria-label': `Attach ${i.name}`, onclick: async () => {
      try {
        await api('POST', `/interfaces/${i.name}/attach`, { xdp_mode: mode.value });
        say(`${i.name} attached: it is a routed port.`);
        await settlePort(i.name, true);
      } catch (err) { say(err.message, true); }
    } }, 'Attach'));
  };
  const held = list.filter((i) => i.egress_not_ready);
  const routed = list.filter((i) => i.xdp_mode);
  return [el('h1', {}, 'Interfaces'),
  ...(routed.length ? [] : [el('p', { class: 'error', role: 'status', id: 'no-routed-port' }, NO_ROUTED_PORT)]),
  ...(held.length ? [el('p', { class: 'error', role: 'status' }, `${held.length} routed port(s) cannot take redirected frames; their traffic goes through the kernel (see the State column).`)] : []),
  el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Interfaces' },
    el('thead', {}, el('tr', {}, ...['Name', 'State', 'XDP mode', 'Routed', 'MTU', 'MAC', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, list.map((i) => el('tr', { 'data-name': i.name }, el('td', {}, i.name),
      el('td', {}, i.state, i.egress_not_ready ? el('div', { class: 'error egress-not-ready', role: 'note' }, `Egress not ready: ${i.egress_not_ready.message}`) : ''),
      el('td', { class: 'xdp-mode' }, i.xdp_mode || 'not served'), el('td', {}, i.routed || ''), el('td', {}, i.mtu ?? ''),
      el('td', {}, i.mac || ''), el('td', {}, action(i))))))),
  el('p', { class: 'muted' }, 'Attaching makes an interface a routed port: XDP forwards on it, and it is kept in the configuration (a revision, audited). Ports named by the daemon\'s --attach option stay attached.')];
}

async function usersView() {
  const [users, tokens] = await Promise.all([api('GET', '/users'), api('GET', '/tokens')]);
  const userForm = el('form', { 'aria-label': 'Add a user' },
    el('div', { class: 'row' }, field('User name', 'name', { required: true }),
      field('Password', 'password', { type: 'password', autocomplete: 'new-password', required: true }),
      el('label', {}, 'Role', el('select', { name: 'role' }, el('option', { value: 'viewer' }, 'viewer'), el('option', { value: 'admin' }, 'admin')))),
    el('button', { type: 'submit' }, 'Add user'));
  userForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    try { await api('POST', '/users', values(userForm)); say('User added.'); show(); } catch (err) { showProblem(userForm, err); }
  });
  const shown = el('p', { role: 'status' });
  const tokenForm = el('form', { 'aria-label': 'Make an API token' },
    el('div', { class: 'row' }, field('Name', 'name', { required: true }),
      el('label', {}, 'Scope', el('select', { name: 'scope' }, el('option', { value: 'read' }, 'read'), el('option', { value: 'admin' }, 'admin')))),
    el('span', { class: 'field-error', 'data-field': 'scope' }),
    el('button', { type: 'submit' }, 'Make token'), shown);
  tokenForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    try { const t = await api('POST', '/tokens', values(tokenForm)); shown.replaceChildren('Copy it now, it is shown once: ', el('code', {}, t.token)); } catch (err) { showProblem(tokenForm, err); }
  });
  return [el('h1', {}, 'Users and API tokens'), userForm,
    el('table', { 'aria-label': 'Users' }, el('tbody', {}, users.map((u) => el('tr', {}, el('td', {}, u.name), el('td', {}, u.role),
      el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: async () => {
        try { await api('DELETE', `/users/${u.name}`); show(); } catch (err) { say(err.message, true); }
      } }, `Delete ${u.name}`)))))),
    el('h2', {}, 'API tokens'), tokenForm,
    el('table', { 'aria-label': 'Tokens' }, el('tbody', {}, tokens.map((t) => el('tr', {}, el('td', {}, t.name), el('td', {}, t.scope), el('td', {}, t.owner),
      el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: async () => {
        try { await api('DELETE', `/tokens/${t.id}`); show(); } catch (err) { say(err.message, true); }
      } }, `Revoke ${t.name}`))))))];
}

async function diagnosticsView() {
  const out = el('pre', { 'aria-live': 'polite', id: 'diagnostic-output' });
  const form = el('form', { 'aria-label': 'Diagnostics' },
    field('Address', 'target', { placeholder: '192.0.2.1 or 2001:db8::1', required: true }),
    el('div', { class: 'row' },
      el('button', { type: 'submit', value: 'ping' }, 'Ping'),
      el('button', { type: 'submit', value: 'traceroute', class: 'secondary' }, 'Traceroute')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const what = (e.submitter && e.submitter.value) || 'ping';
    out.textContent = `${what} running…`;
    try {
      const r = await api('POST', `/diagnostics/${what}`, values(form));
      out.textContent = `$ ${r.command}\n${r.output}`;
    } catch (err) { out.textContent = ''; showProblem(form, err); }
  });
  return [el('h1', {}, 'Diagnostics'), el('p', { class: 'muted' }, 'From the router itself.'), form, out];
}

async function auditView() {
  const entries = await api('GET', '/audit?limit=200');
  return [el('h1', {}, 'Audit log'), el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Audit log' },
    el('thead', {}, el('tr', {}, ...['When', 'Who', 'From', 'What', 'Outcome'].map((h) => el('th', {}, h)))),
    el('tbody', {}, entries.map((a) => el('tr', {}, el('td', {}, new Date(a.at_ms).toLocaleString()), el('td', {}, a.who),
      el('td', {}, a.from), el('td', {}, a.action), el('td', {}, a.outcome))))))];
}

/** A BGP neighbour of the form: the configuration's entry, its policies as words or kept. */
function neighbourOf(v, old = {}) {
  const n = { ...old, neighbor: v.neighbor, remote_as: Number(v.remote_as), local_as: Number(v.local_as), enabled: v.enabled === 'on' };
  if (v.import !== 'keep') n.import = v.import;
  if (v.export !== 'keep') n.export = v.export;
  if (v.password) n.password = v.password;
  if (v.max_prefixes) n.import = { ...(typeof n.import === 'object' ? n.import : {}), max_prefixes: Number(v.max_prefixes) };
  return n;
}

/** Stages the running configuration with `change` made to its BGP neighbours and commits it;
 *  a refused commit leaves no candidate behind. Passwords come back redacted and are kept. */
async function commitNeighbours(change, message) {
  const candidate = (await api('GET', '/config')).config;
  candidate.protocols = candidate.protocols || {};
  candidate.protocols.bgp = candidate.protocols.bgp || {};
  change(candidate.protocols.bgp);
  await api('PUT', '/config/candidate', candidate);
  try {
    await api('POST', '/config/commit', { message });
  } catch (err) {
    try { await api('DELETE', '/config/candidate'); } catch { /* the error below matters */ }
    throw err;
  }
}

async function routingView() {
  const config = (await api('GET', '/config')).config;
  const bgp = (config.protocols && config.protocols.bgp) || {};
  let sessions = [];
  const status = el('p', { class: 'muted', id: 'routing-status', 'aria-live': 'polite' });
  try { sessions = (await api('GET', '/protocols')).protocols; status.textContent = `${sessions.length} session${sessions.length === 1 ? '' : 's'} reported by the routing daemon.`; } catch (err) { status.textContent = err.message; }
  const byName = Object.fromEntries(sessions.map((s) => [s.name, s]));
  const names = [...new Set([...Object.keys(bgp), ...sessions.map((s) => s.name)])].sort();
  const rows = names.map((name) => {
    const s = byName[name] || {};
    const n = bgp[name];
    const r = s.routes || {};
    return el('tr', { 'data-name': name },
      el('td', {}, name), el('td', {}, s.kind || 'bgp'), el('td', { class: 'state' }, s.state || (n && n.enabled === false ? 'disabled' : 'not running')),
      el('td', {}, s.since || ''), el('td', {}, s.neighbor || (n ? n.neighbor : '')),
      el('td', {}, r.imported ?? ''), el('td', {}, r.exported ?? ''), el('td', {}, r.filtered ?? ''),
      el('td', {}, [s.info, s.last_error && !String(s.info).includes(s.last_error) ? `last error: ${s.last_error}` : ''].filter(Boolean).join('; ')),
      el('td', {}, n ? [
        el('button', { type: 'button', class: 'secondary', onclick: () => { fill(name, n); } }, `Edit ${name}`),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try { await commitNeighbours((b) => { b[name].enabled = n.enabled === false; }, `${n.enabled === false ? 'enable' : 'disable'} ${name}`); say(`${name} ${n.enabled === false ? 'enabled' : 'disabled'}.`); show(); } catch (err) { say(err.message, true); }
        } }, `${n.enabled === false ? 'Enable' : 'Disable'} ${name}`),
        el('button', { type: 'button', class: 'secondary', onclick: async () => {
          try { await commitNeighbours((b) => { delete b[name]; }, `remove ${name}`); say(`${name} removed.`); show(); } catch (err) { say(err.message, true); }
        } }, `Remove ${name}`)] : ''));
  });
  const policy = (name) => el('label', {}, name === 'import' ? 'Import' : 'Export',
    el('select', { name }, el('option', { value: 'none' }, 'none'), el('option', { value: 'all' }, 'all'), el('option', { value: 'keep' }, 'as configured (prefix list)')),
    el('span', { class: 'field-error', 'data-field': name }));
  const form = el('form', { 'aria-label': 'BGP neighbour' },
    el('div', { class: 'row' },
      field('Name', 'name', { placeholder: 'upstream1', required: true }),
      field('Neighbour address', 'neighbor', { placeholder: '10.0.3.2', required: true }),
      field('Remote AS', 'remote_as', { type: 'number', min: 1, required: true }),
      field('Local AS', 'local_as', { type: 'number', min: 1, required: true })),
    el('div', { class: 'row' }, policy('import'), policy('export'),
      field('Max prefixes (import)', 'max_prefixes', { type: 'number', min: 1 }),
      field('Password (TCP MD5; empty: unchanged)', 'password', { type: 'password', autocomplete: 'off' })),
    el('label', {}, el('input', { type: 'checkbox', name: 'enabled', checked: true }), ' Enabled'),
    el('button', { type: 'submit' }, 'Save neighbour'));
  function fill(name, n) {
    // By name through `elements`: a form's own `name` property would hide the field's.
    const f = (k) => form.elements.namedItem(k);
    f('name').value = name;
    f('neighbor').value = n.neighbor;
    f('remote_as').value = n.remote_as;
    f('local_as').value = n.local_as;
    f('import').value = typeof n.import === 'string' ? n.import : 'keep';
    f('export').value = typeof n.export === 'string' ? n.export : 'keep';
    f('max_prefixes').value = (typeof n.import === 'object' && n.import.max_prefixes) || '';
    f('enabled').checked = n.enabled !== false;
    f('name').focus();
  }
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = values(form);
    try {
      await commitNeighbours((b) => { b[v.name] = neighbourOf(v, b[v.name]); }, `BGP neighbour ${v.name}`);
      say(`Neighbour ${v.name} saved.`);
      show();
    } catch (err) { showProblem(form, err); }
  });
  if (sessions.length || Object.keys(bgp).length) poll = setInterval(() => { if (location.hash === '#/routing') show(); }, 5000);
  return [el('h1', {}, 'Routing'), status,
    el('div', { class: 'scroll' }, el('table', { 'aria-label': 'Routing sessions' },
      el('thead', {}, el('tr', {}, ...['Name', 'Kind', 'State', 'Since', 'Neighbour', 'Imported', 'Exported', 'Filtered', 'Info', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows))),
    el('h2', {}, 'Add or edit a BGP neighbour'), form,
    el('p', { class: 'muted' }, 'Saving commits the change at once; the routing daemon checks it first. Routes learnt show as origin bird on the Routes page.')];
}

const views = {
  '#/setup': setupView, '#/login': loginView, '#/dashboard': dashboardView,
  '#/interfaces': interfacesView, '#/routes': routesView, '#/plugins': pluginsView,
  '#/config': configView, '#/users': usersView, '#/audit': auditView,
  '#/diagnostics': diagnosticsView, '#/routing': routingView,
};

async function show() {
  if (stream) { stream.close(); stream = null; }
  if (countdown) { clearInterval(countdown); countdown = null; }
  if (poll) { clearInterval(poll); poll = null; }
  const hash = views[location.hash] ? location.hash : '#/dashboard';
  if (bannerPage !== location.hash) say('');
  if (hash !== '#/setup' && hash !== '#/login') nav.hidden = false;
  nav.querySelectorAll('a').forEach((a) => a.toggleAttribute('aria-current', a.getAttribute('href') === hash));
  nav.querySelectorAll('a').forEach((a) => { if (a.getAttribute('href') === hash) a.setAttribute('aria-current', 'page'); });
  try {
    main.replaceChildren(...await views[hash]());
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) main.replaceChildren(el('p', { role: 'alert' }, err.message));
  }
  main.focus();
}

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/logout'); } catch { /* gone anyway */ }
  sessionStorage.removeItem('csrf');
  csrf = '';
  location.hash = '#/login';
});

window.addEventListener('hashchange', show);

(async () => {
  const health = await api('GET', '/health');
  if (!health.set_up) location.hash = '#/setup';
  else if (!location.hash || location.hash === '#/setup') {
    try { const me = await api('GET', '/me'); if (me.csrf_token) { csrf = me.csrf_token; sessionStorage.setItem('csrf', csrf); } location.hash = '#/dashboard'; } catch { location.hash = '#/login'; }
  }
  show();
})();

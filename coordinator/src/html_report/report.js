// The Faultbox report page: reads the run's data from #fb-data and builds the summary,
// the fault matrix, the list of runs and the trace viewer. Data only ever reaches the
// document as text (textContent, canvas fillText), never as markup.
//
// The trace is drawn on a canvas behind an empty scrolling element: only the rows in
// view are drawn, so the page holds no DOM node per event whatever the trace's size.
// #fb-status records what was drawn and any error seen, for tests and for people.
'use strict';
(function () {
  const started = performance.now();
  const status = document.getElementById('fb-status');
  const errorList = document.getElementById('fb-errors');
  let errors = 0;

  function noteError(text) {
    errors += 1;
    status.dataset.errors = String(errors);
    errorList.hidden = false;
    errorList.appendChild(el('li', {}, String(text)));
  }
  window.addEventListener('error', (e) => noteError(e.message + ' (line ' + e.lineno + ')'));
  window.addEventListener('unhandledrejection', (e) => noteError('unhandled rejection: ' + e.reason));
  const consoleError = console.error.bind(console);
  console.error = function (...args) {
    noteError(args.map(String).join(' '));
    consoleError(...args);
  };
  status.dataset.errors = '0';

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function ms(n) {
    if (n < 1000) return n + ' ms';
    if (n < 60000) return (n / 1000).toFixed(2) + ' s';
    return Math.floor(n / 60000) + ' min ' + Math.round((n % 60000) / 1000) + ' s';
  }

  // Seeds as ranges: 0–99, 7.
  function ranges(list) {
    const out = [];
    for (let i = 0; i < list.length; i++) {
      let j = i;
      while (j + 1 < list.length && list[j + 1] === list[j] + 1) j++;
      out.push(j > i ? list[i] + '–' + list[j] : String(list[i]));
      i = j;
    }
    return out.join(', ');
  }

  let data;
  try {
    data = JSON.parse(document.getElementById('fb-data').textContent);
  } catch (e) {
    noteError('the report data does not parse: ' + e.message);
    status.dataset.state = 'broken';
    return;
  }
  const runs = data.runs || [];
  status.dataset.runs = String(runs.length);

  // ---- header and summary ----
  document.getElementById('spec').textContent = data.spec;
  const verdict = document.getElementById('verdict');
  if (data.aborted !== null && data.aborted !== undefined) {
    verdict.textContent = 'no results';
    verdict.className = 'fail';
    document.getElementById('aborted').hidden = false;
    document.getElementById('aborted-text').textContent = data.aborted;
  } else if (data.fail > 0) {
    verdict.textContent = data.fail + ' failed';
    verdict.className = 'fail';
  } else if (data.pass > 0) {
    verdict.textContent = 'all ' + data.pass + ' passed';
    verdict.className = 'pass';
  } else {
    verdict.textContent = 'no tests ran';
    verdict.className = 'skip';
  }
  const summary = document.getElementById('summary-list');
  const facts = [
    ['Spec', data.spec],
    ['Runs', data.aborted ? 'none' : data.pass + ' passed, ' + data.fail + ' failed, ' + data.skip + ' skipped'],
    ['Duration', ms(data.duration_ms)],
    ['Seeds', data.seeds.length ? ranges(data.seeds) : '—'],
    ['Executors', data.executors.length ? data.executors.join(', ') : '—'],
    ['Written', data.generated + ' by Faultbox ' + data.faultbox],
  ];
  for (const [k, v] of facts) summary.append(el('dt', { text: k }), el('dd', { text: v }));

  // ---- the runs ----
  // The last run of each test: what a matrix cell shows, as in the terminal.
  const lastRun = new Map();
  runs.forEach((r, i) => lastRun.set(r.name, i));

  function faultText(f) {
    if (f.interface) return f.service + '.' + f.interface + ' ' + f.action;
    const what = f.errno ? 'deny(' + f.errno + ')' : f.delay ? 'delay(' + f.delay + ')' : f.action;
    return f.service + ' ' + f.syscall + '=' + what;
  }

  const MAX_LISTED = 2000;
  const list = document.getElementById('runs-list');
  if (runs.length === 0) {
    list.append(el('p', { class: 'empty', text: data.aborted ? 'Nothing ran.' : 'The spec has no tests to run.' }));
  } else {
    list.append(el('div', { class: 'runs-head' }, ...['result', 'test', 'seed', 'duration', 'executor', 'faults fired', ''].map((h) => el('span', { text: h }))));
  }
  runs.slice(0, MAX_LISTED).forEach((r, i) => {
    const fired = (r.faults || []).filter((f) => f.hits > 0);
    const head = el('summary', {},
      el('span', { class: 'badge ' + r.result, text: r.result.toUpperCase() }),
      el('span', { class: 'name', title: r.name }, r.name,
        r.cell ? el('span', { class: 'cell', text: '  ' + r.cell[0] + ' × ' + r.cell[1] }) : null),
      el('span', { class: 'mono', text: r.seed === undefined ? '' : 'seed ' + r.seed }),
      el('span', { text: r.duration_ms === undefined ? '' : ms(r.duration_ms) }),
      el('span', { class: 'mono', text: r.executor || '' }),
      el('span', { class: fired.length ? 'fired' : 'idle', text: fired.length ? fired.map((f) => faultText(f) + ' ×' + f.hits).join('; ') : '—' }),
      r.trace ? el('a', { href: '#trace-' + i, text: 'trace' }) : el('span'));
    const body = el('div', { class: 'body' });
    if (r.reason) body.append(el('h4', { text: r.result === 'skip' ? 'Skipped' : 'Reason' + (r.failure_type ? ' (' + r.failure_type + ')' : '') }), el('pre', { text: r.reason }));
    if (r.replay) {
      const copy = el('button', { type: 'button', text: 'copy' });
      copy.addEventListener('click', () => {
        if (navigator.clipboard) navigator.clipboard.writeText(r.replay).catch(() => {});
      });
      body.append(el('h4', { text: 'Replay' }), el('div', { class: 'replay' }, el('code', { text: r.replay }), copy));
    }
    if (r.diagnostics && r.diagnostics.length) {
      body.append(el('h4', { text: 'Diagnostics' }), el('ul', {}, ...r.diagnostics.map((d) =>
        el('li', { class: 'diag' }, d.file ? d.file + ':' + d.line + ': ' : '', el('code', { text: d.code }),
          ' ' + d.message + ' — ' + d.suggestion))));
    }
    if (r.faults && r.faults.length) {
      body.append(el('h4', { text: 'Faults' }), el('ul', {}, ...r.faults.map((f) =>
        el('li', { class: f.hits > 0 ? 'fired' : 'idle' },
          faultText(f) + (f.label ? ' [' + f.label + ']' : '') + ': ' + (f.hits > 0 ? 'fired ' + f.hits + ' times' : 'never fired')))));
    }
    if (r.return_value !== null && r.return_value !== undefined) body.append(el('h4', { text: 'Returned' }), el('pre', { text: r.return_value }));
    if (r.started) body.append(el('h4', { text: 'Started' }), el('div', { class: 'mono', text: r.started + (r.assertions !== undefined ? ', ' + r.assertions + ' assertions checked' : '') }));
    list.append(el('details', { class: 'run', id: 'run-' + i, open: r.result === 'fail' }, head, body));
  });
  if (runs.length > MAX_LISTED) {
    list.append(el('p', { class: 'empty', text: (runs.length - MAX_LISTED) + ' more runs are not listed; the trace viewer offers them all.' }));
  }

  // ---- what failed, on the overview ----
  const failed = runs.map((r, i) => [r, i]).filter(([r]) => r.result === 'fail');
  if (failed.length) {
    const shown = failed.slice(0, 50);
    document.getElementById('failures-list').append(...shown.map(([r, i]) => el('li', {},
      el('a', { href: '#run-' + i, text: r.name }), ' seed ' + r.seed + ': ',
      el('span', { class: 'mono', text: (r.reason || '').split('\n')[0] }))));
    if (failed.length > shown.length) document.getElementById('failures-list').append(el('li', { class: 'empty', text: (failed.length - shown.length) + ' more on the Tests tab' }));
    document.getElementById('failures').hidden = false;
  }

  // ---- the fault matrix ----
  if (data.matrix) {
    const m = data.matrix;
    const cells = new Map(m.cells.map((c) => [c.scenario + '\u0000' + c.fault, c]));
    const scenarios = [...new Set(m.scenarios)];
    const faults = [...new Set(m.faults)];
    const table = el('table', { class: 'matrix', id: 'matrix-table' },
      el('thead', {}, el('tr', {}, el('th', { class: 'scenario', text: 'scenario \\ fault' }), ...faults.map((f) => el('th', { text: f })))));
    const tbody = el('tbody');
    for (const s of scenarios) {
      const row = el('tr', {}, el('th', { class: 'scenario', text: s }));
      for (const f of faults) {
        const c = cells.get(s + '\u0000' + f);
        if (!c) {
          row.append(el('td', { class: 'none', text: '—', title: 'not in the matrix, or not run' }));
        } else if (c.result === 'excluded') {
          row.append(el('td', { class: 'excluded', text: 'excluded' }));
        } else {
          const i = lastRun.get(c.test);
          const label = [c.result.toUpperCase(), el('small', { text: ms(c.duration_ms) })];
          row.append(el('td', { class: c.result, 'data-test': c.test },
            i === undefined ? el('span', {}, ...label) : el('a', { href: '#run-' + i, title: c.test }, ...label)));
        }
      }
      tbody.append(row);
    }
    table.append(tbody);
    document.getElementById('matrix-tables').append(table,
      el('div', { text: m.passed + '/' + (m.passed + m.failed) + ' cells passed' }));
    document.getElementById('matrix').hidden = false;
  }

  // ---- the trace viewer ----
  const FAULT = 1, RULE = 2, DELAY = 4;
  const ROW = 22, HEADER = 30, GUTTER = 112, MIN_LANE = 180, MAX_PX = 15e6;
  const COLORS = {
    fault: '#d1242f', delay: '#e16f24', rule: '#8250df', step: '#0969da', life: '#1a7f37',
    proxy: '#1b9aaa', syscall: '#8c959f', other: '#9a6700',
  };
  const traced = runs.map((r, i) => (r.trace ? i : -1)).filter((i) => i >= 0);
  const view = {
    run: -1, t: null, lanes: [], kinds: [],
    laneShown: [], kindShown: [], text: '', onlyFaults: false,
    rows: new Int32Array(0), rowOf: new Int32Array(0), columns: [], colOf: new Int32Array(0),
    arrows: new Int32Array(0), implied: new Uint8Array(0), minFrom: new Int32Array(0),
    selected: -1, scale: 1, laneW: MIN_LANE, drawMax: 0, drawn: false,
  };
  const canvas = document.getElementById('trace-canvas');
  const scroller = document.getElementById('trace-scroll');
  const spacer = document.getElementById('trace-spacer');
  const detail = document.getElementById('trace-detail');
  const select = document.getElementById('trace-run');
  const ctx = canvas.getContext('2d');

  function colorOf(ev) {
    const flags = ev[5];
    if (flags & DELAY) return COLORS.delay;
    if (flags & FAULT) return COLORS.fault;
    if (flags & RULE) return COLORS.rule;
    const kind = view.t.kinds[ev[3]];
    if (kind.startsWith('step_')) return COLORS.step;
    if (kind.startsWith('service_')) return COLORS.life;
    if (kind === 'proxy') return COLORS.proxy;
    if (kind === 'syscall') return COLORS.syscall;
    return COLORS.other;
  }

  // The few words a row shows next to its dot.
  function label(ev) {
    const f = ev[7];
    let s = view.t.types[ev[4]];
    for (const key of ['decision', 'path', 'peer', 'method', 'status', 'action', 'rules', 'label', 'line', 'error']) {
      const v = f[key];
      if (v === undefined || v === '' || (key === 'decision' && v === 'allow')) continue;
      if (key === 'action' && s.endsWith('.' + v)) continue;
      s += ' ' + (v.length > 80 ? v.slice(0, 80) + '…' : v);
    }
    return s;
  }

  document.getElementById('tests-count').textContent = '(' + runs.length + ')';
  if (!traced.length) {
    document.querySelector('#trace .controls').hidden = true;
    document.querySelector('#trace .legend').hidden = true;
    document.querySelector('#trace .viewer').hidden = true;
    document.getElementById('trace-none').hidden = false;
  }
  if (traced.length) {
    const shown = traced.slice(0, MAX_LISTED);
    for (const i of shown) {
      const r = runs[i];
      select.append(el('option', { value: String(i), text: r.result.toUpperCase() + '  ' + r.name + '  seed ' + r.seed + '  (' + r.trace.events.length + ' events)' }));
    }
    select.addEventListener('change', () => openTrace(Number(select.value), null, true));
    document.getElementById('f-text').addEventListener('input', (e) => { view.text = e.target.value; refilter(true); });
    document.getElementById('f-faults').addEventListener('change', (e) => { view.onlyFaults = e.target.checked; refilter(true); });
    scroller.addEventListener('scroll', () => schedule());
    scroller.addEventListener('click', (e) => {
      const rect = scroller.getBoundingClientRect();
      const y = e.clientY - rect.top;
      if (y < HEADER) return;
      const row = Math.floor((scroller.scrollTop / view.scale + y - HEADER) / ROW);
      if (row >= 0 && row < view.rows.length) choose(view.rows[row], false);
    });
    scroller.addEventListener('keydown', (e) => {
      if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'j' && e.key !== 'k') return;
      e.preventDefault();
      const at = view.selected >= 0 ? view.rowOf[view.selected] : -1;
      const next = Math.min(view.rows.length - 1, Math.max(0, at + (e.key === 'ArrowDown' || e.key === 'j' ? 1 : -1)));
      if (view.rows.length) choose(view.rows[next], true);
    });
    window.addEventListener('resize', () => { layout(); schedule(); });
  }

  // Opens run `i`'s trace; `seq` selects that event.
  function openTrace(i, seq, userAction) {
    const r = runs[i];
    view.run = i;
    view.t = r.trace;
    view.selected = -1;
    select.value = String(i);
    const t = view.t;
    const counts = new Int32Array(t.lanes.length);
    for (const ev of t.events) counts[ev[2]]++;
    view.laneShown = t.lanes.map(() => true);
    view.kindShown = t.kinds.map(() => true);
    const services = document.getElementById('f-services');
    const kinds = document.getElementById('f-kinds');
    services.replaceChildren(el('legend', { text: 'Services' }));
    kinds.replaceChildren(el('legend', { text: 'Event types' }));
    t.lanes.forEach((name, l) => {
      const box = el('input', { type: 'checkbox', checked: true, 'data-lane': name });
      box.addEventListener('change', () => { view.laneShown[l] = box.checked; refilter(true); });
      services.append(el('label', {}, box, ' ' + name + ' (' + counts[l] + ')'));
    });
    const perKind = new Int32Array(t.kinds.length);
    for (const ev of t.events) perKind[ev[3]]++;
    t.kinds.forEach((name, k) => {
      const box = el('input', { type: 'checkbox', checked: true, 'data-kind': name });
      box.addEventListener('change', () => { view.kindShown[k] = box.checked; refilter(true); });
      kinds.append(el('label', {}, box, ' ' + name + ' (' + perKind[k] + ')'));
    });
    // Which event sent what: arrows as typed pairs.
    view.allArrows = Int32Array.from(t.arrows);
    refilter(userAction);
    if (seq !== null) {
      const at = t.events.findIndex((ev) => ev[0] === seq);
      if (at >= 0) choose(at, true);
    } else {
      scroller.scrollTop = 0;
    }
    detailFor(view.selected);
  }

  // Applies the filters: which rows, lanes and arrows are shown.
  function refilter(userAction) {
    const t = view.t;
    const n = t.events.length;
    const text = view.text.trim().toLowerCase();
    const typeOk = t.types.map((ty) => !text || ty.toLowerCase().includes(text));
    const rows = new Int32Array(n);
    const rowOf = new Int32Array(n).fill(-1);
    let count = 0;
    for (let i = 0; i < n; i++) {
      const ev = t.events[i];
      if (!view.laneShown[ev[2]] || !view.kindShown[ev[3]] || !typeOk[ev[4]]) continue;
      if (view.onlyFaults && !(ev[5] & (FAULT | RULE))) continue;
      rowOf[i] = count;
      rows[count++] = i;
    }
    view.rows = rows.subarray(0, count);
    view.rowOf = rowOf;
    view.columns = [];
    view.colOf = new Int32Array(t.lanes.length).fill(-1);
    t.lanes.forEach((_, l) => {
      if (view.laneShown[l]) { view.colOf[l] = view.columns.length; view.columns.push(l); }
    });
    // An arrow whose end is hidden moves to the nearest shown event of the same lane:
    // the sender back, the receiver forward. Happened-before is transitive, so the
    // arrow still says what the clocks say.
    const prevShown = new Int32Array(n), nextShown = new Int32Array(n);
    const last = new Int32Array(t.lanes.length).fill(-1);
    for (let i = 0; i < n; i++) {
      const lane = t.events[i][2];
      if (rowOf[i] >= 0) last[lane] = i;
      prevShown[i] = last[lane];
    }
    last.fill(-1);
    for (let i = n - 1; i >= 0; i--) {
      const lane = t.events[i][2];
      if (rowOf[i] >= 0) last[lane] = i;
      nextShown[i] = last[lane];
    }
    const a = view.allArrows;
    const pairs = [];
    const seen = new Set();
    for (let k = 0; k < a.length; k += 2) {
      const s = a[k], r = a[k + 1];
      const ls = t.events[s][2], lr = t.events[r][2];
      if (!view.laneShown[ls] || !view.laneShown[lr]) continue;
      const from = rowOf[s] >= 0 ? s : prevShown[s];
      const to = rowOf[r] >= 0 ? r : nextShown[r];
      if (from < 0 || to < 0) continue;
      const key = from * 4294967296 + to;
      if (seen.has(key)) continue;
      seen.add(key);
      pairs.push([rowOf[from], rowOf[to], from === s && to === r ? 0 : 1, from, to]);
    }
    pairs.sort((x, y) => x[1] - y[1]);
    view.arrows = new Int32Array(pairs.length * 4);
    view.implied = new Uint8Array(pairs.length);
    pairs.forEach((p, k) => {
      view.arrows[4 * k] = p[0]; view.arrows[4 * k + 1] = p[1];
      view.arrows[4 * k + 2] = p[3]; view.arrows[4 * k + 3] = p[4];
      view.implied[k] = p[2];
    });
    // The smallest sender row from each arrow on: the scan for arrows in view stops
    // once every later arrow starts below it.
    view.minFrom = new Int32Array(pairs.length);
    let min = 2147483647;
    for (let k = pairs.length - 1; k >= 0; k--) { min = Math.min(min, pairs[k][0]); view.minFrom[k] = min; }
    document.getElementById('trace-count').textContent =
      count + ' of ' + n + ' events, ' + pairs.length + ' messages';
    status.dataset.run = String(view.run);
    status.dataset.lanes = String(view.columns.length);
    status.dataset.events = String(n);
    status.dataset.rows = String(count);
    status.dataset.arrows = String(pairs.length);
    layout();
    if (view.selected >= 0 && view.rowOf[view.selected] >= 0) reveal(view.selected);
    schedule();
    if (userAction) writeHash();
  }

  function layout() {
    const w = scroller.clientWidth, h = scroller.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.floor(w * dpr));
    canvas.height = Math.max(1, Math.floor(h * dpr));
    canvas.style.width = w + 'px';
    canvas.style.height = h + 'px';
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const cols = Math.max(1, view.columns.length);
    view.laneW = Math.max(MIN_LANE, Math.floor((w - GUTTER) / cols));
    const full = HEADER + view.rows.length * ROW + ROW;
    // Browsers cap an element's height: very long traces scroll proportionally.
    view.scale = full > MAX_PX ? MAX_PX / full : 1;
    spacer.style.height = Math.ceil(full * view.scale) + 'px';
    spacer.style.width = (GUTTER + cols * view.laneW) + 'px';
  }

  let pending = false;
  let tab = '';
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  function laneX(l) {
    return GUTTER + view.colOf[l] * view.laneW + 14 - scroller.scrollLeft;
  }

  function draw() {
    if (!view.t || tab !== 'trace') return;
    const t0 = performance.now();
    const t = view.t;
    const w = scroller.clientWidth, h = scroller.clientHeight;
    const top = scroller.scrollTop / view.scale;
    const first = Math.max(0, Math.floor(top / ROW));
    const last = Math.min(view.rows.length - 1, Math.floor((top + h - HEADER) / ROW));
    const y = (row) => HEADER + row * ROW - top + ROW / 2;
    ctx.clearRect(0, 0, w, h);
    ctx.font = '12px "DejaVu Sans Mono", ui-monospace, monospace';
    ctx.textBaseline = 'middle';
    // Lanes.
    ctx.strokeStyle = '#d0d7de';
    ctx.lineWidth = 1;
    for (const l of view.columns) {
      const x = Math.round(laneX(l)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, HEADER); ctx.lineTo(x, h); ctx.stroke();
    }
    // The selected row.
    if (view.selected >= 0 && view.rowOf[view.selected] >= first && view.rowOf[view.selected] <= last) {
      ctx.fillStyle = '#fff8c5';
      ctx.fillRect(0, y(view.rowOf[view.selected]) - ROW / 2, w, ROW);
    }
    // Messages in view: arrows are sorted by receiver row; scan from the first that
    // ends at or below the top until every remaining one starts below the bottom.
    let drawnArrows = 0;
    const A = view.arrows;
    let lo = 0, hi = view.implied.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (A[4 * mid + 1] < first) lo = mid + 1; else hi = mid; }
    for (let k = lo; k < view.implied.length && view.minFrom[k] <= last; k++) {
      const from = A[4 * k], to = A[4 * k + 1];
      if (from > last) continue;
      const s = t.events[A[4 * k + 2]], r = t.events[A[4 * k + 3]];
      const x1 = laneX(s[2]), y1 = y(from), x2 = laneX(r[2]), y2 = y(to);
      const hot = view.selected === A[4 * k + 2] || view.selected === A[4 * k + 3];
      ctx.strokeStyle = hot ? '#bf3989' : 'rgba(9, 105, 218, 0.55)';
      ctx.fillStyle = ctx.strokeStyle;
      ctx.lineWidth = hot ? 2 : 1.2;
      ctx.setLineDash(view.implied[k] ? [4, 3] : []);
      ctx.beginPath(); ctx.moveTo(x1, y1); ctx.lineTo(x2, y2); ctx.stroke();
      ctx.setLineDash([]);
      const ang = Math.atan2(y2 - y1, x2 - x1);
      const tipX = x2 - 6 * Math.cos(ang), tipY = y2 - 6 * Math.sin(ang);
      ctx.beginPath();
      ctx.moveTo(tipX, tipY);
      ctx.lineTo(tipX - 8 * Math.cos(ang - 0.4), tipY - 8 * Math.sin(ang - 0.4));
      ctx.lineTo(tipX - 8 * Math.cos(ang + 0.4), tipY - 8 * Math.sin(ang + 0.4));
      ctx.closePath(); ctx.fill();
      drawnArrows++;
    }
    // Events.
    let drawnEvents = 0;
    for (let row = first; row <= last; row++) {
      const i = view.rows[row];
      const ev = t.events[i];
      const x = laneX(ev[2]), yy = y(row);
      const c = colorOf(ev);
      ctx.fillStyle = c;
      ctx.beginPath();
      if (ev[5] & RULE) {
        ctx.moveTo(x, yy - 6); ctx.lineTo(x + 6, yy); ctx.lineTo(x, yy + 6); ctx.lineTo(x - 6, yy);
      } else {
        ctx.arc(x, yy, ev[5] & FAULT ? 6 : 4, 0, 2 * Math.PI);
      }
      ctx.fill();
      if (ev[5] & FAULT) {
        ctx.strokeStyle = c; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(x, yy, 9, 0, 2 * Math.PI); ctx.stroke();
      }
      ctx.save();
      ctx.beginPath();
      // A label keeps to its lane, but the last lane's may run to the edge.
      const room = view.colOf[ev[2]] === view.columns.length - 1 ? w : view.laneW - 20;
      ctx.rect(x + 12, yy - ROW / 2, room, ROW);
      ctx.clip();
      ctx.fillStyle = ev[5] & (FAULT | RULE) ? c : '#1f2328';
      ctx.fillText(label(ev), x + 13, yy);
      ctx.restore();
      drawnEvents++;
    }
    // The gutter: sequence number and time since the test started.
    ctx.fillStyle = '#f6f8fa';
    ctx.fillRect(0, HEADER, GUTTER - 6, h - HEADER);
    ctx.fillStyle = '#59636e';
    for (let row = first; row <= last; row++) {
      const ev = t.events[view.rows[row]];
      ctx.fillText(String(ev[0]).padStart(6) + ' ' + (ev[1] / 1000).toFixed(3).padStart(8), 4, y(row));
    }
    // Lane names on top.
    ctx.fillStyle = '#f6f8fa';
    ctx.fillRect(0, 0, w, HEADER);
    ctx.strokeStyle = '#d0d7de';
    ctx.beginPath(); ctx.moveTo(0, HEADER - 0.5); ctx.lineTo(w, HEADER - 0.5); ctx.stroke();
    ctx.font = '600 13px system-ui, "DejaVu Sans", sans-serif';
    ctx.fillStyle = '#1f2328';
    ctx.fillText('seq  ms', 8, HEADER / 2);
    for (const l of view.columns) ctx.fillText(t.lanes[l], laneX(l) - 8, HEADER / 2);
    const took = performance.now() - t0;
    view.drawMax = Math.max(view.drawMax, took);
    status.dataset.firstRow = String(first);
    status.dataset.lastRow = String(last);
    status.dataset.drawnEvents = String(drawnEvents);
    status.dataset.drawnArrows = String(drawnArrows);
    status.dataset.drawMs = took.toFixed(1);
    status.dataset.drawMaxMs = view.drawMax.toFixed(1);
    if (!view.drawn) {
      view.drawn = true;
      status.dataset.renderMs = (performance.now() - started).toFixed(0);
    }
  }

  // Scrolls so that event `i` is in the middle of the view.
  function reveal(i) {
    const row = view.rowOf[i];
    if (row < 0) return;
    const target = (HEADER + row * ROW - scroller.clientHeight / 2) * view.scale;
    scroller.scrollTop = Math.max(0, target);
  }

  function choose(i, scrollTo) {
    view.selected = i;
    if (scrollTo) reveal(i);
    detailFor(i);
    status.dataset.selected = i >= 0 ? String(view.t.events[i][0]) : '';
    writeHash();
    schedule();
  }

  function detailFor(i) {
    if (i < 0) {
      detail.replaceChildren(el('p', { class: 'empty', text: 'Click an event to see its fields.' }));
      return;
    }
    const t = view.t;
    const ev = t.events[i];
    const rows = [
      ['seq', String(ev[0])],
      ['time', '+' + (ev[1] / 1000).toFixed(3) + ' ms'],
      ['service', t.lanes[ev[2]]],
      ['type', t.kinds[ev[3]]],
      ['event_type', t.types[ev[4]]],
    ];
    if (ev[6] !== null) rows.push(['about', ev[6]]);
    const table = (pairs) => el('table', {}, ...pairs.map(([k, v]) => el('tr', {}, el('th', { text: k }), el('td', { text: v }))));
    const clock = t.lanes.map((name, l) => [name, ev[8][l]]).filter((p) => p[1] > 0).map(([k, v]) => [k, String(v)]);
    const link = (j) => {
      const a = el('a', { text: '#' + t.events[j][0] + ' ' + t.lanes[t.events[j][2]] + ' ' + t.types[t.events[j][4]] });
      a.addEventListener('click', () => choose(j, true));
      return el('li', {}, a);
    };
    const from = [], to = [];
    const A = view.allArrows;
    for (let k = 0; k < A.length; k += 2) {
      if (A[k + 1] === i) from.push(A[k]);
      if (A[k] === i) to.push(A[k + 1]);
    }
    const parts = [
      el('h3', { text: 'Event' }), table(rows),
      el('h3', { text: 'Fields' }),
      Object.keys(ev[7]).length ? table(Object.entries(ev[7])) : el('p', { class: 'empty', text: 'none' }),
      el('h3', { text: 'Vector clock' }), table(clock),
      from.length ? el('h3', { text: 'Received from' }) : null, from.length ? el('ul', {}, ...from.map(link)) : null,
      to.length ? el('h3', { text: 'Sent to' }) : null, to.length ? el('ul', {}, ...to.map(link)) : null];
    detail.replaceChildren(...parts.filter((p) => p !== null));
  }

  // The view in the address: #trace-RUN[/seq-N][/services-a,b][/kinds-x,y][/type-TEXT][/faults].
  function writeHash() {
    if (view.run < 0) return;
    const t = view.t;
    const parts = ['trace-' + view.run];
    if (view.selected >= 0) parts.push('seq-' + t.events[view.selected][0]);
    if (view.laneShown.some((v) => !v)) parts.push('services-' + t.lanes.filter((_, l) => view.laneShown[l]).map(encodeURIComponent).join(','));
    if (view.kindShown.some((v) => !v)) parts.push('kinds-' + t.kinds.filter((_, k) => view.kindShown[k]).map(encodeURIComponent).join(','));
    if (view.text) parts.push('type-' + encodeURIComponent(view.text));
    if (view.onlyFaults) parts.push('faults');
    history.replaceState(null, '', '#' + parts.join('/'));
  }

  // One tab at a time: the overview, the tests, or the trace.
  function showTab(name) {
    if (tab === name) return;
    tab = name;
    for (const t of ['overview', 'tests', 'trace']) document.getElementById('tab-' + t).hidden = t !== name;
    for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('on', a.dataset.tab === name);
    status.dataset.tab = name;
    // The viewer measures itself only when it can be seen.
    if (name === 'trace' && view.t) { layout(); draw(); }
  }

  function decode(s) {
    try { return decodeURIComponent(s); } catch (e) { return s; }
  }

  function readHash() {
    const raw = location.hash.slice(1);
    const parts = raw.split('/');
    const m = /^trace-(\d+)$/.exec(parts[0]);
    if (m && runs[Number(m[1])] && runs[Number(m[1])].trace) {
      const i = Number(m[1]);
      openTrace(i, null, false);
      const t = view.t;
      let seq = null;
      for (const p of parts.slice(1)) {
        const cut = p.indexOf('-');
        const key = cut < 0 ? p : p.slice(0, cut);
        const value = cut < 0 ? '' : p.slice(cut + 1);
        if (key === 'seq') seq = Number(value);
        if (key === 'services') {
          const keep = new Set(value.split(',').map(decode));
          view.laneShown = t.lanes.map((l) => keep.has(l));
        }
        if (key === 'kinds') {
          const keep = new Set(value.split(',').map(decode));
          view.kindShown = t.kinds.map((k) => keep.has(k));
        }
        if (key === 'type') { view.text = decode(value); document.getElementById('f-text').value = view.text; }
        if (key === 'faults') { view.onlyFaults = true; document.getElementById('f-faults').checked = true; }
      }
      for (const box of document.querySelectorAll('#f-services input')) box.checked = view.laneShown[t.lanes.indexOf(box.dataset.lane)];
      for (const box of document.querySelectorAll('#f-kinds input')) box.checked = view.kindShown[t.kinds.indexOf(box.dataset.kind)];
      showTab('trace');
      refilter(false);
      if (seq !== null) {
        const at = t.events.findIndex((ev) => ev[0] === seq);
        if (at >= 0) choose(at, true);
      }
      return;
    }
    // Without a trace in the address: the first failed run's, else the first.
    if (view.run < 0 && traced.length) {
      const failed = traced.find((i) => runs[i].result === 'fail');
      openTrace(failed === undefined ? traced[0] : failed, null, false);
    }
    const run = /^run-(\d+)$/.exec(raw);
    if (run || raw === 'tests') {
      showTab('tests');
      const target = run && document.getElementById(raw);
      if (target) {
        target.open = true;
        target.scrollIntoView();
      }
    } else if (raw === 'trace') {
      showTab('trace');
    } else {
      showTab('overview');
    }
  }

  readHash();
  window.addEventListener('hashchange', readHash);
  if (view.t) draw();
  status.dataset.nodes = String(document.getElementsByTagName('*').length);
  status.dataset.resources = String(performance.getEntriesByType('resource').length);
  status.dataset.state = 'ready';
  if (!view.drawn) status.dataset.renderMs = (performance.now() - started).toFixed(0);
})();

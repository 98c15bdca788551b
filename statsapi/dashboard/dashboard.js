// lbpool dashboard: polls ./stats (GET /lbpool/stats) about once a second
// and keeps one table per pool, one row per backend. Rows are updated in
// place, so a focused button keeps its focus. The buttons POST to ./state.
// The same poll reads ./pools (GET /lbpool/pools) for each pool's queue;
// without it the tables still show, with no queue line.
//
// Requests per second are not in the stats: they are computed here from
// successive requests_total samples.

const POLL_MS = 1000;
const TIMEOUT_MS = 5000;
const HISTORY = 60; // samples kept for the sparklines: about a minute
const CHANGED_MS = 5000; // how long a state change stays marked
const MESSAGE_MS = 10000; // how long a button's result stays in the row

// a read-only page (lbpool_dashboard read_only) has no buttons
const READ_ONLY = document.body.hasAttribute("data-read-only");

const pools = new Map(); // pool name -> pool view
const rows = new Map(); // pool + "\n" + url -> row view

const $ = (id) => document.getElementById(id);

// el makes an element with a class and text.
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// svg makes an SVG element with attributes.
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// stateOf gives the state shown for a backend: admin maint first (it stops
// checks, so health is stale), then health (down, or held for flapping),
// then ejection for failed responses, then drain, then slow start.
function stateOf(s) {
  if (s.state === "maint") return { cls: "maint", word: "maint" };
  if (!s.alive) return { cls: "down", word: s.held ? "held" : "down" };
  if (s.ejected) return { cls: "ejected", word: "ejected" };
  if (s.state === "drain") return { cls: "drain", word: "drain" };
  if (s.slow_start_percent) return { cls: "slow", word: `slow start ${Math.floor(s.slow_start_percent)}%` };
  return { cls: "up", word: "up" };
}

const integer = new Intl.NumberFormat("en-US");

function formatRate(r) {
  if (r === null) return "–";
  return r < 10 ? r.toFixed(1) : integer.format(Math.round(r));
}

// formatAge renders seconds as 4s, 3m, 2h or 5d.
function formatAge(sec) {
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m`;
  if (sec < 86400) return `${Math.floor(sec / 3600)}h`;
  return `${Math.floor(sec / 86400)}d`;
}

function secondsSince(iso) {
  return (Date.now() - Date.parse(iso)) / 1000;
}

// ---- building the page ----

const COLUMNS = [
  ["backend", "Backend"],
  ["state", "State"],
  ["active", "Active", "active connections"],
  ["rate", "Req/s", "requests per second over the last minute"],
  ["requests", "Requests", "requests answered"],
  ["failures", "Fail", "failed tries"],
  ["sticky", "Sticky", "requests routed by their sticky session cookie"],
  ["latency", "Latency", "moving average of the time to response headers"],
  ["uptime", "Uptime"],
  ["memory", "Memory", "as the backend reports it"],
  ["check", "Last check", "status, duration, age"],
  ["actions", "Admin state"],
].filter(([key]) => !(READ_ONLY && key === "actions"));

function newPool(name) {
  const section = el("section", "pool");
  section.dataset.pool = name;
  const head = el("div", "pool-head");
  const h2 = el("h2", "", name);
  const info = el("span", "pool-info");
  head.append(h2, info);
  const table = el("table");
  const caption = el("caption", "visually-hidden", `Backends of pool ${name}`);
  const thead = el("thead");
  const tr = el("tr");
  for (const [key, label, title] of COLUMNS) {
    const th = el("th", `col-${key}`, label);
    th.scope = "col";
    if (title) th.title = title;
    tr.append(th);
  }
  thead.append(tr);
  const tbody = el("tbody");
  table.append(caption, thead, tbody);
  const wrap = el("div", "table-wrap");
  wrap.append(table);
  section.append(head, wrap);
  return { name, section, info, tbody, rows: [] };
}

function newRow(pool, url) {
  const tr = el("tr", "backend");
  tr.dataset.pool = pool;
  tr.dataset.url = url;
  const cells = {};
  for (const [key, label] of COLUMNS) {
    const td = el("td", `col-${key}`);
    td.dataset.label = label;
    cells[key] = td;
    tr.append(td);
  }
  const r = { pool, url, tr, rates: [], actives: [], last: null, cls: null, changedAt: 0 };

  r.weight = el("span", "weight");
  cells.backend.append(el("span", "url", url), r.weight);

  r.badge = el("span", "badge");
  r.flag = el("span", "flag", "changed");
  r.flag.hidden = true;
  cells.state.append(r.badge, r.flag);

  r.bar = el("span", "bar");
  r.barFill = el("span", "bar-fill");
  r.bar.append(r.barFill);
  r.active = el("span", "num");
  cells.active.append(r.bar, r.active);

  r.spark = svg("svg", { class: "spark", viewBox: `0 0 ${HISTORY} 20`, preserveAspectRatio: "none", role: "img" });
  r.sparkArea = svg("polygon", { class: "spark-area", points: "" });
  r.sparkLine = svg("polyline", { class: "spark-line", points: "" });
  r.spark.append(r.sparkArea, r.sparkLine);
  r.rate = el("span", "num");
  cells.rate.append(r.spark, r.rate);

  r.requests = cells.requests;
  r.failures = cells.failures;
  r.sticky = cells.sticky;
  r.latency = cells.latency;
  r.uptime = cells.uptime;
  r.memory = cells.memory;
  r.check = cells.check;
  r.buttons = {};
  if (READ_ONLY) return r;

  const group = el("span", "buttons");
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Admin state of ${url}`);
  for (const state of ["drain", "maint", "ready"]) {
    const b = el("button", `act act-${state}`, state);
    b.type = "button";
    b.dataset.action = state;
    b.setAttribute("aria-label", `${state[0].toUpperCase()}${state.slice(1)} ${url} in pool ${pool}`);
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => send(r, state, { state }));
    r.buttons[state] = b;
    group.append(b);
  }
  // a run-time weight: a number, or empty for the configured weight
  r.weightIn = el("input", "weight-in");
  r.weightIn.type = "number";
  r.weightIn.min = "1";
  r.weightIn.max = "10000";
  r.weightIn.setAttribute("aria-label", `Weight of ${url} in pool ${pool}; empty for the configured weight`);
  const wb = el("button", "act act-weight", "weight");
  wb.type = "button";
  wb.dataset.action = "weight";
  wb.setAttribute("aria-label", `Set the weight of ${url} in pool ${pool}`);
  wb.addEventListener("click", () => {
    const v = r.weightIn.value.trim();
    const weight = v === "" ? null : Number(v);
    send(r, v === "" ? "configured weight" : `weight ${v}`, { weight });
  });
  r.weightButton = wb;
  const weightSet = el("span", "weight-set");
  weightSet.append(r.weightIn, wb);
  group.append(weightSet);
  r.msg = el("output", "msg");
  cells.actions.append(group, r.msg);
  return r;
}

// ---- updating ----

// sample adds a poll's requests_total to the row's history and returns the
// rate since the previous poll (null on the first).
function sample(r, s, t) {
  let rate = null;
  if (r.last) {
    const dt = (t - r.last.t) / 1000;
    const dn = s.requests_total - r.last.total;
    rate = dt > 0 && dn >= 0 ? dn / dt : 0; // a counter that went back (a new backend) counts as 0
    r.rates.push(rate);
    if (r.rates.length > HISTORY) r.rates.shift();
  }
  r.last = { total: s.requests_total, t };
  r.actives.push(s.active_connections);
  if (r.actives.length > HISTORY) r.actives.shift();
  return rate;
}

// updateRow shows one stats object; t is set for a poll, not for the
// answer to a button.
function updateRow(r, s, t) {
  const st = stateOf(s);
  if (r.cls !== null && r.cls !== st.cls) r.changedAt = Date.now();
  r.cls = st.cls;
  r.tr.dataset.state = st.cls;
  r.tr.className = `backend ${st.cls}`;
  r.badge.className = `badge ${st.cls}`;
  r.badge.textContent = st.word;
  r.badge.title = s.ejected && s.ejected_since
    ? `ejected ${formatAge(secondsSince(s.ejected_since))} ago; ${integer.format(s.ejections_total || 0)} ejections in all`
    : "";
  const changed = Date.now() - r.changedAt < CHANGED_MS;
  r.tr.classList.toggle("changed", changed);
  r.flag.hidden = !changed;

  // a member found through DNS says so, and that it is leaving once it left DNS;
  // a backend a reload removed is leaving until its requests and streams end
  const notes = [];
  if (s.source === "dns") notes.push(s.leaving ? "dns · leaving" : "dns");
  else if (s.leaving) notes.push("leaving");
  if (s.backup) notes.push("backup");
  if (s.ejected) notes.push(s.ejected_reason ? `ejected: ${s.ejected_reason}` : "ejected");
  if (s.held) notes.push(`held ${formatAge(-secondsSince(s.held_until))} more (hold ${s.holds_in_a_row} in a row): ${s.hold_reason}`);
  if (s.max_conns) notes.push(`max ${integer.format(s.max_conns)}`);
  if (s.weight !== s.configured_weight) notes.push(`weight ${s.weight} (set; configured ${s.configured_weight})`);
  else if (s.weight !== 1) notes.push(`weight ${s.weight}`);
  // load_reports: the weight learned from the backend's reports, beside the configured one
  if (s.reported_utilization != null || (s.learned_weight != null && s.learned_weight !== 1)) {
    const util = s.reported_utilization != null ? `; utilization ${s.reported_utilization}, ${formatAge(s.report_age_seconds)} ago` : "";
    notes.push(`learned ×${Number(s.learned_weight).toFixed(2)}${util}`);
  }
  if (s.bad_reports_total) notes.push(`${integer.format(s.bad_reports_total)} bad load reports`);
  if (s.state_source === "storage") notes.push("state from storage");
  if (s.unsaved) notes.push("unsaved");
  if (!READ_ONLY) r.weightIn.placeholder = String(s.weight);
  r.weight.textContent = notes.join(" · ");
  r.active.textContent = integer.format(s.active_connections);
  if (t !== undefined) r.rate.textContent = formatRate(sample(r, s, t));
  r.requests.textContent = integer.format(s.requests_total);
  r.failures.textContent = integer.format(s.failures_total);
  r.failures.classList.toggle("bad", s.failures_total > 0);
  r.sticky.textContent = integer.format(s.sticky_requests_total || 0);
  if (s.retries_total) r.failures.title = `${integer.format(s.retries_total)} retried elsewhere`;
  r.latency.textContent = s.latency_ewma_ms ? `${s.latency_ewma_ms.toFixed(1)} ms` : "–";

  if (s.alive) {
    r.uptime.textContent = s.uptime;
    r.uptime.classList.remove("bad");
  } else {
    r.uptime.textContent = s.last_change ? `down ${formatAge(secondsSince(s.last_change))}` : "down";
    r.uptime.classList.add("bad");
  }
  r.uptime.title = `${s.status_changes} up/down changes, ${formatAge(s.downtime_seconds)} down in all`;
  r.memory.textContent = s.memory_usage || "–";

  const c = s.last_check;
  r.check.textContent = "";
  if (!c) {
    r.check.append(el("span", "muted", "none yet"));
  } else {
    const failed = c.error !== "";
    // no answer: the reason, short ("refused" for "connection refused")
    const what = failed && !c.status ? c.error.replace(/^connection /, "") : String(c.status);
    r.check.append(
      el("span", failed ? "check bad" : "check ok", what),
      el("span", "muted", ` ${c.duration_ms.toFixed(1)} ms · ${formatAge(secondsSince(c.at))} ago`),
    );
    r.check.title = failed ? `failed: ${c.error}` : "passed";
  }

  for (const [state, b] of Object.entries(r.buttons)) {
    b.setAttribute("aria-pressed", String(s.state === state));
  }
  if (!READ_ONLY && r.msgAt && Date.now() - r.msgAt > MESSAGE_MS) {
    r.msg.textContent = "";
    r.msgAt = 0;
  }
}

// drawBars scales a pool's bars and sparklines alike, to the pool's peak in
// the last minute, so backends compare at a glance.
function drawBars(pool) {
  let peakRate = 0;
  let peakActive = 0;
  for (const r of pool.rows) {
    for (const v of r.rates) peakRate = Math.max(peakRate, v);
    for (const v of r.actives) peakActive = Math.max(peakActive, v);
  }
  peakRate = Math.max(peakRate, 1);
  peakActive = Math.max(peakActive, 1);
  for (const r of pool.rows) {
    const active = r.actives.length ? r.actives[r.actives.length - 1] : 0;
    r.barFill.style.width = `${Math.min(100, (100 * active) / peakActive)}%`;
    const x0 = HISTORY - r.rates.length;
    const pts = r.rates.map((v, i) => `${x0 + i},${(19 - (18 * v) / peakRate).toFixed(2)}`);
    r.sparkLine.setAttribute("points", pts.join(" "));
    r.sparkArea.setAttribute("points", pts.length ? `${x0},20 ${pts.join(" ")} ${HISTORY - 1},20` : "");
    const rate = r.rates.length ? r.rates[r.rates.length - 1] : null;
    r.spark.setAttribute("aria-label", `${formatRate(rate)} requests per second; last minute's peak in this pool ${formatRate(peakRate)}`);
  }
}

// reorder puts nodes in parent in this order, moving only what is out of
// place and dropping the rest.
function reorder(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

// queueWords is a pool's queue for its info line, or "" when it never had
// one: requests waiting now, ever queued, timed out.
function queueWords(q) {
  if (!q || !(q.queue_depth || q.queued_total || q.queue_timeouts_total)) return "";
  return `queue ${integer.format(q.queue_depth || 0)} waiting · ${integer.format(q.queued_total || 0)} queued · ` +
    `${integer.format(q.queue_timeouts_total || 0)} timed out`;
}

// retryWords is a pool's retries for its info line, or "" when it never
// retried: retries started, and those the retry budget refused.
function retryWords(q) {
  if (!q || !(q.retries_total || q.retry_budget_exhausted_total)) return "";
  return `${integer.format(q.retries_total || 0)} retries · ` +
    `${integer.format(q.retry_budget_exhausted_total || 0)} over budget`;
}

// render draws the stats; queues maps a pool's name to its GET /lbpool/pools
// object (empty when that could not be read).
function render(stats, queues, t) {
  const byPool = new Map();
  for (const s of stats) {
    if (!byPool.has(s.pool)) byPool.set(s.pool, []);
    byPool.get(s.pool).push(s);
  }
  const seen = new Set();
  const counts = { up: 0, down: 0, ejected: 0, drain: 0, maint: 0, slow: 0 };
  let totalRate = 0;
  for (const [name, list] of byPool) {
    let pool = pools.get(name);
    if (!pool) {
      pool = newPool(name);
      pools.set(name, pool);
    }
    pool.rows = [];
    const poolCounts = { up: 0, down: 0, ejected: 0, drain: 0, maint: 0, slow: 0 };
    let poolRate = 0;
    for (const s of list) {
      const key = `${name}\n${s.url}`;
      seen.add(key);
      let r = rows.get(key);
      if (!r) {
        r = newRow(name, s.url);
        rows.set(key, r);
      }
      updateRow(r, s, t);
      pool.rows.push(r);
      poolCounts[r.cls]++;
      counts[r.cls]++;
      poolRate += r.rates.length ? r.rates[r.rates.length - 1] : 0;
    }
    totalRate += poolRate;
    reorder(pool.tbody, pool.rows.map((r) => r.tr));
    drawBars(pool);
    const queue = queueWords(queues.get(name));
    const retried = retryWords(queues.get(name));
    pool.info.textContent = `${list.length} backends · ${countWords(poolCounts)} · ${formatRate(poolRate)} req/s` +
      (queue ? ` · ${queue}` : "") + (retried ? ` · ${retried}` : "");
  }
  for (const key of rows.keys()) if (!seen.has(key)) rows.delete(key);
  for (const name of pools.keys()) if (!byPool.has(name)) pools.delete(name);

  const main = $("pools");
  reorder(main, [...byPool.keys()].map((name) => pools.get(name).section));
  if (byPool.size === 0) {
    main.append(el("p", "empty", "No lbpool pools in the running config."));
  }
  const n = stats.length;
  $("summary").textContent = `${byPool.size} ${byPool.size === 1 ? "pool" : "pools"} · ${n} backends · ` +
    `${countWords(counts)} · ${formatRate(totalRate)} req/s`;
}

function countWords(counts) {
  const words = [];
  for (const [cls, word] of [["up", "up"], ["slow", "slow start"], ["drain", "drain"], ["maint", "maint"], ["ejected", "ejected"], ["down", "down"]]) {
    if (counts[cls] || cls === "up") words.push(`${counts[cls]} ${word}`);
  }
  return words.join(" · ");
}

// ---- talking to the admin endpoint (or the site route) ----

// route is the URL of one of the page's routes beside it. Credentials in
// the page's address (user:pass@, answering a site's basic_auth) are left
// out, as fetch refuses URLs with them; the browser sends the ones the
// site's challenge took.
function route(name) {
  const url = new URL(name, location.href);
  url.username = "";
  url.password = "";
  return url.href;
}

// errorText reads Caddy's admin error body ({"error": "..."}).
async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error}`;
  } catch {
    // not JSON
  }
  return `${resp.status} ${resp.statusText}`;
}

function setLive(ok, err) {
  const live = $("live");
  live.dataset.ok = ok;
  live.textContent = ok ? `live · ${new Date().toLocaleTimeString()}` : "stale";
  const banner = $("error");
  banner.hidden = ok;
  if (!ok) banner.textContent = `Cannot read /lbpool/stats (${err.message}); retrying every second.`;
  $("pools").classList.toggle("stale", !ok);
}

// readQueues reads ./pools into a map by pool name; on any failure the map
// is empty, and the stats show without queue lines.
async function readQueues() {
  const queues = new Map();
  try {
    const resp = await fetch(route("pools"), { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!resp.ok) return queues;
    const list = await resp.json();
    if (Array.isArray(list)) for (const q of list) if (q && typeof q.pool === "string") queues.set(q.pool, q);
  } catch {
    // no queue lines this time
  }
  return queues;
}

async function poll() {
  const started = performance.now();
  const queues = readQueues();
  try {
    const resp = await fetch(route("stats"), { cache: "no-store", signal: AbortSignal.timeout(TIMEOUT_MS) });
    if (!resp.ok) throw new Error(await errorText(resp));
    const stats = await resp.json();
    render(stats, await queues, performance.now());
    setLive(true);
  } catch (err) {
    setLive(false, err);
  }
  setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
}

// send POSTs a change (a state, a weight) for the row's backend; what says
// it in the row's message.
async function send(r, what, change) {
  const buttons = [...Object.values(r.buttons), r.weightButton];
  buttons.forEach((b) => (b.disabled = true));
  r.msg.className = "msg";
  r.msg.textContent = `${what}…`;
  r.msgAt = Date.now();
  try {
    const resp = await fetch(route("state"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pool: r.pool, backend: r.url, ...change }),
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    updateRow(r, await resp.json());
    r.msg.className = "msg ok";
    r.msg.textContent = `${what}: done`;
  } catch (err) {
    r.msg.className = "msg bad";
    r.msg.textContent = `${what} failed: ${err.message}`;
  } finally {
    r.msgAt = Date.now();
    buttons.forEach((b) => (b.disabled = false));
  }
}

poll();

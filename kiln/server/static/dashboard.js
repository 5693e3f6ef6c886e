// kiln dashboard: polls /v1/hosts every second and redraws the tables. Text only (textContent), never HTML
// from the server, since event details come from the hosts. After the first answer it asks only for what
// changed (?since= the server's clock of the last answer) and merges that in: with 10,000 hosts a poll stays
// small. Every FULL_EVERY polls it takes the whole list again. The database panel and its alerts come from
// /v1/db (what the failover monitor and the backups last reported), every DB_EVERY polls; the alerts firing in
// Alertmanager from /v1/alerts (what its webhook last told this server), every FIRING_EVERY polls.
"use strict";

const POLL_MS = 1000;
const FULL_EVERY = 60;
const known = new Map(); // host name -> its latest entry, in the server's order
const retired = new Map(); // host name -> {name, was, retired_at}
let lastNow = null;
let polls = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function seconds(s) {
  if (s == null) return "";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m + " min " + Math.round(s - 60 * m) + " s";
}

function ago(t, now) {
  return t == null ? "" : seconds(Math.max(0, now - t)) + " ago";
}

function stepText(h, now) {
  const last = h.last_event;
  if (!last) return "";
  const duration = last.status === "start" && h.step_started ? seconds(now - h.step_started) + " so far" : seconds(last.duration);
  return last.step + " " + last.status + (duration ? ", " + duration : "");
}

// The bar: the running step's own percent when it counts its work (the installer's "writing: 300 of 851 MB"),
// else the percent of the steps done; its label says which, with the step.
function progressBar(h) {
  const last = h.last_event;
  const own = last && last.progress != null;
  const percent = own ? last.progress : h.progress;
  const fill = el("span", { class: "fill" });
  fill.style.width = percent + "%"; // CSSOM, not a style attribute: the page's CSP allows no inline styles
  const label = own ? last.step + " " + percent + "%" : percent + "%" + (last ? " · " + last.step : "");
  const title = own ? last.detail + " (" + h.progress + "% of the steps done)" : h.progress + "% of the steps done";
  return el("span", { class: own ? "bar own" : "bar", title: title }, fill, el("span", { class: "label" }, label));
}

// An error shows once: a detail that an alert above already quotes is not repeated in the row.
function detailCell(h) {
  const detail = (h.last_event && h.last_event.detail) || "";
  if (detail && h.alerts.some((a) => a.message.includes(detail))) {
    return el("td", { class: "detail muted" }, "(in the alert above)");
  }
  return el("td", { class: "detail" }, detail);
}

function hostRow(h, now) {
  const flags = h.alerts.length ? el("span", { class: "flag", title: h.alerts.length + " alert(s) above" }, "⚠") : "";
  return el("tr", { "data-host": h.name, "data-state": h.state, class: "host", tabindex: "0", "aria-expanded": String(openHost === h.name) },
    el("td", { class: "name", title: h.name }, h.name),
    el("td", { class: "role" }, h.role),
    el("td", { class: "address" }, h.ip, el("br"), el("small", { class: "muted" }, h.mac)),
    el("td", { class: "state-cell" }, el("span", { class: "state state-" + h.state }, h.state), flags),
    el("td", { class: "progress" }, progressBar(h), el("small", { class: "step" }, stepText(h, now))),
    el("td", { class: "generation" }, h.generation == null ? "" : String(h.generation) + (h.converged ? "" : " (behind)")),
    detailCell(h),
  );
}

// --- a host's timeline: loaded on demand (GET /v1/hosts/NAME) when its row is opened, again when it changes ---

let openHost = null; // the host whose timeline is open
let timeline = null; // {name, received, entry}: what was loaded for it
let loading = false;

function received(h) {
  return h && h.last_event ? h.last_event.received : null;
}

async function loadTimeline(name) {
  loading = true;
  try {
    const response = await fetch("/v1/hosts/" + encodeURIComponent(name), { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const entry = await response.json();
    if (openHost === name) timeline = { name: name, received: received(entry), entry: entry };
  } catch (e) {
    if (openHost === name) timeline = { name: name, received: null, error: e.message };
  } finally {
    loading = false;
    draw();
  }
}

let timelineDrawn = [undefined, null]; // [the timeline it shows, the row]: redrawn only when that changes

function timelineRow(name) {
  if (timelineDrawn[0] === timeline && timelineDrawn[1].dataset.timeline === name) return timelineDrawn[1];
  const columns = document.querySelectorAll("#hosts thead th").length;
  let body;
  if (!timeline || timeline.name !== name) {
    body = el("p", { class: "muted" }, "loading the timeline…");
  } else if (timeline.error) {
    body = el("p", { class: "muted" }, "cannot load the timeline (" + timeline.error + "); retrying");
  } else {
    const events = timeline.entry.timeline;
    body = el("table", { class: "timeline" },
      el("thead", {}, el("tr", {}, el("th", {}, "time"), el("th", {}, "step"), el("th", {}, "status"), el("th", {}, "duration"), el("th", {}, "detail"))),
      el("tbody", {}, ...events.map((e) =>
        el("tr", { "data-status": e.status },
          el("td", { class: "time", title: e.at ? "host clock " + e.at : "" }, new Date(e.received * 1000).toLocaleTimeString()),
          el("td", {}, e.step), el("td", { class: "status-" + e.status }, e.status), el("td", {}, seconds(e.duration)),
          el("td", { class: "detail" }, e.detail || "")))));
    if (!events.length) body = el("p", { class: "muted" }, "no events in this provisioning yet");
  }
  const row = el("tr", { class: "timeline-row", "data-timeline": name }, el("td", { colspan: String(columns) },
    el("h3", {}, name + ": this provisioning's events (newest last)"), body));
  timelineDrawn = [timeline, row];
  return row;
}

function toggle(name) {
  openHost = openHost === name ? null : name;
  timeline = null;
  draw();
  if (openHost !== null) loadTimeline(openHost);
}

// --- filters: kept in the form, applied at every redraw ---

function matches(h) {
  const state = document.getElementById("filter-state").value;
  const role = document.getElementById("filter-role").value;
  return (!state || h.state === state) && (!role || h.role === role);
}

function roleOptions(hosts) {
  const select = document.getElementById("filter-role");
  const have = new Set([...select.options].map((o) => o.value));
  for (const role of [...new Set(hosts.map((h) => h.role))].sort()) {
    if (!have.has(role)) select.append(el("option", { value: role }, role));
  }
}

let lastNowDrawn = null;
const drawn = new Map(); // host name -> [its row's HTML, the row]: an unchanged row is kept (clicks, selection)

function draw() {
  if (lastNowDrawn === null) return;
  const now = lastNowDrawn;
  const hosts = [...known.values()];
  roleOptions(hosts);
  const shown = hosts.filter(matches);
  document.getElementById("shown").textContent = shown.length === hosts.length ? "" : "showing " + shown.length + " of " + hosts.length;
  const rows = [];
  for (const h of shown) {
    const fresh = hostRow(h, now);
    const html = fresh.outerHTML;
    const before = drawn.get(h.name);
    const row = before && before[0] === html ? before[1] : fresh;
    drawn.set(h.name, [html, row]);
    rows.push(row);
    if (openHost === h.name) rows.push(timelineRow(h.name));
  }
  for (const name of drawn.keys()) if (!known.has(name)) drawn.delete(name);
  document.querySelector("#hosts tbody").replaceChildren(...rows);
}

function refreshTimeline() {
  const open = openHost && known.get(openHost);
  if (open && timeline && timeline.name === openHost && !loading && received(open) !== timeline.received) {
    loadTimeline(openHost); // a new event since it was loaded (or the last load failed): at most once a poll
  }
}

function merge(data) {
  if (data.full) known.clear();
  for (const h of data.hosts) known.set(h.name, h);
  for (const name of [...data.retiring, ...data.retired.map((r) => r.name)]) known.delete(name); // no longer listed
  lastNow = data.now;
  return [...known.values()];
}

function render(data) {
  const now = data.now;
  const hosts = merge(data);
  document.getElementById("cluster").textContent = data.cluster;
  const counts = {};
  for (const h of hosts) counts[h.state] = (counts[h.state] || 0) + 1;
  const running = hosts.filter((h) => h.state === "joined");
  const converged = running.filter((h) => h.converged).length;
  document.getElementById("summary").textContent =
    hosts.length + " hosts: " + Object.entries(counts).map(([s, n]) => n + " " + s).join(", ") +
    "; generation " + data.generation + ": " + converged + "/" + running.length + " running hosts converged";
  document.getElementById("updated").textContent = "updated " + new Date(now * 1000).toLocaleTimeString();

  hostAlerts = data.alerts;
  drawAlerts();

  lastNowDrawn = now;
  draw();
  refreshTimeline();

  // retired hosts come like the others: all in a full answer, the newly retired in a delta
  if (data.full) retired.clear();
  for (const r of data.retired) retired.set(r.name, r);
  for (const h of data.hosts) retired.delete(h.name); // listed again: a new host
  const gone = data.retiring.map((name) => ({ name: name, was: "", what: "retiring: drained, still admitted" }))
    .concat([...retired.values()].map((r) => ({ name: r.name, was: r.was, what: "retired " + ago(r.retired_at, now) + ": credential revoked" })));
  document.getElementById("retired-section").hidden = gone.length === 0;
  document.querySelector("#retired tbody").replaceChildren(...gone.map((r) =>
    el("tr", { "data-host": r.name }, el("td", {}, r.name), el("td", {}, r.was), el("td", {}, r.what))));

  const unknown = data.unknown_machines;
  document.getElementById("unknown-section").hidden = unknown.length === 0;
  document.querySelector("#unknown tbody").replaceChildren(...unknown.map((u) =>
    el("tr", { "data-mac": u.mac }, el("td", {}, u.mac), el("td", {}, u.label), el("td", {}, u.requests), el("td", {}, ago(u.last_seen, now)))));
}

// --- the alerts: Alertmanager's firing ones (from /v1/alerts, critical first), the hosts' (from /v1/hosts), then
// the data tier's (from /v1/db), with when they happened ---

let firingAlerts = [];
let hostAlerts = [];
let dbAlerts = [];

// One firing alert: since when, its severity, name and where, its summary; its runbook below, as a host alert's hint.
function firingAlert(a) {
  const where = a.host || a.instance;
  const since = new Date(a.starts_at * 1000).toLocaleString() + (lastNow == null ? "" : " (" + ago(a.starts_at, lastNow) + ")");
  return el("div", { class: "alert severity-" + (a.severity || "none"), "data-kind": "firing", "data-alertname": a.alertname,
    "data-host": where, "data-severity": a.severity },
    "since " + since + " · " + (a.severity || "alert") + " " + a.alertname + (where ? " on " + where : "") +
      (a.summary ? ": " + a.summary : ""),
    el("small", {}, a.runbook),
    a.stale ? el("small", { class: "stale-note" }, "Alertmanager has not repeated it since " + new Date(a.updated * 1000).toLocaleString() +
      ": was it resolved unheard, or is Alertmanager down?") : "");
}

function drawAlerts() {
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren(
    ...firingAlerts.map(firingAlert),
    ...hostAlerts.map((a) =>
      el("div", { class: "alert", "data-kind": a.kind, "data-host": a.host }, a.message, el("small", {}, a.hint))),
    ...dbAlerts.map((a) =>
      el("div", { class: "alert", "data-kind": "db-" + a.kind, "data-host": a.host },
        new Date(a.at * 1000).toLocaleString() + " · database " + a.kind + " on " + a.host + ": " + a.message,
        el("small", {}, a.hint))));
}

// --- the database panel: each db host as the failover monitor last saw it, the last backup, recent events ---

const DB_EVERY = 2; // polls between two looks at /v1/db
const DB_STALE_S = 30; // a view older than this: the monitor is not reporting
const DB_EVENTS_SHOWN = 10;

function mib(bytes) {
  return bytes == null ? "" : (bytes / 1048576).toFixed(1) + " MiB";
}

function dbRow(h, names) {
  const role = h.role;
  const following = h.follows ? names.get(h.follows) || h.follows : "";
  const threads = following ? (h.io || "-") + " / " + (h.sql || "-") : "-";
  const semi = role === "primary" ? (h.semi_sync ? "on" : "OFF (async)") : "-";
  const gtid = h.answered ? h.gtid || "(empty)" : h.error;
  return el("tr", { "data-host": h.name, "data-role": role },
    el("td", { class: "name", title: h.name }, h.name),
    el("td", { class: "role" }, el("span", { class: "state role-" + role }, role)),
    el("td", { class: h.answered ? "gtid" : "detail" }, gtid),
    el("td", { class: "follows" }, following || "-"),
    el("td", { class: "threads" }, threads),
    el("td", { class: "lag" }, h.lag == null ? "-" : h.lag + " s"),
    el("td", { class: "semi-sync" }, semi));
}

function renderDb(data) {
  const now = data.now;
  const view = data.view;
  document.getElementById("db-section").hidden = data.db_hosts.length === 0 && !view;
  const observed = document.getElementById("db-observed");
  const stale = view && now - view.observed > DB_STALE_S;
  observed.className = stale ? "db-stale" : "muted";
  observed.textContent = !view ? "no report from the failover monitor yet (./inv db monitor sends it)"
    : "as the failover monitor saw it " + ago(view.observed, now) + (stale ? ": is ./inv db monitor running?" : "");
  const hosts = view ? view.hosts : [];
  const names = new Map(hosts.map((h) => [h.address, h.name]));
  document.querySelector("#db-hosts tbody").replaceChildren(...hosts.map((h) => dbRow(h, names)));
  const b = data.last_backup;
  document.getElementById("db-backup").textContent = !b ? "last backup: none reported"
    : "last backup: " + new Date(b.at * 1000).toLocaleString() + " (" + ago(b.at, now) + "), " + b.id + " of " + b.host +
      ", GTID " + b.gtid + (b.stored_bytes != null ? ", " + mib(b.stored_bytes) + " stored" : "");
  const events = data.events.slice(0, DB_EVENTS_SHOWN);
  document.getElementById("db-events").hidden = events.length === 0;
  document.querySelector("#db-events tbody").replaceChildren(...events.map((e) =>
    el("tr", { "data-kind": e.kind },
      el("td", { class: "time", title: new Date(e.at * 1000).toLocaleString() }, ago(e.at, now)),
      el("td", { class: "role" }, e.kind), el("td", { class: "name" }, e.host), el("td", { class: "detail" }, e.message))));
  dbAlerts = data.alerts;
  drawAlerts();
}

const FIRING_EVERY = 2; // polls between two looks at /v1/alerts

async function pollFiring() {
  const response = await fetch("/v1/alerts", { cache: "no-store" });
  if (!response.ok) return;
  firingAlerts = (await response.json()).firing;
  drawAlerts();
}

async function pollDb() {
  const response = await fetch("/v1/db", { cache: "no-store" });
  if (response.ok) renderDb(await response.json());
}

const ACCESS_EVERY = 5; // polls between two looks at the access log

async function pollAccess(now) {
  const response = await fetch("/v1/access?outcome=refused", { cache: "no-store" });
  if (!response.ok) return;
  const rows = (await response.json()).access.slice(0, 50);
  document.getElementById("refused-section").hidden = rows.length === 0;
  document.querySelector("#refused tbody").replaceChildren(...rows.map((a) =>
    el("tr", { "data-action": a.action }, el("td", {}, ago(a.at, now)), el("td", {}, a.peer), el("td", {}, a.host || ""),
      el("td", {}, a.action), el("td", { class: "detail" }, a.detail))));
}

async function poll() {
  try {
    const delta = lastNow !== null && polls % FULL_EVERY !== 0;
    polls += 1;
    const response = await fetch("/v1/hosts?timeline=0" + (delta ? "&since=" + lastNow : ""), { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    render(data);
    if (polls % DB_EVERY === 1) await pollDb();
    if (polls % FIRING_EVERY === 1) await pollFiring();
    if (polls % ACCESS_EVERY === 1) await pollAccess(data.now);
  } catch (e) {
    const alerts = document.getElementById("alerts");
    alerts.replaceChildren(el("div", { class: "alert stale" }, "cannot reach the server (" + e.message + "); retrying"));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.querySelector("#hosts tbody").addEventListener("click", (event) => {
  if (event.target.closest(".timeline-row")) return; // a click inside an open timeline (selecting text) keeps it
  const row = event.target.closest("tr[data-host]");
  if (row) toggle(row.dataset.host);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && openHost !== null) toggle(openHost);
  const row = event.target.closest && event.target.closest("tr[data-host]");
  if (row && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault(); // Space would scroll the page
    toggle(row.dataset.host);
  }
});
for (const id of ["filter-state", "filter-role"]) document.getElementById(id).addEventListener("change", draw);
document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());

poll();

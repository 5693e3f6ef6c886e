// kiln dashboard: polls /v1/hosts every second and redraws the tables. Text only (textContent), never HTML
// from the server, since event details come from the hosts. After the first answer it asks only for what
// changed (?since= the server's clock of the last answer) and merges that in: with 10,000 hosts a poll stays
// small. Every FULL_EVERY polls it takes the whole list again.
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

function hostRow(h, now) {
  const last = h.last_event;
  let step = "", duration = "", detail = "";
  if (last) {
    step = last.step + " " + last.status;
    duration = last.status === "start" && h.step_started ? seconds(now - h.step_started) + " so far" : seconds(last.duration);
    detail = last.detail || "";
  }
  const fill = el("span");
  fill.style.width = h.progress + "%"; // CSSOM, not a style attribute: the page's CSP allows no inline styles
  const bar = el("span", { class: "bar", title: h.progress + "%" }, fill);
  return el("tr", { "data-host": h.name, "data-state": h.state },
    el("td", { class: "name" }, h.name),
    el("td", {}, h.role),
    el("td", {}, h.ip, el("br"), el("small", { class: "muted" }, h.mac)),
    el("td", {}, el("span", { class: "state state-" + h.state }, h.state)),
    el("td", {}, bar, " " + h.progress + "%"),
    el("td", { class: "generation" }, h.generation == null ? "" : String(h.generation) + (h.converged ? "" : " (behind)")),
    el("td", { class: "step" }, step),
    el("td", {}, duration),
    el("td", { class: "detail" }, detail),
    el("td", { class: "host-alerts" }, h.alerts.map((a) => a.message).join("; ")),
  );
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

  const alerts = document.getElementById("alerts");
  alerts.replaceChildren(...data.alerts.map((a) =>
    el("div", { class: "alert", "data-kind": a.kind, "data-host": a.host }, a.message, el("small", {}, a.hint))));

  document.querySelector("#hosts tbody").replaceChildren(...hosts.map((h) => hostRow(h, now)));

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
    if (polls % ACCESS_EVERY === 1) await pollAccess(data.now);
  } catch (e) {
    const alerts = document.getElementById("alerts");
    alerts.replaceChildren(el("div", { class: "alert stale" }, "cannot reach the server (" + e.message + "); retrying"));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();

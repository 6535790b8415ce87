// The fleet console: plain ES modules, no build step. Data from the manager's /api/v1 routes
// (session cookie + X-CSRF-Token on actions), live updates from /api/v1/stream (server-sent events),
// charts with the vendored uPlot. Everything shown is set as text (never as HTML).
import uPlot from "./vendor/uplot/uPlot.esm.js";

const state = { role: null, csrf: null, fleet: "", view: null, source: null, timer: null, charts: [] };
const $ = (id) => document.getElementById(id);

// --- DOM helpers ---

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v);  // CSSOM, allowed by the page's CSP
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const pill = (text, cls) => h("span", { class: `pill ${cls || text}` }, text);
const link = (href, text) => h("a", { href }, text);
const fmtTime = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "—");
const fmtAgo = (ts) => {
  if (!ts) return "—";
  const s = Math.max(0, Date.now() / 1000 - ts);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
};
const fmtNum = (v, d = 1) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
const fmtBytes = (n) => {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
};
const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : "" }, x.replace(/#$/, ""))))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, "nothing yet"))));
}
const row = (...cells) => h("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c))));
const num = (v) => h("td", { class: "num" }, v);

// --- API ---

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (res.status === 401 && !path.startsWith("/console/")) { showSignIn(); throw new ApiError(401, "signed out"); }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// --- sign-in and the frame ---

function showSignIn(message = "") {
  closeStream();
  state.role = state.csrf = null;
  $("top").hidden = true;
  $("view").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("token").focus();
}

function signedIn(session) {
  state.role = session.role;
  state.csrf = session.csrf;
  state.fleet = session.fleet;
  $("fleet-name").textContent = session.fleet;
  $("role").textContent = session.role === "operator" ? "operator" : "viewer (read-only)";
  $("signin").hidden = true;
  $("top").hidden = false;
  $("view").hidden = false;
  openStream();
  route();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("token");
  try {
    const session = await api("/console/session", { method: "POST", body: { token: input.value } });
    input.value = "";
    signedIn(session);
  } catch (err) {
    input.value = "";
    $("signin-error").textContent = err.message;
  }
});

$("sign-out").addEventListener("click", async () => {
  try { await api("/console/session", { method: "DELETE" }); } catch { /* signed out anyway */ }
  showSignIn("Signed out.");
});

const canAct = () => state.role === "operator";

// --- live updates ---

function openStream() {
  closeStream();
  const source = new EventSource("/api/v1/stream");
  state.source = source;
  source.addEventListener("open", () => { $("live").className = "live on"; });
  source.addEventListener("error", () => {
    $("live").className = "live off";
    // A closed stream after a sign-out or an expired session: check, and show the form if so.
    if (source.readyState === EventSource.CLOSED) {
      api("/console/session").then((s) => { if (!s.signed_in) showSignIn("Session ended."); else openStream(); }).catch(() => {});
    }
  });
  source.addEventListener("change", (ev) => {
    let changed = [];
    try { changed = JSON.parse(ev.data).changed || []; } catch { /* ignore */ }
    if (state.view && state.view.refresh) scheduleRefresh(changed);
  });
}

function closeStream() {
  if (state.source) state.source.close();
  state.source = null;
}

let pendingChanges = new Set();
function scheduleRefresh(changed) {
  changed.forEach((c) => pendingChanges.add(c));
  if (state.timer) return;
  state.timer = setTimeout(async () => {
    state.timer = null;
    const changes = pendingChanges;
    pendingChanges = new Set();
    const view = state.view;
    if (!view || !view.refresh || (view.watches && ![...changes].some((c) => view.watches.includes(c)))) return;
    try { await view.refresh(); } catch (err) { if (err.status !== 401) console.warn("refresh:", err.message); }
  }, 500);
}

// --- routing ---

const routes = [
  [/^#?\/?$/, overviewView, "overview"],
  [/^#\/devices$/, devicesView, "devices"],
  [/^#\/device\/(.+)$/, deviceView, "devices"],
  [/^#\/rollouts$/, rolloutsView, "rollouts"],
  [/^#\/rollout\/(.+)$/, rolloutView, "rollouts"],
  [/^#\/packages$/, packagesView, "packages"],
  [/^#\/package\/([0-9a-f]+)$/, packageView, "packages"],
  [/^#\/telemetry$/, telemetryView, "telemetry"],
  [/^#\/audit$/, auditView, "audit"],
];

async function route() {
  if (!state.role) return;
  const hash = location.hash || "#/";
  for (const chart of state.charts) chart.destroy();
  state.charts = [];
  for (const [re, make, nav] of routes) {
    const m = hash.split("?")[0].match(re);
    if (!m) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
    const main = $("view");
    main.replaceChildren(h("p", { class: "muted" }, "loading…"));
    const view = make(main, ...m.slice(1).map(decodeURIComponent));
    state.view = view;
    try {
      await view.render();
    } catch (err) {
      if (err.status !== 401) main.replaceChildren(h("h1", {}, "Could not load this page"), h("p", { class: "error" }, err.message));
    }
    return;
  }
  $("view").replaceChildren(h("h1", {}, "No such page"));
}
window.addEventListener("hashchange", route);

// --- charts ---

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

function chart(container, title, series, data, { unit = "", height = 200, points = undefined, fraction = false } = {}) {
  const width = Math.max(320, container.clientWidth || 480);
  const opts = {
    title, width, height,
    // A rate (error rate) starts at 0 and shows at least 0..1 %, not uPlot's 0..100 for empty data.
    scales: { x: { time: true }, ...(fraction ? { y: { range: (_u, _min, max) => [0, Math.max(max || 0, 0.01) * 1.1] } } : {}) },
    axes: [{}, { label: unit, size: 60 }],
    series: [{}, ...series.map((s, i) => ({
      label: s, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true,
      points: { show: points, size: 5, fill: COLORS[i % COLORS.length] },
    }))],
  };
  const plot = new uPlot(opts, data, container);
  container.dataset.points = String(data[0].length);
  state.charts.push(plot);
  return {
    plot,
    update(newData) { plot.setData(newData); container.dataset.points = String(newData[0].length); container.dataset.updated = String(Date.now()); },
  };
}

// --- overview ---

function overviewView(main) {
  return {
    watches: ["devices", "deployments", "telemetry"],
    async render() { await this.refresh(); },
    async refresh() {
      const o = await api("/api/v1/overview");
      const facet = (title, data, key) => h("div", { class: "card" }, h("h3", {}, title),
        table([title, "online#", "offline#"], Object.entries(data).sort().map(([k, v]) =>
          row(key && k !== "(none)" ? link(`#/devices?${key}=${encodeURIComponent(k)}`, k) : k, num(fmtInt(v.online)), num(fmtInt(v.offline))))));
      const versions = [];
      for (const [model, vs] of Object.entries(o.models).sort()) {
        for (const [version, c] of Object.entries(vs).sort()) {
          const where = (counts) => {
            const all = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
            const shown = all.slice(0, 6).map(([k, n]) => `${k} ${fmtInt(n)}`).join(", ");
            return all.length > 6 ? `${shown} and ${all.length - 6} more` : shown;
          };
          versions.push(row(link(`#/devices?model=${encodeURIComponent(model)}`, model), version, num(fmtInt(c.devices)), num(fmtInt(c.online)),
            where(c.profiles), where(c.groups)));
        }
      }
      main.replaceChildren(
        h("h1", {}, "Overview"),
        h("div", { class: "stats" },
          h("div", { class: "stat", id: "stat-total" }, h("b", {}, fmtInt(o.devices.total)), h("span", {}, "devices")),
          h("div", { class: "stat", id: "stat-online" }, h("b", {}, fmtInt(o.devices.online)), h("span", {}, "online")),
          h("div", { class: "stat", id: "stat-offline" }, h("b", {}, fmtInt(o.devices.offline)), h("span", {}, "offline")),
          h("div", { class: "stat" }, h("b", {}, String(o.rollouts.length)), h("span", {}, "rollouts in progress")),
          h("div", { class: "stat" }, h("b", {}, String(o.alerts.length)), h("span", {}, "alerts"))),
        h("h2", {}, "Alerts"),
        table(["kind", "where", "what"], o.alerts.map((a) => row(pill(a.kind, a.severity),
          a.device ? link(`#/device/${encodeURIComponent(a.device)}`, a.device) : `${a.model} ${a.version}`, a.text)), { id: "alerts" }),
        h("h2", {}, "Rollouts in progress"),
        table(["deployment", "model", "state", "progress"], o.rollouts.map((d) => row(
          link(`#/rollout/${encodeURIComponent(d.id)}`, d.id), `${d.model} ${d.version}`, pill(d.state), progressBar(d.counts))), { id: "active-rollouts" }),
        h("h2", {}, "Model versions running"),
        table(["model", "version", "devices#", "online#", "by profile", "by group"], versions, { id: "versions" }),
        h("div", { class: "grid" }, facet("profile", o.by_profile, "profile"), facet("group", o.by_group, "group"),
          facet("tag", o.by_tag, "tag"), facet("agent version", o.by_agent_version)),
      );
    },
  };
}

function progressBar(counts) {
  const total = Object.values(counts || {}).reduce((a, b) => a + b, 0) || 1;
  const ok = (counts.succeeded || 0) + (counts.superseded || 0) + (counts.offline || 0) + (counts.skipped || 0);
  const bad = (counts.failed || 0) + (counts.timed_out || 0) + (counts.rolled_back || 0) + (counts.rollback_failed || 0);
  const busy = (counts.in_progress || 0) + (counts.rolling_back || 0);
  const done = ok + bad;
  return h("span", { title: JSON.stringify(counts), class: "progress", dataset: { done: String(done), total: String(total) } },
    h("span", { class: "bar" },
      h("i", { class: "s", style: { width: `${(100 * ok) / total}%` } }), h("i", { class: "f", style: { width: `${(100 * bad) / total}%` } }),
      h("i", { class: "p", style: { width: `${(100 * busy) / total}%` } })),
    ` ${done}/${total}`);
}

// --- devices ---

function devicesView(main) {
  const params = new URLSearchParams((location.hash.split("?")[1]) || "");
  const q = { offset: 0, limit: 50, q: params.get("q") || "", online: params.get("online") || "", profile: params.get("profile") || "",
    group: params.get("group") || "", tag: params.get("tag") || "", model: params.get("model") || "", sort: "id" };
  const body = h("div");
  const input = (name, label) => h("label", {}, label, h("input", { name, value: q[name], oninput: (e) => { q[name] = e.target.value; q.offset = 0; load(); } }));
  const filters = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    input("q", "device id contains"),
    h("label", {}, "state", h("select", { name: "online", onchange: (e) => { q.online = e.target.value; q.offset = 0; load(); } },
      h("option", { value: "" }, "any"), h("option", { value: "1", selected: q.online === "1" }, "online"), h("option", { value: "0", selected: q.online === "0" }, "offline"))),
    input("profile", "profile"), input("group", "group"), input("tag", "tag"), input("model", "model"),
    h("label", {}, "sort", h("select", { name: "sort", onchange: (e) => { q.sort = e.target.value; load(); } },
      ["id", "-last_seen", "profile", "grp", "-online"].map((s) => h("option", { value: s }, s)))));
  let seq = 0;
  async function load() {
    const mine = ++seq;
    const qs = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== "" && v !== null));
    const page = await api(`/api/v1/console/devices?${qs}`);
    if (mine !== seq) return;
    const rows = page.devices.map((d) => row(
      link(`#/device/${encodeURIComponent(d.id)}`, d.id), pill(d.online ? "online" : "offline"),
      d.profile || "—", d.grp || "—", d.tags.join(", "),
      Object.entries(d.models).map(([n, m]) => `${n} ${m.version}`).join(", "),
      num(d.resources ? fmtNum(d.resources.cpu, 0) : "—"), num(d.resources ? fmtNum(d.resources.temperature_max, 0) : "—"),
      d.alerted ? pill("alert", "error") : "", fmtAgo(d.last_seen)));
    const last = Math.min(page.total, q.offset + page.devices.length);
    body.replaceChildren(
      h("div", { class: "pager" },
        h("button", { class: "secondary", disabled: q.offset === 0, onclick: () => { q.offset = Math.max(0, q.offset - q.limit); load(); } }, "‹ previous"),
        h("span", { id: "page-info" }, `${page.total ? q.offset + 1 : 0}–${last} of ${fmtInt(page.total)}`),
        h("button", { class: "secondary", disabled: last >= page.total, onclick: () => { q.offset += q.limit; load(); } }, "next ›")),
      table(["device", "state", "profile", "group", "tags", "models", "cpu %#", "max °C#", "", "last seen"], rows, { id: "devices" }));
  }
  return {
    watches: ["devices"],
    async render() { main.replaceChildren(h("h1", {}, "Devices"), filters, body); await load(); },
    refresh: load,
  };
}

function deviceView(main, id) {
  const since = 900;
  let charts = null;
  const path = encodeURIComponent(id);
  function systemData(s) { return [s.t, s.cpu, s.mem]; }
  function tempData(s) { return [s.t, s.temp, s.throttled]; }
  function modelData(m, field) { return [m.t, ...m.series.map((x) => x[field])]; }
  function latencyData(m) { return [m.t, ...m.series.flatMap((x) => [x.p50, x.p95])]; }
  const labels = (m) => m.series.map((x) => `${x.model} ${x.version}`);
  const latencyLabels = (m) => labels(m).flatMap((l) => [`${l} p50`, `${l} p95`]);
  return {
    watches: ["telemetry", "devices", "deployments"],
    async render() {
      const [d, series] = await Promise.all([api(`/api/v1/devices/${path}`), api(`/api/v1/devices/${path}/series?since_s=${since}`)]);
      const boxes = { sys: h("div", { class: "chart card", id: "chart-system" }), temp: h("div", { class: "chart card", id: "chart-temp" }),
        ips: h("div", { class: "chart card", id: "chart-ips" }), lat: h("div", { class: "chart card", id: "chart-latency" }),
        err: h("div", { class: "chart card", id: "chart-errors" }) };
      main.replaceChildren(
        h("h1", {}, "Device ", h("span", { id: "device-id" }, d.id), " ", pill(d.online ? "online" : "offline")),
        h("div", { id: "device-facts", class: "card" }),
        h("h2", {}, "Resources (last 15 min)"),
        h("div", { class: "charts" }, boxes.sys, boxes.temp),
        h("h2", {}, "Models (per version)"),
        h("div", { id: "model-table" }),
        h("div", { class: "charts" }, boxes.ips, boxes.lat, boxes.err),
        h("h2", {}, "Deployments"), h("div", { id: "device-deployments" }),
        h("h2", {}, "Events"), h("div", { id: "device-events" }));
      this.facts(d);
      this.modelTable(series.models);
      const m = series.models;
      charts = {
        sys: chart(boxes.sys, "CPU and memory", ["CPU %", "memory %"], systemData(series.system), { unit: "%" }),
        temp: chart(boxes.temp, "Temperature and throttling", ["°C", "throttled"], tempData(series.system)),
        ips: chart(boxes.ips, "Inferences / s", labels(m), modelData(m, "ips"), { points: true }),
        lat: chart(boxes.lat, "p50 and p95 latency (ms)", latencyLabels(m), latencyData(m), { unit: "ms", points: true }),
        err: chart(boxes.err, "Error rate", labels(m), modelData(m, "error_rate"), { points: true, fraction: true }),
        labels: labels(m).join("|"),
      };
    },
    facts(d) {
      const models = Object.entries(d.models).map(([n, m]) => `${n} ${m.version} (${m.sha256.slice(0, 12)})`).join(", ") || "—";
      $("device-facts").replaceChildren(h("dl", { class: "facts" },
        h("dt", {}, "state"), h("dd", {}, d.online ? "online" : "offline", ` — last seen ${fmtAgo(d.last_seen)}`),
        h("dt", {}, "profile"), h("dd", {}, d.profile || "—"), h("dt", {}, "group"), h("dd", {}, d.grp || "—"),
        h("dt", {}, "tags"), h("dd", {}, d.tags.join(", ") || "—"), h("dt", {}, "agent version"), h("dd", {}, d.agent_version || "—"),
        h("dt", {}, "models"), h("dd", {}, models), h("dt", {}, "first seen"), h("dd", {}, fmtTime(d.first_seen)),
        h("dt", {}, "alerts"), h("dd", { id: "device-alerts" }, d.alerts.length ? d.alerts.map((a) => pill(a.alert, "error")) : "none")));
      $("device-deployments").replaceChildren(table(["deployment", "model", "wave#", "state", "phase", "reason"], d.deployments.map((x) =>
        row(link(`#/rollout/${encodeURIComponent(x.deployment_id)}`, x.deployment_id), `${x.model} ${x.version}`, num(x.wave), pill(x.state), x.phase || "", x.reason || ""))));
      $("device-events").replaceChildren(table(["time", "deployment", "state", "step", "reason"], d.events.map((e) =>
        row(fmtTime(e.ts), e.deployment_id, pill(e.state), e.step || "", e.reason || "")), { id: "events" }));
    },
    modelTable(m) {
      const last = (arr) => { for (let i = arr.length - 1; i >= 0; i--) if (arr[i] !== null) return arr[i]; return null; };
      $("model-table").replaceChildren(table(["model", "version", "inferences#", "inf/s#", "p50 ms#", "p95 ms#", "error rate#"], m.series.map((s) =>
        row(s.model, s.version, num(fmtInt(s.inferences)), num(fmtNum(last(s.ips), 2)), num(fmtNum(last(s.p50), 2)), num(fmtNum(last(s.p95), 2)),
          num(last(s.error_rate) === null ? "—" : `${(100 * last(s.error_rate)).toFixed(2)} %`)))));
    },
    async refresh() {
      if (!charts) return this.render();
      const [d, series] = await Promise.all([api(`/api/v1/devices/${path}`), api(`/api/v1/devices/${path}/series?since_s=${since}`)]);
      const m = series.models;
      if (labels(m).join("|") !== charts.labels) return this.render();  // a new model or version: new series
      this.facts(d);
      this.modelTable(m);
      charts.sys.update(systemData(series.system));
      charts.temp.update(tempData(series.system));
      charts.ips.update(modelData(m, "ips"));
      charts.lat.update(latencyData(m));
      charts.err.update(modelData(m, "error_rate"));
    },
  };
}

// --- rollouts ---

function rolloutsView(main) {
  const listBox = h("div", { id: "rollout-list" });
  return {
    watches: ["deployments"],
    async render() {
      main.replaceChildren(h("h1", {}, "Rollouts"), canAct() ? await newDeploymentForm() : h("p", { class: "muted" }, "Read-only: the viewer token cannot start deployments."),
        h("h2", {}, "Deployments"), listBox);
      await this.refresh();
    },
    async refresh() {
      const deps = await api("/api/v1/console/deployments");
      listBox.replaceChildren(table(["deployment", "model", "state", "progress", "created", "reason"], deps.map((d) => row(
        link(`#/rollout/${encodeURIComponent(d.id)}`, d.id), `${d.model} ${d.version}`, pill(d.state), progressBar(d.counts), fmtTime(d.created), d.reason || "")),
      { id: "deployments" }));
    },
  };
}

async function newDeploymentForm() {
  const packages = await api("/api/v1/packages");
  const field = (name, label, attrs = {}) => h("label", {}, label, h("input", { name, ...attrs }));
  const form = h("form", { class: "card", id: "deploy-form", onsubmit: (e) => e.preventDefault() },
    h("h2", {}, "New deployment"),
    h("div", { class: "filters" },
      h("label", {}, "package", h("select", { name: "package", required: true },
        packages.slice().reverse().map((p) => h("option", { value: p.sha256 }, `${p.name} ${p.version} (${p.sha256.slice(0, 12)})`)))),
      h("label", {}, "all devices", h("input", { type: "checkbox", name: "all" })),
      field("devices", "devices (comma-separated)"), field("tags", "tags"), field("profiles", "profiles"), field("groups", "groups")),
    h("div", { class: "filters" },
      field("canary", "canary fraction", { type: "number", step: "any", min: "0", max: "1", placeholder: "e.g. 0.1" }),
      field("waves", "waves (cumulative)", { placeholder: "e.g. 0.1,0.5,1" }),
      field("rate", "devices / min (0: no limit)", { type: "number", step: "any", min: "0", value: "0" }),
      field("timeout", "device timeout s", { type: "number", step: "any", min: "1", value: "600" }),
      field("max_failures", "abort after failures", { type: "number", min: "0" }),
      field("max_failure_rate", "max failure rate", { type: "number", step: "any", min: "0", max: "1" }),
      field("max_error_rate", "max error rate", { type: "number", step: "any", min: "0", max: "1" }),
      field("max_latency_ratio", "max p95 ratio", { type: "number", step: "any", min: "1" }),
      field("min_executed", "judge failure rate after", { type: "number", min: "1", placeholder: "1 device" }),
      field("watch", "soak each wave s", { type: "number", step: "any", min: "0", placeholder: "60" }),
      field("health_window", "device health window s", { type: "number", step: "any", min: "0", placeholder: "default" }),
      field("health_latency_ratio", "device health p95 ratio", { type: "number", step: "any", min: "1", placeholder: "2" }),
      h("label", {}, "supersede", h("input", { type: "checkbox", name: "supersede" })),
      h("label", {}, "allow downgrade", h("input", { type: "checkbox", name: "allow_downgrade" }))),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", id: "preview-button", onclick: () => preview() }, "Preview"),
      h("button", { type: "button", id: "deploy-button", onclick: () => create() }, "Deploy…")),
    h("div", { id: "deploy-preview" }), h("p", { class: "error", id: "deploy-error" }));

  function spec() {
    const v = (n) => form.elements[n].value.trim();
    const list = (n) => v(n).split(",").map((s) => s.trim()).filter(Boolean);
    const opt = (n) => (v(n) === "" ? undefined : Number(v(n)));
    const targets = form.elements.all.checked ? { all: true } : { devices: list("devices"), tags: list("tags"), profiles: list("profiles"), groups: list("groups") };
    const s = { targets, rate_per_min: opt("rate") ?? 0, device_timeout_s: opt("timeout") ?? 600 };
    if (v("waves")) s.waves = list("waves").map(Number);
    else if (v("canary")) s.canary = Number(v("canary"));
    for (const k of ["max_failures", "max_failure_rate", "max_error_rate", "max_latency_ratio", "min_executed"]) if (opt(k) !== undefined) s[k] = opt(k);
    if (opt("watch") !== undefined) s.watch_s = opt("watch");
    if (opt("health_window") !== undefined) s.health = { ...(s.health || {}), window_s: opt("health_window") };
    if (opt("health_latency_ratio") !== undefined) s.health = { ...(s.health || {}), max_latency_ratio: opt("health_latency_ratio") };
    if (form.elements.allow_downgrade.checked) s.allow_downgrade = true;
    return { package: form.elements.package.value, spec: s, supersede: form.elements.supersede.checked };
  }
  async function preview() {
    $("deploy-error").textContent = "";
    try {
      const r = spec();
      const p = await api("/api/v1/deployments/preview", { method: "POST", body: { package: r.package, spec: r.spec } });
      const busy = Object.entries(p.busy);
      $("deploy-preview").replaceChildren(h("div", { class: "preview", id: "preview-result" },
        h("p", {}, h("b", { id: "preview-count" }, String(p.count)), ` device(s) (${p.online} online) in ${p.waves.length} wave(s): ${p.waves.join(" + ")}`),
        busy.length ? h("p", { class: "error" }, `busy in running deployments: ${busy.map(([d, devs]) => `${d} (${devs.join(", ")})`).join("; ")} — tick supersede to take them over`) : null,
        table(["device", "state", "profile", "group", `current ${p.package.name}`], p.devices.map((d) =>
          row(d.id, pill(d.online ? "online" : "offline"), d.profile || "—", d.grp || "—", d.current || "—")))));
      return p;
    } catch (err) {
      $("deploy-error").textContent = err.message;
      return null;
    }
  }
  async function create() {
    const p = await preview();
    if (!p) return;
    if (!(await confirmAction(`Deploy ${p.package.name} ${p.package.version} to ${p.count} device(s) in ${p.waves.length} wave(s)?`))) return;
    try {
      const dep = await api("/api/v1/deployments", { method: "POST", body: spec() });
      location.hash = `#/rollout/${encodeURIComponent(dep.id)}`;
    } catch (err) {
      $("deploy-error").textContent = err.message;
    }
  }
  return form;
}

function rolloutView(main, id) {
  const path = encodeURIComponent(id);
  return {
    watches: ["deployments"],
    async render() { await this.refresh(); },
    async refresh() {
      const d = await api(`/api/v1/deployments/${path}/timeline`);
      const active = d.state === "running" || d.state === "paused";
      const act = (action, label, cls, question) => h("button", {
        class: cls, id: `action-${action}`, disabled: !canAct(),
        title: canAct() ? "" : "the viewer token is read-only",
        onclick: async () => {
          if (!(await confirmAction(question))) return;
          try { await api(`/api/v1/deployments/${path}/${action}`, { method: "POST" }); await this.refresh(); }
          catch (err) { $("action-error").textContent = err.message; }
        } }, label);
      const waves = {};
      for (const dev of d.devices) (waves[dev.wave] = waves[dev.wave] || []).push(dev);
      const spec = d.spec || {};
      main.replaceChildren(
        h("h1", {}, "Deployment ", h("span", { id: "deployment-id" }, d.id), " ", h("span", { id: "deployment-state" }, pill(d.state))),
        h("div", { class: "card" }, h("dl", { class: "facts" },
          h("dt", {}, "package"), h("dd", {}, `${d.model} ${d.version} `, link(`#/package/${d.sha256}`, d.sha256.slice(0, 16))),
          h("dt", {}, "progress"), h("dd", { id: "deployment-progress" }, progressBar(d.counts)),
          h("dt", {}, "counts"), h("dd", { id: "deployment-counts" }, Object.entries(d.counts).map(([k, v]) => `${k} ${v}`).join(", ")),
          h("dt", {}, "wave"), h("dd", {}, `${Math.min(d.wave + 1, d.waves)} of ${d.waves}`),
          h("dt", {}, "targets"), h("dd", {}, JSON.stringify(spec.targets || {})),
          h("dt", {}, "reason"), h("dd", { id: "deployment-reason" }, d.reason || "—"),
          h("dt", {}, "created"), h("dd", {}, fmtTime(d.created))),
          active ? h("div", { class: "actions" },
            d.state === "running" ? act("pause", "Pause", "secondary", `Pause deployment ${d.id}? Devices already updating finish; no new ones start.`)
              : act("resume", "Resume", "secondary", `Resume deployment ${d.id}?`),
            act("abort", "Abort", "danger", `Abort deployment ${d.id}? Pending devices are skipped and updated ones roll back to their previous version.`)) : null,
          h("p", { class: "error", id: "action-error" })),
        h("h2", {}, "Waves"),
        ...Object.entries(waves).map(([w, devs]) => h("div", { class: "card" }, h("h3", {}, `Wave ${Number(w) + 1} (${devs.length} device(s))`),
          table(["device", "state", "phase", "step", "reason", "previous"], devs.map((x) => row(
            link(`#/device/${encodeURIComponent(x.device)}`, x.device), pill(x.state), x.phase || "", x.step || "", x.reason || "", x.previous_version || "—")),
          { class: "wave-devices" }))),
        h("h2", {}, "Timeline"),
        table(["time", "device", "event", "step", "reason"], d.timeline.map((e) => row(fmtTime(e.ts), e.device,
          pill(e.state), e.step || progressText(e.progress), e.reason || "")), { id: "timeline" }),
        h("h2", {}, "Audit"),
        table(["time", "who", "action", "detail"], d.audit.map((a) => row(fmtTime(a.ts), a.actor, a.action, a.detail)), { id: "deployment-audit" }));
    },
  };
}

function progressText(p) {
  if (!p || typeof p !== "object" || !p.total) return "";
  return `${Math.round((100 * (p.bytes || 0)) / p.total)} % of ${fmtBytes(p.total)}`;
}

// --- packages ---

function packagesView(main) {
  return {
    async render() {
      const pkgs = await api("/api/v1/packages");
      main.replaceChildren(h("h1", {}, "Packages"), table(["name", "version", "signer", "size#", "added", "sha256"], pkgs.slice().reverse().map((p) => row(
        link(`#/package/${p.sha256}`, p.name), p.version, p.signer || "not verified", num(fmtBytes(p.size)), fmtTime(p.added), h("code", {}, p.sha256.slice(0, 16)))), { id: "packages" }));
    },
  };
}

function packageView(main, sha) {
  return {
    async render() {
      const x = await api(`/api/v1/packages/${sha}/inside`);
      const m = x.manifest;
      const shapes = (ios) => ios.map((i) => (i.shape ? `[${i.shape.join("×")}]` : i.name)).join(", ");
      const totalMacs = x.layers.reduce((a, l) => a + l.macs, 0);
      const hasTime = x.layers.some((l) => l.time_ms !== null && l.time_ms !== undefined);
      main.replaceChildren(
        h("h1", {}, `${m.name} ${m.version}`),
        h("div", { class: "card" }, h("dl", { class: "facts" },
          h("dt", {}, "sha256"), h("dd", {}, x.package.sha256), h("dt", {}, "size"), h("dd", {}, fmtBytes(x.package.size)),
          h("dt", {}, "signer"), h("dd", { id: "signer" }, x.package.signer ? `${x.package.signer} (verified at upload)`
            : x.claimed_signer ? `${x.claimed_signer} (claimed; this manager has no --trust to verify it)` : "unsigned"), h("dt", {}, "created"), h("dd", {}, m.created),
          h("dt", {}, "inputs"), h("dd", {}, m.inputs.map((t) => `${t.name} ${t.dtype} [${t.shape.join("×")}]`).join(", ")),
          h("dt", {}, "outputs"), h("dd", {}, m.outputs.map((t) => `${t.name} ${t.dtype} [${t.shape.join("×")}]`).join(", ")),
          h("dt", {}, "sparsity"), h("dd", {}, m.sparsity ? `${m.sparsity.pattern} on ${m.sparsity.layers.length} layer(s)` : "none"),
          h("dt", {}, "native MACs"), h("dd", {}, x.partition && x.partition.native_mac_share !== null ? `${(100 * x.partition.native_mac_share).toFixed(1)} % on INT8 kernels` : "—"))),
        h("h2", {}, "Artifacts"),
        table(["path", "kind", "size#", "sha256"], m.artifacts.map((a) => row(a.path, a.kind, num(fmtBytes(a.size)), h("code", {}, a.sha256.slice(0, 16)))), { id: "artifacts" }),
        h("h2", {}, `Layers (${x.layers.length}, from ${x.layer_source}; ${fmtInt(totalMacs)} MACs per sample)`),
        table(["#", "layer", "operator", "inputs", "outputs", "numerics", "MACs#", "share#", ...(hasTime ? ["time ms#"] : [])], x.layers.map((l, i) => row(
          num(i + 1), l.name, l.op, shapes(l.inputs), shapes(l.outputs),
          h("span", {}, pill(l.numerics, l.numerics === "INT8" ? "int8" : l.numerics === "fused" ? "pending" : ""),
            l.placement && l.placement !== "native" ? ` ${l.placement}` : "", l.sparse_2_4 ? pill("2:4", "sparse") : null),
          num(l.macs ? fmtInt(l.macs) : ""), num(totalMacs && l.macs ? `${((100 * l.macs) / totalMacs).toFixed(1)} %` : ""),
          ...(hasTime ? [num(fmtNum(l.time_ms, 3))] : []))), { id: "layers" }),
        h("h2", {}, "Accuracy report"),
        Object.keys(x.accuracy).length ? h("pre", { id: "accuracy" }, JSON.stringify(x.accuracy, null, 2)) : h("p", { class: "empty", id: "accuracy" }, "the package carries no metrics"),
        h("h2", {}, "Provenance"),
        Object.keys(m.provenance || {}).length ? h("pre", { id: "provenance" }, JSON.stringify(m.provenance, null, 2)) : h("p", { class: "empty", id: "provenance" }, "the package records no provenance"),
        h("h2", {}, "Self-test"),
        h("p", { id: "selftest" }, x.selftest.ran ? pill(x.selftest.passed ? "passed" : "failed", x.selftest.passed ? "ok" : "error") : pill("not run", "pending"), " ", x.selftest.detail || ""));
    },
  };
}

// --- telemetry ---

function telemetryView(main) {
  const sel = { model: "", a: "", b: "", since: "900" };
  const boxes = { ips: h("div", { class: "chart card", id: "tchart-ips" }), p95: h("div", { class: "chart card", id: "tchart-p95" }),
    p50: h("div", { class: "chart card", id: "tchart-p50" }), err: h("div", { class: "chart card", id: "tchart-errors" }) };
  const controls = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() });
  async function load(rebuild = true) {
    const all = await api(`/api/v1/telemetry/series?since_s=${sel.since}${sel.model ? `&model=${encodeURIComponent(sel.model)}` : ""}`);
    const models = [...new Set(all.series.map((s) => s.model))];
    if (!sel.model && models.length) { sel.model = models[0]; return load(rebuild); }
    // Default: the two versions with the most inferences in the window.
    const ranked = all.series.filter((s) => s.model === sel.model).sort((x, y) => y.inferences - x.inferences);
    const versions = ranked.map((s) => s.version).sort();
    if (!versions.includes(sel.a)) sel.a = ranked.length ? ranked[0].version : "";
    if (!versions.includes(sel.b)) sel.b = (ranked.find((s) => s.version !== sel.a) || { version: "" }).version;
    const pick = (name, options) => h("label", {}, name, h("select", { onchange: (e) => { sel[name === "version A" ? "a" : name === "version B" ? "b" : name] = e.target.value; load(); } },
      options.map(([v, t]) => h("option", { value: v, selected: v === sel[name === "version A" ? "a" : name === "version B" ? "b" : name] }, t))));
    controls.replaceChildren(pick("model", models.map((m) => [m, m])), pick("version A", versions.map((v) => [v, v])),
      pick("version B", [["", "—"], ...versions.map((v) => [v, v])]),
      pick("since", [["900", "15 min"], ["3600", "1 h"], ["21600", "6 h"], ["86400", "24 h"], ["604800", "7 days"]]));
    const chosen = [sel.a, sel.b].filter(Boolean).map((v) => all.series.find((s) => s.model === sel.model && s.version === v)).filter(Boolean);
    const labels = chosen.map((s) => `${s.model} ${s.version}`);
    const data = (f) => [all.t, ...chosen.map((s) => s[f])];
    for (const c of state.charts) c.destroy();
    state.charts = [];
    Object.values(boxes).forEach((b) => b.replaceChildren());
    if (!chosen.length) { boxes.ips.replaceChildren(h("p", { class: "empty" }, "no telemetry in this window")); return; }
    chart(boxes.ips, "Inferences / s", labels, data("ips"), { points: true });
    chart(boxes.p50, "p50 latency (ms)", labels, data("p50"), { unit: "ms", points: true });
    chart(boxes.p95, "p95 latency (ms)", labels, data("p95"), { unit: "ms", points: true });
    chart(boxes.err, "Error rate", labels, data("error_rate"), { points: true, fraction: true });
  }
  return {
    watches: ["telemetry"],
    async render() {
      main.replaceChildren(h("h1", {}, "Telemetry"), h("p", { class: "muted" }, "Per model and version across the fleet; pick two versions to compare them side by side."),
        controls, h("div", { class: "charts" }, boxes.ips, boxes.p50, boxes.p95, boxes.err));
      await load();
    },
    refresh: () => load(false),
  };
}

// --- audit ---

function auditView(main) {
  return {
    watches: ["deployments"],
    async render() {
      const rows = await api("/api/v1/audit");
      main.replaceChildren(h("h1", {}, "Audit log"), table(["time", "who", "action", "target", "detail"],
        rows.map((a) => row(fmtTime(a.ts), a.actor, a.action, a.target, a.detail)), { id: "audit" }));
    },
    refresh() { return this.render(); },
  };
}

// --- start ---

(async () => {
  try {
    const session = await api("/console/session");
    if (session.signed_in) signedIn(session);
    else showSignIn();
  } catch {
    showSignIn();
  }
})();

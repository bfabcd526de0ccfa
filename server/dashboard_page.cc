#include "server/dashboard_page.h"

#include <cstdint>
#include <fstream>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/check.h"

namespace kvserve::server {
namespace {

// Two placeholders are filled in by DashboardHtml: @BODY_CLASS@ ("nocharts"
// hides the chart cards and shows the note) and @CHART_SCRIPT@ (the
// <script> tag that loads Chart.js, or nothing). The page also adds the
// class itself when Chart.js failed to load, so both cases look the same.
constexpr char kPage[] = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvserve dashboard</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1rem 2rem; color: #222; background: #f6f7f9; }
  header { display: flex; gap: 1.5rem; align-items: baseline; flex-wrap: wrap; }
  h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
  h2 { font-size: 1rem; margin: 0 0 .5rem; }
  .muted { color: #666; }
  #error { color: #b00020; }
  .note { display: none; background: #fff4d6; border: 1px solid #e2c36b; padding: .5rem .75rem; }
  .nocharts .note { display: block; }
  .nocharts .chart-card { display: none; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem;
          margin: 1rem 0; }
  section { background: #fff; border: 1px solid #dde; border-radius: 6px; padding: .75rem; }
  .chart { position: relative; height: 230px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .wide { grid-column: 1 / -1; overflow-x: auto; }
  .wide th, .wide td { white-space: nowrap; }
  [hidden] { display: none !important; }  /* over .grid's display */
</style>
</head>
<body class="@BODY_CLASS@">
<header>
  <h1>kvserve</h1>
  <span>model <b id="model">-</b></span>
  <span class="muted">up <span id="uptime">-</span></span>
  <span class="muted">updated <span id="updated">never</span></span>
  <span id="error"></span>
</header>
<p class="note">Charts need Chart.js, which kvserve reads at start-up from Debian's
  <code>libjs-chart.js</code> package: install it (<code>apt-get install libjs-chart.js</code>)
  and restart the server. The numbers below still update every 2 s.</p>
<div class="grid">
  <section class="chart-card"><h2>Memory saved by KV compression</h2>
    <div class="chart"><canvas id="chart-saved"></canvas></div></section>
  <section class="chart-card"><h2>KV cache bytes by tier</h2>
    <div class="chart"><canvas id="chart-tiers"></canvas></div></section>
  <section class="chart-card"><h2>Throughput (tokens/s)</h2>
    <div class="chart"><canvas id="chart-throughput"></canvas></div></section>
  <section class="chart-card"><h2>Requests</h2>
    <div class="chart"><canvas id="chart-requests"></canvas></div></section>
</div>
<div class="grid" id="tenant-charts" hidden>
  <section class="chart-card"><h2>KV cache bytes by tenant (stacked)</h2>
    <div class="chart"><canvas id="chart-tenant-kv"></canvas></div></section>
  <section class="chart-card"><h2>Memory saved by tenant (stacked)</h2>
    <div class="chart"><canvas id="chart-tenant-saved"></canvas></div></section>
  <section class="chart-card"><h2>Generation tokens/s by tenant</h2>
    <div class="chart"><canvas id="chart-tenant-tokens"></canvas></div></section>
</div>
<div class="grid">
  <section class="wide"><h2>Tenants</h2><div id="tenants"></div></section>
  <section><h2>Now</h2><table><tbody id="now"></tbody></table></section>
</div>
@CHART_SCRIPT@
<script>
"use strict";
const POLL_MS = 2000;
const WINDOW = 150;  // points kept: five minutes
const TIERS = ["f16", "int8", "int4", "int2"];  // evicted units hold no bytes
const TIER_COLORS = { f16: "#4e79a7", int8: "#59a14f", int4: "#edc948", int2: "#f28e2b" };
const TENANT_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                       "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; ++i; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function fmtNum(n, digits = 0) {
  return n.toLocaleString(undefined, { maximumFractionDigits: digits });
}
function fmtDuration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
}

// --- charts (only when Chart.js loaded) ---------------------------------
const charts = [];
if (typeof Chart === "undefined") document.body.classList.add("nocharts");

function makeChart(id, datasets, scales, format) {
  if (typeof Chart === "undefined") return null;
  const chart = new Chart($(id), {
    type: "line",
    data: { labels: [], datasets: datasets.map((d) => Object.assign(
        { data: [], pointRadius: 0, borderWidth: 2, backgroundColor: d.borderColor + "55" }, d)) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: Object.assign({ x: { ticks: { maxTicksLimit: 8 } } }, scales),
      plugins: { tooltip: { callbacks: {
        label: (c) => c.dataset.label + ": " + (c.parsed.y === null ? "-" :
            (format[c.dataset.yAxisID || "y"] || fmtNum)(c.parsed.y)),
      } } },
    },
  });
  charts.push(chart);
  return chart;
}
const bytesAxis = { beginAtZero: true, ticks: { callback: (v) => fmtBytes(v) } };

const savedChart = makeChart("chart-saved", [
  { label: "saved", borderColor: "#59a14f", fill: "origin", yAxisID: "y" },
  { label: "stored / f16 ratio", borderColor: "#e15759", yAxisID: "ratio" },
], { y: bytesAxis,
     ratio: { position: "right", min: 0, max: 1, grid: { drawOnChartArea: false } } },
   { y: fmtBytes, ratio: (v) => v.toFixed(3) });

const tierChart = makeChart("chart-tiers", TIERS.map((t, i) => (
  { label: t, borderColor: TIER_COLORS[t], fill: i === 0 ? "origin" : "-1", stack: "stored" }
)).concat([{ label: "as f16 (uncompressed)", borderColor: "#888888", borderDash: [6, 4],
             fill: false, stack: "f16" }]),
  { y: Object.assign({ stacked: true }, bytesAxis) }, { y: fmtBytes });

const throughputChart = makeChart("chart-throughput", [
  { label: "prompt", borderColor: "#4e79a7" },
  { label: "generation", borderColor: "#f28e2b" },
], { y: { beginAtZero: true } }, { y: (v) => fmtNum(v, 1) });

const requestsChart = makeChart("chart-requests", [
  { label: "running", borderColor: "#4e79a7", stepped: true },
  { label: "waiting", borderColor: "#e15759", stepped: true },
], { y: { beginAtZero: true, ticks: { precision: 0 } } }, {});

function trimAndDraw(chart) {
  if (chart.data.labels.length > WINDOW) {
    chart.data.labels.shift();
    chart.data.datasets.forEach((d) => d.data.shift());
  }
  chart.update("none");
}

function pushPoint(chart, label, values) {
  if (!chart) return;
  chart.data.labels.push(label);
  chart.data.datasets.forEach((d, i) => d.data.push(values[i]));
  trimAndDraw(chart);
}

// --- per-tenant charts --------------------------------------------------------
// Made on the first poll that lists tenants (a server without a tenants file
// never shows them). One dataset per tenant id, added when the tenant first
// appears (earlier points null); a tenant a reload removed gets nulls from then on.
// A tenant keeps its color on every chart: colors go by order of appearance.
const tenantColor = new Map();
function colorOf(id) {
  if (!tenantColor.has(id)) tenantColor.set(id, TENANT_COLORS[tenantColor.size % TENANT_COLORS.length]);
  return tenantColor.get(id);
}

let tenantCharts = null;
function makeTenantCharts() {
  $("tenant-charts").hidden = false;
  const stackedBytes = { y: Object.assign({ stacked: true }, bytesAxis) };
  tenantCharts = {
    kv: makeChart("chart-tenant-kv", [], stackedBytes, { y: fmtBytes }),
    saved: makeChart("chart-tenant-saved", [], stackedBytes, { y: fmtBytes }),
    tokens: makeChart("chart-tenant-tokens", [], { y: { beginAtZero: true } },
                      { y: (v) => fmtNum(v, 1) }),
  };
}

// values: Map of tenant id to a number or null.
function pushTenantPoint(chart, label, values) {
  if (!chart) return;
  const stacked = chart.options.scales.y.stacked === true;  // areas, each on the one before
  for (const id of values.keys()) {
    if (chart.data.datasets.some((d) => d.label === id)) continue;
    const color = colorOf(id);
    chart.data.datasets.push({
      label: id, borderColor: color, backgroundColor: color + "55", pointRadius: 0,
      borderWidth: 2, data: chart.data.labels.map(() => null),
      fill: stacked ? (chart.data.datasets.length === 0 ? "origin" : "-1") : false,
    });
  }
  chart.data.labels.push(label);
  chart.data.datasets.forEach((d) => d.data.push(values.has(d.label) ? values.get(d.label) : null));
  trimAndDraw(chart);
}

function drawTenants(label, s, prevStats) {
  const tenants = s.tenants || [];
  if (tenantCharts === null) {
    if (tenants.length === 0) return;
    makeTenantCharts();
  }
  // Generation rate from the counters' deltas, as for the server-wide chart.
  const before = new Map(((prevStats && prevStats.tenants) || []).map((t) => [t.tenant, t]));
  const dt = prevStats ? s.timestamp - prevStats.timestamp : 0;
  const kv = new Map(), saved = new Map(), tokens = new Map();
  for (const t of tenants) {
    kv.set(t.tenant, t.kv_bytes);
    saved.set(t.tenant, t.kv_saved_bytes);
    const b = before.get(t.tenant);
    tokens.set(t.tenant, b && dt > 0 && t.generation_tokens >= b.generation_tokens ?
        (t.generation_tokens - b.generation_tokens) / dt : null);
  }
  pushTenantPoint(tenantCharts.kv, label, kv);
  pushTenantPoint(tenantCharts.saved, label, saved);
  pushTenantPoint(tenantCharts.tokens, label, tokens);
}

// --- tables ---------------------------------------------------------------
function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map(([name, value]) => {
    const tr = document.createElement("tr");
    for (const text of [name, value]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function renderNow(s, rate) {
  const kv = s.kv_cache, t = s.totals, q = t.kv_blocks_quantized_by_tier;
  const rows = [
    ["Requests running / waiting", s.requests.running + " / " + s.requests.waiting],
    ["KV pool used / capacity", fmtBytes(kv.used_bytes) + " / " + fmtBytes(kv.capacity_bytes)],
    ["KV pool free", fmtBytes(kv.free_bytes)],
    ["KV stored / as f16", fmtBytes(kv.stored_bytes) + " / " + fmtBytes(kv.uncompressed_bytes)],
    ["Saved by compression", fmtBytes(kv.saved_bytes)],
    ["Compression ratio (stored / f16)", kv.compression_ratio.toFixed(3)],
  ];
  for (const tier of TIERS) {
    rows.push(["tier " + tier, fmtBytes(kv.bytes_by_tier[tier]) + " in " +
               fmtNum(kv.units_by_tier[tier]) + " units"]);
  }
  rows.push(["tier evicted", fmtNum(kv.units_by_tier.evicted) + " units"]);
  rows.push(["Tokens/s prompt / generation",
             rate ? fmtNum(rate.prompt, 1) + " / " + fmtNum(rate.generation, 1) : "-"]);
  rows.push(["Tokens prompt / generation (total)",
             fmtNum(t.prompt_tokens) + " / " + fmtNum(t.generation_tokens)]);
  rows.push(["Engine steps", fmtNum(t.steps)]);
  rows.push(["Preemptions", fmtNum(t.preemptions)]);
  rows.push(["Units quantized int8 / int4 / int2",
             [q.int8, q.int4, q.int2].map((v) => fmtNum(v)).join(" / ")]);
  rows.push(["Units evicted", fmtNum(t.kv_blocks_evicted)]);
  fillRows($("now"), rows);
}

// One row per tenant, one column per field the server reports.
function renderTenants(tenants) {
  const box = $("tenants");
  if (!tenants || tenants.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No tenants: this server runs without a tenants file (--tenants), " +
                    "so all use is the server's own (above).";
    box.replaceChildren(p);
    return;
  }
  const cols = ["tenant"];  // the id first, then every other field
  for (const row of tenants) for (const k of Object.keys(row)) if (!cols.includes(k)) cols.push(k);
  const cell = (tag, text) => { const e = document.createElement(tag); e.textContent = text; return e; };
  const show = (k, v) => {
    if (typeof v === "number") return k.includes("bytes") ? fmtBytes(v) : fmtNum(v, 3);
    if (v === undefined || v === null) return "-";
    // kv_bytes_by_tier: the tiers that hold something, "0 B" when none does.
    if (typeof v === "object") {
      const parts = Object.entries(v).filter(([, x]) => x).map(([n, x]) => n + " " + show(k, x));
      return parts.length ? parts.join(", ") : show(k, 0);
    }
    return String(v);
  };
  const table = document.createElement("table");
  const head = document.createElement("tr");
  cols.forEach((k) => head.appendChild(cell("th", k)));
  table.appendChild(head);
  for (const row of tenants) {
    const tr = document.createElement("tr");
    cols.forEach((k) => tr.appendChild(cell("td", show(k, row[k]))));
    table.appendChild(tr);
  }
  box.replaceChildren(table);
}

// --- polling -----------------------------------------------------------------
let prev = null;
async function poll() {
  try {
    // With API keys (a tenants file) the browser opened this page after a
    // Basic login (any user name, the key as password) and sends the same
    // credentials here by itself: same-origin requests carry them.
    // location.origin, not a relative URL: in a page whose address carries a
    // user name and password, a relative URL resolves to one with them,
    // which fetch refuses.
    const r = await fetch(location.origin + "/v1/stats",
                          { cache: "no-store", credentials: "same-origin" });
    if (r.status === 401) {
      throw new Error("HTTP 401: this server needs an API key; reload the page and log in " +
                      "with any user name and your key as the password");
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    // Rates from the counters' deltas; none across a restart (counters fell).
    const prevStats = prev;
    let rate = null;
    const dt = prev ? s.timestamp - prev.timestamp : 0;
    if (dt > 0 && s.totals.prompt_tokens >= prev.totals.prompt_tokens) {
      rate = { prompt: (s.totals.prompt_tokens - prev.totals.prompt_tokens) / dt,
               generation: (s.totals.generation_tokens - prev.totals.generation_tokens) / dt };
    }
    prev = s;
    const label = new Date(s.timestamp * 1000).toLocaleTimeString();
    const kv = s.kv_cache;
    pushPoint(savedChart, label, [kv.saved_bytes, kv.compression_ratio]);
    pushPoint(tierChart, label, TIERS.map((t) => kv.bytes_by_tier[t]).concat([kv.uncompressed_bytes]));
    pushPoint(throughputChart, label, rate ? [rate.prompt, rate.generation] : [null, null]);
    pushPoint(requestsChart, label, [s.requests.running, s.requests.waiting]);
    drawTenants(label, s, prevStats);
    renderNow(s, rate);
    renderTenants(s.tenants);
    $("model").textContent = s.model;
    document.title = "kvserve: " + s.model;
    $("uptime").textContent = fmtDuration(s.uptime_seconds);
    $("updated").textContent = label;
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = "stats unavailable (" + e.message + "); retrying";
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
)html";

}  // namespace

const std::vector<std::string>& DefaultChartJsPaths() {
  static const auto* const kPaths = new std::vector<std::string>{
      "/usr/share/javascript/chart.js/chart.umd.js",
      "/usr/share/javascript/chart.js/chart.umd.min.js",
      "/usr/share/javascript/chart.js/chart.min.js",
      "/usr/share/javascript/chart.js/chart.js",
  };
  return *kPaths;
}

absl::StatusOr<ChartJsFile> LoadChartJs(const std::vector<std::string>& paths) {
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) continue;
    std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad() || source.empty()) continue;
    return ChartJsFile{path, std::move(source)};
  }
  return absl::NotFoundError(absl::StrCat("no Chart.js file at ", absl::StrJoin(paths, ", "),
                                          " (install Debian's libjs-chart.js)"));
}

std::string ContentTag(std::string_view content) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a offset basis
  for (unsigned char c : content) {
    h ^= c;
    h *= 1099511628211ull;  // FNV prime
  }
  return absl::StrFormat("%016x", h);
}

std::string DashboardHtml(std::string_view chart_js_url) {
  // The URL goes into an attribute unescaped: it must be one of ours.
  KV_CHECK_MSG(chart_js_url.find_first_of("\"'<>& ") == std::string_view::npos,
               "chart_js_url must need no HTML escaping");
  const std::string script =
      chart_js_url.empty()
          ? ""
          : absl::StrCat("<script src=\"", std::string(chart_js_url), "\"></script>");
  return absl::StrReplaceAll(kPage, {{"@BODY_CLASS@", chart_js_url.empty() ? "nocharts" : ""},
                                     {"@CHART_SCRIPT@", script}});
}

}  // namespace kvserve::server

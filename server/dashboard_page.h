// The built-in dashboard (GET /dashboard): one HTML page, embedded in the
// binary, that polls GET /v1/stats every 2 s and draws live charts of the
// memory compression saves, KV bytes by tier, throughput and requests, plus
// tables of the current numbers and of the tenants. With a tenants file it
// also charts each tenant's KV bytes, saved bytes and generation rate
// (stacked per tenant); without one those charts stay hidden and the tenant
// table says there are no tenants. It loads nothing from
// the internet: its charts use Chart.js from Debian's libjs-chart.js, which
// the server reads once at start-up and serves itself at kChartJsRoute.
// Without that file the page still works and shows the tables with a note
// saying how to get the charts.
//
// With API keys (a tenants file) the page, its script and /v1/stats need a
// key like every route but /health. The server then also challenges for
// Basic credentials on /dashboard, so a browser asks for a login: any user
// name, the API key as password. The browser sends them again with the
// page's own requests; on a 401 the page says how to log in.
//
// The page is a raw string literal in dashboard_page.cc rather than a file
// turned into a header at build time: it is small, has no build step of
// its own, and reads as-is in the source.
//
// Thread-safety: pure functions (LoadChartJs reads the file system).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::server {

// The route that serves Chart.js to the page.
inline constexpr char kChartJsRoute[] = "/dashboard/chart.js";

// Where Debian's libjs-chart.js installs a build of Chart.js that defines a
// global `Chart` from a plain <script> (the ES-module builds next to them
// do not), the name used by Chart.js 4 first, then those of 3.x.
const std::vector<std::string>& DefaultChartJsPaths();

struct ChartJsFile {
  std::string path;    // the file that was read
  std::string source;  // its content
};

// Reads the first of `paths` that exists and is not empty. NotFound (naming
// every path tried) when there is none.
absl::StatusOr<ChartJsFile> LoadChartJs(const std::vector<std::string>& paths);

// A short hex digest of `content` (64-bit FNV-1a): appended to the script's
// URL as ?v=..., so that browsers may cache it for long and still fetch a
// new file after a package upgrade.
std::string ContentTag(std::string_view content);

// The page. `chart_js_url` is the script the page loads its charts from
// (a path on this server); empty means there is no Chart.js, and the page
// shows only tables, with a visible note that charts need libjs-chart.js.
// The page contains no absolute URL, so it works without internet access.
std::string DashboardHtml(std::string_view chart_js_url);

}  // namespace kvserve::server

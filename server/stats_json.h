// The JSON body of GET /v1/stats: one snapshot of the engine for the
// built-in dashboard (GET /dashboard) and for scripts that want numbers
// without a Prometheus parser. docs/metrics.md ("/v1/stats") lists the
// fields. Counters are cumulative since start, so a reader computes rates
// from the difference of two snapshots over their `timestamp`s.
//
// Thread-safety: a pure function of its arguments.
#pragma once

#include <cstdint>
#include <string>

#include "engine/serving/engine_stats.h"
#include "nlohmann/json.hpp"

namespace kvserve::server {

// What the snapshot needs besides the engine's numbers.
struct StatsContext {
  std::string model_name;
  double timestamp_s = 0;  // Unix time of the snapshot, in seconds
  double uptime_s = 0;     // seconds since the server started
  // Where the weight matmuls run ("cpu", "cuda"); empty: not reported.
  std::string device;
  std::string device_description;    // e.g. "cuda:0 NVIDIA H200 (143771 MiB)"
  uint64_t device_memory_bytes = 0;  // held on the device by the backend
};

// Builds the /v1/stats object from `stats`. Derived values follow the
// Prometheus gauges of metrics.h: stored bytes are the sum over tiers,
// saved = max(0, uncompressed - stored), and the compression ratio is
// stored / uncompressed, 1 while the cache is empty.
nlohmann::json StatsJson(const engine::EngineStats& stats, const StatsContext& context);

}  // namespace kvserve::server

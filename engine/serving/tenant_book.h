// The engine thread's record of its tenants: the current table
// (Engine::SetTenants), each tenant's virtual time for the "fair" scheduler,
// and its counters, which survive reloads of the table by id.
//
// Index 0 is always the default tenant (id ""), which has no limits and
// takes requests with an empty or unknown tenant id; configured tenants
// follow in table order.
//
// Thread-safety: engine thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/tenant.h"

namespace kvserve::engine {

class TenantBook {
 public:
  TenantBook();

  // Replaces the table (validated by the caller). Indexes change: callers
  // re-resolve their sequences with IndexOf.
  void SetTable(const std::vector<TenantLimits>& table);
  int IndexOf(const std::string& id) const;  // 0 for "" and unknown ids
  int size() const { return static_cast<int>(entries_.size()); }
  const TenantLimits& limits(int t) const { return entries_[t].limits; }
  // The tenant's counters (TenantStats fields the engine thread owns).
  TenantStats& counters(int t) { return counters_[entries_[t].limits.id]; }

  // The scheduler's view for this step. held_bytes[t]: KV bytes tenant t's
  // sequences hold as stored; active[t]: whether it has sequences running
  // or waiting. Before building the shares, a tenant's virtual time is
  // raised to within `credit` tokens (divided by its weight) of the lowest
  // active one, so a tenant returning from idle gets ahead of a flooding one
  // by at most that much, and an idle one banks nothing more.
  std::vector<TenantShare> Shares(const std::vector<int64_t>& held_bytes,
                                  const std::vector<uint8_t>& active, int64_t bytes_per_block,
                                  double credit);
  // Tokens tenant t ran this step: its virtual time moves by tokens / weight.
  void Charge(int t, int tokens);

 private:
  struct Entry {
    TenantLimits limits;
    double vtime = 0;
  };
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, int> index_;
  absl::flat_hash_map<std::string, TenantStats> counters_;  // by id, across reloads
  absl::flat_hash_map<std::string, double> vtimes_;         // by id, across reloads
};

}  // namespace kvserve::engine

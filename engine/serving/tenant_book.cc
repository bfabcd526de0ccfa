#include "engine/serving/tenant_book.h"

#include <algorithm>
#include <limits>

namespace kvserve::engine {

TenantBook::TenantBook() { SetTable({}); }

void TenantBook::SetTable(const std::vector<TenantLimits>& table) {
  for (const Entry& e : entries_) vtimes_[e.limits.id] = e.vtime;
  entries_.clear();
  index_.clear();
  entries_.push_back(Entry{TenantLimits{}, vtimes_[""]});
  for (const TenantLimits& t : table) {
    index_[t.id] = static_cast<int>(entries_.size());
    entries_.push_back(Entry{t, vtimes_[t.id]});
  }
  for (Entry& e : entries_) counters_[e.limits.id].id = e.limits.id;
}

int TenantBook::IndexOf(const std::string& id) const {
  auto it = index_.find(id);
  return it == index_.end() ? 0 : it->second;
}

std::vector<TenantShare> TenantBook::Shares(const std::vector<int64_t>& held_bytes,
                                            const std::vector<uint8_t>& active,
                                            int64_t bytes_per_block, double credit) {
  double floor = std::numeric_limits<double>::infinity();
  for (int t = 0; t < size(); ++t) {
    if (active[t]) floor = std::min(floor, entries_[t].vtime);
  }
  std::vector<TenantShare> out(entries_.size());
  for (int t = 0; t < size(); ++t) {
    Entry& e = entries_[t];
    if (floor != std::numeric_limits<double>::infinity()) {
      e.vtime = std::max(e.vtime, floor - credit / e.limits.weight);
    }
    TenantShare& sh = out[t];
    sh.weight = e.limits.weight;
    sh.max_concurrent = e.limits.max_concurrent;
    sh.vtime = e.vtime;
    if (e.limits.kv_budget_bytes > 0) {
      const int64_t left = e.limits.kv_budget_bytes - held_bytes[t];
      sh.budget_blocks = left <= 0 ? 0 : left / bytes_per_block;
    }
  }
  return out;
}

void TenantBook::Charge(int t, int tokens) {
  entries_[t].vtime += tokens / entries_[t].limits.weight;
}

}  // namespace kvserve::engine

#include "nsa/service/state.hpp"

#include "nsa/service/log.hpp"

namespace nsa::service {

HostInfo host_info_from(const jit::DriverProbe& probe, const std::string& nvrtc_version,
                        const std::string& source_hash, std::int64_t now_unix) {
  HostInfo h;
  h.driver_loaded = probe.driver_loaded;
  h.driver_version = probe.driver_version;
  h.nvrtc_version = nvrtc_version;
  h.source_hash = source_hash;
  if (!probe.available()) {
    h.driver_problem = !probe.problem.empty() ? probe.problem
                       : !probe.driver_loaded ? "the CUDA driver could not be loaded"
                                              : "the CUDA driver reports no devices";
  }
  for (const auto& d : probe.devices) {
    LocalDevice ld;
    ld.record.ordinal = d.ordinal;
    ld.record.uuid = d.uuid;
    ld.record.name = d.name;
    ld.record.arch = d.arch;
    ld.record.sm_count = d.sm_count;
    ld.record.memory_bytes = d.memory_bytes;
    ld.record.driver_version = probe.driver_version;
    ld.record.nvrtc_version = nvrtc_version;
    ld.record.seen_at = now_unix;
    ld.device_class = cache::DeviceClass{d.arch, d.name, probe.driver_version, nvrtc_version, source_hash};
    h.devices.push_back(std::move(ld));
  }
  return h;
}

State::State(cache::VerdictStore store, HostInfo host) : m_store(std::move(store)), m_host(std::move(host)) {}

std::expected<std::unique_ptr<State>, cache::StoreError> State::create(cache::VerdictStore store,
                                                                       HostInfo host) {
  for (const auto& d : host.devices) {
    if (auto r = store.upsert_device(d.record); !r) return std::unexpected(r.error());
  }
  std::unique_ptr<State> s(new State(std::move(store), std::move(host)));
  try {
    s->refresh(true);
  } catch (const cache::StoreFailure& e) {
    return std::unexpected(e.error());
  }
  return s;
}

std::vector<cache::DeviceClass> State::current_classes() const {
  std::vector<cache::DeviceClass> out;
  for (const auto& d : m_host.devices) {
    bool seen = false;
    for (const auto& c : out) seen = seen || c == d.device_class;
    if (!seen) out.push_back(d.device_class);
  }
  return out;
}

bool State::refresh(bool force) {
  const std::int64_t epoch = m_store.epoch();
  const bool moved = !m_snapshot || epoch != m_snapshot->epoch;
  if (!moved && !force) return false;
  rebuild(epoch);
  if (moved && m_on_epoch) m_on_epoch(epoch);
  return moved;
}

void State::rebuild(std::int64_t epoch) {
  // The epoch is read before the rows: a write that lands in between makes the next refresh
  // see a newer epoch and rebuild again, so a snapshot is never newer than its epoch claims
  // without being corrected one tick later.
  auto s = std::make_shared<Snapshot>();
  s->epoch = epoch;
  s->driver_problem = m_host.driver_problem;
  s->devices = m_host.devices;
  for (auto& p : m_store.pins()) s->pins.emplace(p.arch, std::move(p));
  std::vector<std::pair<cache::DeviceClass, std::shared_ptr<const ClassVerdicts>>> by_class;
  for (const auto& d : m_host.devices) {
    std::shared_ptr<const ClassVerdicts> table;
    for (const auto& [cls, t] : by_class)
      if (cls == d.device_class) table = t;
    if (!table) {
      std::size_t bad = 0;
      table = std::make_shared<const ClassVerdicts>(group_verdicts(m_store.current_verdicts(d.device_class), &bad));
      if (bad) NSA_WARN("%zu verdicts of %s have an unparsable point key and are ignored", bad, d.device_class.arch.c_str());
      by_class.emplace_back(d.device_class, table);
    }
    s->verdicts.push_back(std::move(table));
  }
  m_snapshot = std::move(s);
  NSA_DEBUG("snapshot rebuilt at epoch %lld: %zu pins, %zu current verdicts", static_cast<long long>(epoch),
            m_snapshot->pins.size(), m_snapshot->verdict_count());
}

void State::note_demand(const DemandKey& key, std::int64_t now_unix) {
  auto [it, inserted] = m_demand.try_emplace(key);
  cache::Demand& d = it->second;
  if (inserted) {
    d.arch = key.arch;
    d.family = key.family;
    d.point = key.point;
    d.first_at = now_unix;
  }
  ++d.count;
  d.last_at = now_unix;
}

std::expected<std::size_t, cache::StoreError> State::flush_demand() {
  if (m_demand.empty()) return 0;
  std::vector<cache::Demand> batch;
  batch.reserve(m_demand.size());
  for (const auto& [k, d] : m_demand) batch.push_back(d);
  if (auto r = m_store.record_demand(batch); !r) return std::unexpected(r.error());
  m_demand.clear();
  return batch.size();
}

}  // namespace nsa::service

#pragma once
// The daemon's state: the store, this host's devices, and the in-memory snapshot that every
// dispatch is answered from.
//
// The hot path never touches SQLite. Dispatch reads the current Snapshot (a shared_ptr to an
// immutable value) and appends untuned demand to an in-memory buffer. The store is read only
// when its epoch moves (checked once per maintenance tick and right after this daemon's own
// writes), and demand reaches the store in one transaction per flush (every second and at
// shutdown). All of it runs on the daemon's single io_context thread.

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/service/dispatcher.hpp"

namespace nsa::service {

/// What the daemon found when it looked for GPUs, kept for status and the snapshot.
struct HostInfo {
  bool driver_loaded = false;
  int driver_version = 0;
  std::string nvrtc_version;
  std::string source_hash;
  std::string driver_problem;  // empty when at least one GPU is usable
  std::vector<LocalDevice> devices;
};

/// Turns a probe into the devices the daemon serves, with their classes. Pure.
HostInfo host_info_from(const jit::DriverProbe&, const std::string& nvrtc_version,
                        const std::string& source_hash, std::int64_t now_unix);

class State {
 public:
  /// Records `host`'s devices in the store and builds the first snapshot.
  static std::expected<std::unique_ptr<State>, cache::StoreError> create(cache::VerdictStore store,
                                                                         HostInfo host);

  std::shared_ptr<const Snapshot> snapshot() const { return m_snapshot; }
  const HostInfo& host() const { return m_host; }
  cache::VerdictStore& store() { return m_store; }
  const cache::VerdictStore& store() const { return m_store; }
  /// The current device classes of this host (distinct), for build_report.
  std::vector<cache::DeviceClass> current_classes() const;

  /// Called with the new epoch whenever a rebuild finds the epoch moved.
  void on_epoch_change(std::function<void(std::int64_t)> f) { m_on_epoch = std::move(f); }

  /// Reads the store's epoch and rebuilds the snapshot when it moved (or when `force`).
  /// Returns true when the epoch moved. Store read failures propagate as cache::StoreFailure.
  bool refresh(bool force = false);

  /// Counts one untuned request (memory only).
  void note_demand(const DemandKey&, std::int64_t now_unix);
  /// Distinct (arch, family, point) waiting to be flushed.
  std::size_t pending_demand() const { return m_demand.size(); }
  /// Writes the buffered demand in one transaction; on failure the buffer is kept for the next
  /// try (counts are never lost to a transient error, only to a crash between flushes).
  std::expected<std::size_t, cache::StoreError> flush_demand();

 private:
  State(cache::VerdictStore store, HostInfo host);
  void rebuild(std::int64_t epoch);

  cache::VerdictStore m_store;
  HostInfo m_host;
  std::shared_ptr<const Snapshot> m_snapshot;
  std::function<void(std::int64_t)> m_on_epoch;
  std::map<DemandKey, cache::Demand> m_demand;
};

}  // namespace nsa::service

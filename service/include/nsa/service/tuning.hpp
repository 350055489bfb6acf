#pragma once
// The daemon's side of the tuner: whether this nsa-tuned tunes, the TuningService when it does,
// the one reason why when it does not, and the thread rule between the two.
//
// Tuning is on unless one of these holds, checked in this order; the first is the reason that
// the start-up log, `status` and a refused `retune` all give:
//   1. --no-tune (or NSA_TUNE_NO_TUNE, or "no_tune": true in the config file);
//   2. this host has no usable GPU (no driver, no device): nothing to tune, and no worker is
//      ever spawned;
//   3. the worker binary cannot be found or is not executable;
//   4. TuningService::start() failed (the store cannot be opened a second time, ...).
// A daemon that does not tune serves on: stored verdicts, pins and fallbacks.
//
// Threads. The TuningService runs its own threads and calls back from one of them when
// verdicts land. Everything dispatch reads (the snapshot, the answer memo, the sessions) belongs
// to the io_context's thread, so the callback does nothing but post to the io_context; the
// posted handler refreshes the snapshot there, which moves the epoch and pushes the epoch event
// to subscribers. status() and request() are called on the io thread while tuning threads run:
// the TuningService makes both safe. stop() blocks (at most about one NVRTC compile) and may
// run on a thread of its own while the io thread drains connections (daemon_main does that).

#include <atomic>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/cache/records.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/state.hpp"
#include "nsa/tuner/tuning_service.hpp"

namespace nsa::service {

/// The worker binary the tuner would run: `configured` (from NSA_TUNE_WORKER or the config
/// file's tuning.worker) or, when empty, tuner::default_worker_path(). A bare name is looked up
/// in PATH. The error names the path tried and says what to do.
std::expected<std::filesystem::path, std::string> resolve_worker(const std::filesystem::path& configured);

/// TEST ONLY. Reads NSA_TUNE_TEST_DEVICES, a stand-in for the GPU probe so that the end-to-end
/// tests can run the daemon's tuner against the worker stand-in on a host without a GPU:
///   {"driver_version": 13000, "devices": [{"arch": "sm_90", "name": "Fake GPU",
///     "uuid": "GPU-fake-0", "sm_count": 132, "memory_bytes": 85899345920}]}
/// Every key but "arch" is optional (defaults as above, uuid "GPU-test-<ordinal>"); ordinals are
/// the array indices. An empty "devices" array is a host without a GPU. Unknown keys are errors.
std::expected<jit::DriverProbe, std::string> probe_from_test_devices(const std::string& json_text);

class Tuning {
 public:
  /// Decides whether to tune (reasons 1-3 above). Starts nothing. `config` must outlive this.
  Tuning(const Config& config, const HostInfo& host);
  /// stop()s.
  ~Tuning();
  Tuning(const Tuning&) = delete;
  Tuning& operator=(const Tuning&) = delete;

  /// Starts the TuningService when tuning is on (reason 4 turns it off). `on_verdicts` is
  /// called on a tuner thread with the store's new epoch: it must only post (see above).
  void start(std::function<void(std::int64_t)> on_verdicts);
  /// Stops the TuningService (kills its workers, ends running runs as abandoned, joins). Idempotent;
  /// call it from one thread at a time.
  void stop();

  /// True while a TuningService runs (false once stop() began).
  bool on() const { return m_service != nullptr && m_off.empty() && !m_stopping.load(); }
  /// Why this daemon does not tune; empty while it does.
  const std::string& off_reason() const { return m_off; }
  /// The worker binary in use (empty when tuning is off before the worker was looked for).
  const std::filesystem::path& worker() const { return m_worker; }

  /// The `tuning` object of the status reply: the TuningService's status() plus "reason": null
  /// while tuning is on; {"state": "off", "reason", "devices": [], "pending_requests", "config"}
  /// when it is off. `pending` are the store's pending requests (ids listed either way).
  nlohmann::json status(const std::vector<cache::RetuneRequest>& pending) const;

  /// Queues a re-tune (TuningService::request). Errors: tuning is off (the reason), or the
  /// store refused the request. `pending` tells whether it is still pending right after (a
  /// scope that names no device of this host is completed at once).
  struct Queued {
    std::int64_t id = 0;
    bool pending = true;
  };
  std::expected<Queued, std::string> request(const std::string& scope, const std::string& requested_by);

  /// One line for status's "tuning_note" and the retune reply: "off: <reason>", or "on: idle,
  /// 2 retune requests pending" / "on: tuning 1 of 1 devices".
  std::string summary(std::size_t pending_requests) const;

 private:
  const Config& m_config;
  std::vector<cache::DeviceRecord> m_devices;
  std::filesystem::path m_worker;
  std::string m_off;
  std::unique_ptr<tuner::TuningService> m_service;
  std::atomic<bool> m_stopping{false};
};

}  // namespace nsa::service

#pragma once
// The tuner as the daemon runs it: background threads that plan (tuning_plan.hpp), compile
// (the compile pool over the store-backed cubin cache), measure (one supervised worker process
// per GPU, supervisor.hpp), decide (verdict_policy.hpp) and store verdicts, while the daemon
// keeps serving. docs/tuning.md is the operator's description.
//
// Wiring into nsa-tuned takes four calls:
//
//   TuningService tuner(config.store_path(), device_records, tuning_config, log_sink);
//   tuner.on_verdicts([&](std::int64_t epoch) { post to the io_context: state.refresh(); });
//   tuner.start();                       // returns at once; tuning runs in the background
//   ...  status op: tuner.status()       // JSON progress (see status() below)
//   ...  retune op: tuner.request(scope, "uid:1000")  or, after writing the request itself,
//                   tuner.wake()
//   tuner.stop();                        // prompt: kills workers, joins threads
//
// The service opens its own connection to the store (SQLite WAL lets the daemon's connection
// read and write alongside). Devices of the same class (arch, GPU, driver, NVRTC, sources) share
// one plan: their workers take its families in turn, so N identical GPUs tune N times faster and
// never measure the same thing twice.

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/cache/records.hpp"
#include "nsa/jit/kernel_variant.hpp"
#include "nsa/jit/selection_patterns.hpp"
#include "nsa/tuner/supervisor.hpp"
#include "nsa/tuner/tuning_plan.hpp"
#include "nsa/tuner/verdict_policy.hpp"
#include "nsa/tuner/worker_protocol.hpp"

namespace nsa::tuner {

struct TuningConfig {
  PlanConfig plan;
  PolicyConfig policy;                       // margin 1.2, numerics gate 2x, per-dtype bounds
  Repetitions reps;
  double cut_factor = 3.0;                   // early cut: probe slower than this x the best so far
  jit::SelectionPattern decode_pattern = jit::SelectionPattern::random;
  jit::SelectionPattern prefill_pattern = jit::SelectionPattern::random;
  /// Sparse designs measured per phase (the reference and the sdpa baseline always are).
  std::vector<jit::Design> decode_designs = {jit::Design::query_outer, jit::Design::split_kv,
                                             jit::Design::decode_stream};
  std::vector<jit::Design> prefill_designs = {jit::Design::query_outer, jit::Design::prefill_shared,
                                              jit::Design::prefill_stream, jit::Design::prefill_group};
  /// Knob settings per design, the catalog's default first; 0 = every setting the catalog has.
  int max_variants_per_design = 0;

  std::filesystem::path worker;              // empty: default_worker_path()
  std::vector<std::string> worker_args;      // after --device N (tests pass a stand-in's script)
  std::vector<std::pair<std::string, std::string>> worker_env;
  std::chrono::milliseconds start_timeout{60000};
  std::chrono::milliseconds setup_timeout{180000};
  std::chrono::milliseconds step_timeout{30000};

  unsigned compile_threads = 0;              // 0: all cores
  std::chrono::milliseconds idle_poll{10000};  // how often an idle tuner looks for new work
  std::chrono::seconds retry_after{6 * 3600};  // before a point that got no verdict is tried again
  std::chrono::seconds failure_backoff{300};   // after a worker could not run at all
  TestFault test_fault = TestFault::none;    // TEST ONLY: NSA_TUNE_TEST_FAULT

  /// nullopt when usable; else the first problem, naming the setting.
  std::optional<std::string> validate() const;
};

/// Reads the `tuning` object of the daemon's configuration file over `base` (docs/tuning.md,
/// "Configuration", lists every key). Unknown keys and bad values are errors naming the key.
std::expected<TuningConfig, std::string> tuning_config_from_json(const nlohmann::json&, TuningConfig base = {});
/// The environment's say: NSA_TUNE_EXPERIMENTAL_PINNED (1/0, true/false, yes/no, on/off),
/// NSA_TUNE_TEST_FAULT (illegal_address, hang, abort, none), NSA_TUNE_WORKER (a path).
/// Returns an error naming the variable for a value it cannot read.
std::optional<std::string> apply_tuning_env(TuningConfig&,
                                            const std::function<std::optional<std::string>(const char*)>& env);
nlohmann::json to_json(const TuningConfig&);

class TuningService {
 public:
  /// Called (from a tuning thread) after verdicts were written, with the store's new epoch.
  using VerdictCallback = std::function<void(std::int64_t epoch)>;

  /// `devices`: this host's GPUs as recorded at start (nsa-tuned's device records). Nothing
  /// happens until start().
  TuningService(std::filesystem::path store_path, std::vector<cache::DeviceRecord> devices, TuningConfig config,
                LogSink log = {});
  /// stop()s.
  ~TuningService();
  TuningService(const TuningService&) = delete;
  TuningService& operator=(const TuningService&) = delete;

  /// Set before start().
  void on_verdicts(VerdictCallback callback);

  /// Validates the configuration, opens the store, marks runs a previous daemon left `running`
  /// as abandoned, and starts one tuning thread per device class. Returns at once. Errors: a
  /// bad configuration or a store that cannot be opened (the daemon keeps serving without
  /// tuning). With no devices it starts nothing and status() says so.
  std::expected<void, std::string> start();

  /// Kills running workers, ends running runs as abandoned, joins every thread. Prompt: at
  /// most about one NVRTC compile. Idempotent.
  void stop();

  bool running() const;

  /// Queues a re-tune of `scope` ("all", "sm_90", a family key) in the store and wakes the
  /// tuner. Returns the request's id; it is completed (VerdictStore::pending_retunes no longer
  /// lists it) when every device it names has tuned it.
  std::expected<std::int64_t, std::string> request(const std::string& scope, const std::string& requested_by);

  /// Makes idle tuning threads look at the store now (after the daemon wrote a request itself).
  void wake();

  /// Progress as JSON, safe from any thread:
  ///   {"state": "stopped"|"idle"|"tuning", "devices": [{
  ///      "device", "uuid", "name", "arch", "state" ("idle", "compiling", "tuning", "pinned",
  ///      "failed", "stopped"), "experimental", "run_id", "trigger", "family", "family_index",
  ///      "families", "point", "point_index", "points", "variant", "elapsed_s", "estimate_s",
  ///      "verdicts", "measurements", "worker_restarts", "last_error", "notes"}],
  ///    "pending_requests": [ids], "config": {...}}
  /// point_index/points count over the device class's current pass (k of N); estimate_s is the
  /// expected time left in it (null until it can be estimated).
  nlohmann::json status() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m;
};

}  // namespace nsa::tuner

#pragma once
// The daemon's durable state: one SQLite file (WAL) holding devices, compiled kernels, tuning
// runs, measurements, verdicts, pins and demand. docs/architecture.md ("The store") explains
// the schema and its migrations.

#include <cstdint>
#include <expected>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nsa/cache/records.hpp"

namespace nsa::cache {

/// A store failure: which operation, SQLite's message and result code, and what to do.
struct StoreError {
  std::string code;     // "open_failed", "corrupt", "too_new", "refused", "not_found", "sqlite"
  std::string message;
};

/// The reason text of the pin every new store carries.
extern const char* const kSm89PinReason;

class VerdictStore {
 public:
  /// Opens (creating it and its parent directory if needed) and migrates the database at
  /// `path` to the current schema, then seeds the SM 8.9 pin if absent. Errors: a file that is
  /// not a database or fails `PRAGMA quick_check` ("corrupt"), a schema newer than this build
  /// ("too_new"), permissions ("open_failed"). Never modifies a file it cannot migrate.
  static std::expected<VerdictStore, StoreError> open(const std::filesystem::path& path);
  /// Opens an existing store without creating or migrating it (for readers like nsa-tunectl
  /// while the daemon runs). "not_found" when the file does not exist.
  static std::expected<VerdictStore, StoreError> open_read_only(const std::filesystem::path& path);

  VerdictStore(VerdictStore&&) noexcept;
  VerdictStore& operator=(VerdictStore&&) noexcept;
  ~VerdictStore();

  static int current_schema_version();
  int schema_version() const;
  std::filesystem::path path() const;

  /// Monotonic counter bumped by every change that can change a dispatch answer (verdicts,
  /// pins). Clients drop memoized answers when it moves.
  std::int64_t epoch() const;

  // Devices ---------------------------------------------------------------------------------
  std::expected<void, StoreError> upsert_device(const DeviceRecord&);
  std::vector<DeviceRecord> devices() const;

  // Pins (a pin always wins over measurements) -------------------------------------------------
  std::vector<Pin> pins() const;
  std::optional<Pin> pin_for(const std::string& arch) const;
  /// Adds or replaces an operator pin. Refuses to replace a seeded pin ("refused").
  std::expected<void, StoreError> add_pin(const Pin&);
  /// Removes an operator pin. "refused" for a seeded pin, "not_found" when there is none.
  std::expected<void, StoreError> remove_pin(const std::string& arch);

  // Tuning runs and measurements (history: never deleted) -----------------------------------
  std::expected<std::int64_t, StoreError> begin_run(const TuningRun&);
  std::expected<void, StoreError> finish_run(std::int64_t run_id, RunStatus, const std::string& note);
  std::expected<std::int64_t, StoreError> add_measurement(const Measurement&);
  std::vector<TuningRun> runs(int limit = 100) const;
  std::vector<Measurement> measurements(std::int64_t run_id) const;

  // Verdicts -----------------------------------------------------------------------------------
  /// Records a verdict; the newest verdict for a (device class, family, point) supersedes older
  /// ones, which stay as history. Bumps the epoch unless experimental.
  std::expected<std::int64_t, StoreError> put_verdict(const Verdict&);
  /// The newest verdict per (device class, family, point) for every class, each with `stale`
  /// set against `current` (all stale when current is nullopt and `stale_if_no_current`).
  std::vector<Verdict> latest_verdicts(const std::optional<DeviceClass>& current) const;
  /// The newest non-experimental verdicts of exactly `cls` (none stale by construction).
  std::vector<Verdict> current_verdicts(const DeviceClass& cls) const;

  // Compiled kernels ---------------------------------------------------------------------------
  /// Stored atomically (one transaction). Replaces a row with the same full key.
  std::expected<void, StoreError> put_kernel(const CompiledKernel&);
  /// nullopt for a missing row or one whose key (arch, source hash, options, nvrtc) differs.
  std::optional<CompiledKernel> get_kernel(const std::string& variant_key, const std::string& arch,
                                           const std::string& source_hash, const std::string& options,
                                           const std::string& nvrtc_version) const;
  std::int64_t kernel_count() const;

  // Retune requests (queued by operators; the tuner consumes them) ---------------------------
  /// Queues a re-tune of `scope` ("all", an arch "sm_90", or a family key). Returns its id.
  std::expected<std::int64_t, StoreError> request_retune(const std::string& scope,
                                                         const std::string& requested_by);
  std::vector<RetuneRequest> pending_retunes() const;
  std::expected<void, StoreError> complete_retune(std::int64_t id, const std::string& outcome);

  // Demand ---------------------------------------------------------------------------------------
  /// Adds `count` requests for an untuned (arch, family, point), in one transaction per call.
  std::expected<void, StoreError> record_demand(const std::vector<Demand>& batch);
  /// Most-requested first.
  std::vector<Demand> demand(int limit = 100) const;

 private:
  struct Impl;
  explicit VerdictStore(std::unique_ptr<Impl>);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace nsa::cache

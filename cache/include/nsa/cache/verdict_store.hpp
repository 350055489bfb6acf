#pragma once
// The daemon's durable state: one SQLite file (WAL) holding devices, compiled kernels, tuning
// runs, measurements, verdicts, pins and demand. docs/store.md explains the schema, its
// migrations and the durability it promises.
//
// Error contract: every write returns std::expected<..., StoreError> and runs in one
// transaction (all or nothing). Reads of an open store cannot fail unless the file breaks
// under us (disk error, another process corrupting it); they have no error channel and throw
// StoreFailure, which the daemon catches at its edge. One VerdictStore may be shared between
// threads: calls are serialised inside.

#include <cstdint>
#include <expected>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "nsa/cache/records.hpp"

namespace nsa::cache {

/// A store failure: which operation, SQLite's message and result code, and what to do.
struct StoreError {
  /// "open_failed", "corrupt", "not_a_store" (an SQLite file of something else), "too_new",
  /// "too_old" (read-only open of a store that needs migrating), "refused", "not_found",
  /// "invalid" (a bad argument), "read_only" (a write on a store opened with open_read_only),
  /// "sqlite" (anything else SQLite reported: busy past the timeout, disk full, I/O error).
  std::string code;
  std::string message;  // names the file or row and says what to do
};

/// Thrown by the reads that have no error channel (see the file comment).
class StoreFailure : public std::runtime_error {
 public:
  explicit StoreFailure(StoreError error)
      : std::runtime_error(error.message), m_error(std::move(error)) {}
  const StoreError& error() const { return m_error; }

 private:
  StoreError m_error;
};

/// The reason text of the pin every new store carries.
extern const char* const kSm89PinReason;

class VerdictStore {
 public:
  /// Opens (creating it and its parent directory if needed) and migrates the database at
  /// `path` to the current schema, then seeds the SM 8.9 pin if absent (or no longer seeded).
  /// Errors: a file that is not a database or fails `PRAGMA quick_check` ("corrupt"), an SQLite
  /// file of another program ("not_a_store"), a schema newer than this build ("too_new"), a
  /// directory in the file's place, permissions, a read-only location ("open_failed"). Never
  /// modifies a file it cannot migrate.
  static std::expected<VerdictStore, StoreError> open(const std::filesystem::path& path);
  /// Opens an existing store without creating or migrating it (for readers like nsa-tunectl
  /// while the daemon runs; WAL lets them read while it writes). "not_found" when the file does
  /// not exist, "too_old" when its schema still needs migrating (start nsa-tuned once),
  /// "too_new" and "corrupt" as for open(). Every write on it returns "read_only".
  static std::expected<VerdictStore, StoreError> open_read_only(const std::filesystem::path& path);

  VerdictStore(VerdictStore&&) noexcept;
  VerdictStore& operator=(VerdictStore&&) noexcept;
  ~VerdictStore();

  static int current_schema_version();
  int schema_version() const;
  std::filesystem::path path() const;

  /// Monotonic counter bumped by every change that can change a dispatch answer (verdicts,
  /// pins), in the same transaction as the change. Read from the file on every call, so a
  /// reader sees the daemon's bumps. Clients drop memoized answers when it moves.
  std::int64_t epoch() const;

  // Devices ---------------------------------------------------------------------------------
  /// Inserts or updates the device with this UUID ("invalid" for an empty UUID); seen_at 0
  /// means now.
  std::expected<void, StoreError> upsert_device(const DeviceRecord&);
  /// Every device ever seen, by ordinal.
  std::vector<DeviceRecord> devices() const;

  // Pins (a pin always wins over measurements) -------------------------------------------------
  /// By arch.
  std::vector<Pin> pins() const;
  std::optional<Pin> pin_for(const std::string& arch) const;
  /// Adds or replaces an operator pin. Refuses to replace a seeded pin ("refused"). "invalid"
  /// for an arch not spelled like "sm_90", an empty reason, or a backend other than "sdpa" (a
  /// pin can only force the fallback: choosing a sparse variant needs a measured verdict).
  std::expected<void, StoreError> add_pin(const Pin&);
  /// Removes an operator pin. "refused" for a seeded pin, "not_found" when there is none.
  std::expected<void, StoreError> remove_pin(const std::string& arch);

  // Tuning runs and measurements (history: never deleted) -----------------------------------
  /// Records a run in status `running` and returns its id. "refused" for a non-experimental
  /// run on a pinned arch (a pinned arch is only ever tuned as an experiment); "invalid" for a
  /// status other than running or an arch not spelled like "sm_90".
  std::expected<std::int64_t, StoreError> begin_run(const TuningRun&);
  /// Ends a running run with `status` (not running). "not_found" for an unknown run, "refused"
  /// for a run that already ended.
  std::expected<void, StoreError> finish_run(std::int64_t run_id, RunStatus, const std::string& note);
  /// Adds one measurement to a running run. "not_found" for an unknown run, "refused" for a run
  /// that already ended, "invalid" for an empty family or point or an unknown backend.
  std::expected<std::int64_t, StoreError> add_measurement(const Measurement&);
  /// Newest first.
  std::vector<TuningRun> runs(int limit = 100) const;
  /// In insertion order; empty for an unknown run.
  std::vector<Measurement> measurements(std::int64_t run_id) const;

  // Verdicts -----------------------------------------------------------------------------------
  /// Records a verdict; the newest verdict for a (device class, family, point) supersedes older
  /// ones, which stay as history ("newest" is insertion order, not created_at, so a clock step
  /// cannot resurrect an old verdict). Bumps the epoch unless experimental. "refused" for a
  /// non-experimental verdict on a pinned arch (a pin always wins: record it experimental),
  /// "not_found" for a run_id (non-zero) that names no run, "invalid" for an empty family or
  /// point, a backend other than "sdpa"/"sparse", or an arch not spelled like "sm_90".
  std::expected<std::int64_t, StoreError> put_verdict(const Verdict&);
  /// The newest verdict per (device class, family, point) for every class (experimental ones
  /// included), each with `stale` = its class differs from `current`. With `current` nullopt
  /// nothing is known about the host (no GPU, or a reader that did not probe) and none is
  /// marked stale. Ordered by arch, family, point, then class.
  std::vector<Verdict> latest_verdicts(const std::optional<DeviceClass>& current) const;
  /// The newest non-experimental verdicts of exactly `cls` (none stale by construction).
  std::vector<Verdict> current_verdicts(const DeviceClass& cls) const;

  // Compiled kernels ---------------------------------------------------------------------------
  /// Stored atomically (one transaction). Replaces a row with the same full key, and drops the
  /// rows of the same variant key and arch whose source hash or NVRTC version differ (they can
  /// never be loaded again by this build), so the cache does not grow with every upgrade.
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
  /// Oldest first.
  std::vector<RetuneRequest> pending_retunes() const;
  /// The newest `limit` requests, pending or completed (with their outcome), newest first:
  /// what `status` shows and what `nsa-tunectl retune --wait` reads its request's outcome from.
  std::vector<RetuneRequest> recent_retunes(std::size_t limit = 10) const;
  /// "not_found" for an unknown request, "refused" for one already completed.
  std::expected<void, StoreError> complete_retune(std::int64_t id, const std::string& outcome);

  // Demand ---------------------------------------------------------------------------------------
  /// Adds `count` requests for an untuned (arch, family, point), in one transaction per call:
  /// counts add up, first_at keeps the earliest and last_at the latest (0 means now).
  std::expected<void, StoreError> record_demand(const std::vector<Demand>& batch);
  /// Most-requested first; ties by most recent last_at, then arch, family, point.
  std::vector<Demand> demand(int limit = 100) const;

 private:
  struct Impl;
  explicit VerdictStore(std::unique_ptr<Impl>);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace nsa::cache

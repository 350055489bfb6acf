#pragma once
// Rows of the store, as plain values. Nothing here knows SQLite.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nsa::cache {

/// A GPU as the driver described it when the daemon started.
struct DeviceRecord {
  int ordinal = 0;
  std::string uuid;           // "GPU-8f1c..."
  std::string name;           // "NVIDIA H100 80GB HBM3"
  std::string arch;           // "sm_90"
  int sm_count = 0;
  std::uint64_t memory_bytes = 0;
  int driver_version = 0;     // cuDriverGetVersion: 13000
  std::string nvrtc_version;  // "13.0"
  std::int64_t seen_at = 0;   // unix seconds
};

/// Everything a verdict depends on besides the shape: when any field differs from the host's
/// current one, the verdict is stale (kept as history, never served as current).
struct DeviceClass {
  std::string arch;
  std::string gpu_name;
  int driver_version = 0;
  std::string nvrtc_version;
  std::string source_hash;  // hash of all kernel sources
  bool operator==(const DeviceClass&) const = default;
};

/// The class of a device as recorded at daemon start, with the kernel-source hash of this build
/// (jit::kernel_source_hash()): what a reader such as nsa-tunectl passes as the host's current
/// classes when it reads the store without probing the GPU itself.
DeviceClass class_of(const DeviceRecord&, const std::string& source_hash);
/// "sm_90 NVIDIA H100 80GB HBM3, driver 13000, NVRTC 13.0, sources 3f2a9c01", for messages.
std::string describe(const DeviceClass&);

/// A policy decision for an arch that no measurement can lift.
struct Pin {
  std::string arch;            // "sm_89"
  std::string backend = "sdpa";
  std::string reason;
  bool seeded = false;         // seeded pins (SM 8.9) cannot be removed
  std::string created_by;      // "seed", "uid:1000"
  std::int64_t created_at = 0;
};

enum class RunStatus { running, finished, failed, abandoned };
struct TuningRun {
  std::int64_t id = 0;
  DeviceClass device_class;
  std::string device_uuid;
  std::string trigger;         // "startup", "retune", "stale", "demand"
  bool experimental = false;   // tuned on a pinned arch by explicit override
  RunStatus status = RunStatus::running;
  std::int64_t started_at = 0;
  std::int64_t finished_at = 0;  // 0 while running
  std::string note;
};

/// Outcome of one candidate at one shape point, as the tuner records it.
enum class MeasurementStatus { ok, numerics_failed, compile_failed, crashed, timeout, skipped };
struct Measurement {
  std::int64_t id = 0;
  std::int64_t run_id = 0;
  std::string family;          // api::Family::key()
  std::string point;           // api::Point::key()
  std::string backend;         // "sdpa" or "sparse"
  std::string variant;         // variant key ("" for the baseline)
  double median_us = 0;
  double spread_us = 0;        // e.g. p90 - p10
  double rel_l2 = 0;
  double max_abs = 0;
  MeasurementStatus status = MeasurementStatus::ok;
  std::string detail;          // error text for failed statuses
};

/// The decision for one (device class, family, point).
struct Verdict {
  std::int64_t id = 0;
  DeviceClass device_class;
  std::string family;
  std::string point;           // api::Point::key()
  std::string backend;         // "sparse" or "sdpa"
  std::string variant;         // winning sparse variant (also when backend is sdpa: best loser, may be "")
  double baseline_us = 0;
  double best_us = 0;          // best sparse time
  double speedup = 0;          // baseline_us / best_us
  double rel_l2 = 0;           // of the winning variant
  double baseline_rel_l2 = 0;
  std::int64_t run_id = 0;
  bool experimental = false;   // never used for dispatch
  std::string reason;          // one line: why this backend (margin, gate, rejected candidates)
  std::int64_t created_at = 0;
  bool stale = false;          // filled on read: device class differs from the current one
};

/// A compiled kernel binary and the key that makes it stale.
struct CompiledKernel {
  std::string variant_key;
  std::string arch;
  std::string source_hash;
  std::string options;
  std::string nvrtc_version;
  std::vector<std::uint8_t> cubin;
  int registers = 0;
  int shared_bytes = 0;
  int spill_bytes = 0;
  std::int64_t created_at = 0;
};

/// How often clients asked about a family nobody had tuned.
struct Demand {
  std::string arch;
  std::string family;
  std::string point;
  std::int64_t count = 0;
  std::int64_t first_at = 0;
  std::int64_t last_at = 0;
};

struct RetuneRequest {
  std::int64_t id = 0;
  std::string scope;         // "all", "sm_90", or a family key
  std::string requested_by;  // "uid:1000"
  std::int64_t requested_at = 0;
  std::int64_t completed_at = 0;  // 0 while pending
  std::string outcome;
};

std::string to_string(RunStatus);
std::string to_string(MeasurementStatus);
std::optional<RunStatus> parse_run_status(std::string_view);
std::optional<MeasurementStatus> parse_measurement_status(std::string_view);

}  // namespace nsa::cache

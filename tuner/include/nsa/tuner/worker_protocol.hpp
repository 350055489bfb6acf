#pragma once
// The conversation between the tuning supervisor (inside nsa-tuned) and `nsa-tune-worker`, the
// child process that owns one GPU's CUDA context. docs/tuning.md ("The worker protocol") is the
// prose version; this header is the contract.
//
// Framing: one JSON object per line (newline-delimited JSON), UTF-8, no line breaks inside an
// object. The supervisor writes jobs to the worker's stdin; the worker writes messages to its
// stdout and logs to stderr. End of stdin means "exit 0".
//
// A conversation, for one job with a baseline `S` and a candidate `C`:
//
//   worker -> {"type":"hello","device":0,"arch":"sm_90",...}         context retained: ready
//   super  -> {"type":"job","id":7,"family":...,"variants":[S,C],...}
//   worker -> {"type":"begin","job":7,"step":"setup"}               inputs + device reference
//   worker -> {"type":"begin","job":7,"step":"<key of S>"}
//   worker -> {"type":"result","job":7,"variant":"<key of S>","status":"ok",...}
//   worker -> {"type":"begin","job":7,"step":"<key of C>"}
//   worker -> {"type":"result","job":7,"variant":"<key of C>","status":"ok",...}
//   worker -> {"type":"done","job":7,...}
//
// `begin` is what makes containment precise: when the worker dies, hangs or prints garbage, the
// step it last began is the one to blame. After a sticky CUDA error the worker sends the
// variant's result (status crashed), then `fatal`, and exits; the supervisor starts a new worker
// and sends the rest of the job again with the same seed, so the inputs are the same.
//
// Cubins travel base64-encoded inside the job, once per worker process: a variant whose cubin
// was sent to this process before comes without one, and the worker uses the module it loaded.
//
// Non-finite numbers have no JSON spelling: such a field is written as null and read back as NaN.

#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "nsa/api/problem.hpp"
#include "nsa/cache/records.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/kernel_variant.hpp"
#include "nsa/jit/selection_patterns.hpp"

namespace nsa::tuner {

/// Bumped on any incompatible change; the worker's hello carries it and the supervisor refuses
/// a worker that speaks another version (a stale binary left in bin/).
inline constexpr int kWorkerProtocolVersion = 1;

/// Exit codes of nsa-tune-worker (docs/tuning.md repeats them).
namespace worker_exit {
inline constexpr int ok = 0;            // stdin closed
inline constexpr int sticky = 3;        // a sticky CUDA error poisoned the context (after `fatal`)
inline constexpr int self_test_failed = 4;
inline constexpr int usage = 64;        // bad command line
inline constexpr int bad_input = 65;    // a line on stdin that is not a valid job (after `fatal`)
inline constexpr int no_device = 69;    // no driver, no GPU, or no such ordinal
}  // namespace worker_exit

/// How a variant is timed (docs/tuning.md, "What is measured").
struct Repetitions {
  int warmup = 3;          // untimed runs first (clocks, caches, lazy module loading)
  int probe_runs = 3;      // timed runs before the early cut is considered
  int min_runs = 10;       // at least this many timed runs ...
  int max_runs = 200;      // ... at most this many ...
  double target_ms = 25;   // ... aiming at this much timed GPU time
  bool operator==(const Repetitions&) const = default;
  /// nullopt when usable; else which field is wrong and what it must be.
  std::optional<std::string> validate() const;
};

/// What a job step runs: a cubin and the launches of one variant for the job's shape.
struct JobVariant {
  std::string key;                  // variant key (the measurement's `variant`)
  std::string backend;              // "reference", "sdpa" or "sparse"
  jit::LaunchPlan plan;             // computed by the supervisor for the job's point
  /// The cubin; null or empty when this worker process already has the module (see the file
  /// comment). Shared so that one family's cubins are not copied for every point.
  std::shared_ptr<const std::vector<std::uint8_t>> cubin;
  bool operator==(const JobVariant&) const;
};

/// One shape point of one family: everything the worker needs, nothing it must look up.
struct Job {
  std::int64_t id = 0;
  api::Family family;
  api::Point point;
  jit::SelectionPattern pattern = jit::SelectionPattern::random;
  std::uint64_t seed = 0;           // inputs and block_idx are a function of the seed
  Repetitions reps;
  /// A variant whose probe median exceeds cut_factor x best_so_far_us stops there (status
  /// skipped). 0 disables the cut.
  double cut_factor = 3.0;
  double best_so_far_us = 0;        // 0: nothing measured yet
  /// Inputs are rotated over enough copies that one cycle touches at least this many bytes
  /// (a few times the L2 size), so timed runs do not hit data a previous run left in L2.
  std::uint64_t rotate_bytes = 0;   // 0: the worker uses 4 x its device's L2
  JobVariant support;               // the worker's own kernels (fill, error): worker_kernels.cu
  JobVariant reference;             // the device fp32 reference (design `reference`)
  std::vector<JobVariant> variants; // sdpa settings first, then candidates
  bool operator==(const Job&) const = default;
};

/// The worker's first line: the context is up and this is the device it owns.
struct WorkerHello {
  int protocol = kWorkerProtocolVersion;
  int device = 0;
  int pid = 0;
  std::string uuid, name, arch;
  std::uint64_t memory_bytes = 0;
  std::uint64_t l2_bytes = 0;
  int driver_version = 0;
  bool operator==(const WorkerHello&) const = default;
};

/// The worker starts a step: "setup" (inputs and reference) or a variant key.
struct StepBegin {
  std::int64_t job = 0;
  std::string step;
  bool operator==(const StepBegin&) const = default;
};
inline constexpr const char* kSetupStep = "setup";

/// One variant's outcome at the job's point. Times in microseconds; errors against the device
/// reference on copy 0 of the inputs.
struct VariantResult {
  std::int64_t job = 0;
  std::string variant;
  std::string backend;                 // "sdpa" or "sparse"
  cache::MeasurementStatus status = cache::MeasurementStatus::ok;
  double median_us = 0;
  double p10_us = 0, p90_us = 0;
  int runs = 0;                        // timed runs behind the median
  double rel_l2 = 0, max_abs = 0, mean_abs = 0;
  std::int64_t nonfinite = 0;          // outputs NaN/inf where the reference is finite
  double lse_max_abs = 0;
  std::string detail;                  // why, for every status but ok; notes for ok
  double spread_us() const { return p90_us - p10_us; }
  /// The store's row for this result (run_id, family and point filled by the caller).
  cache::Measurement to_measurement(std::int64_t run_id, const std::string& family,
                                    const std::string& point) const;
  bool operator==(const VariantResult&) const;
};

/// The job ended; `copies` and `input_bytes` say how the inputs were laid out.
struct JobDone {
  std::int64_t job = 0;
  int copies = 0;
  std::uint64_t input_bytes = 0;       // all copies of Q, K, V and block_idx
  double reference_ms = 0;             // the device reference's run time
  double seconds = 0;                  // wall time of the whole job in the worker
  bool operator==(const JobDone&) const = default;
};

/// The job cannot be measured at all (inputs do not fit, the reference failed without
/// poisoning the context, ...). The worker goes on with the next job.
struct JobFailed {
  std::int64_t job = 0;
  std::string error;
  bool operator==(const JobFailed&) const = default;
};

/// The worker is about to exit on its own (sticky CUDA error, unreadable input).
struct WorkerFatal {
  std::string error;
  bool sticky = false;
  bool operator==(const WorkerFatal&) const = default;
};

using WorkerMessage = std::variant<WorkerHello, StepBegin, VariantResult, JobDone, JobFailed, WorkerFatal>;

// Encoding and decoding -------------------------------------------------------------------------

/// One line of JSON (without the newline). `send_cubin(key)` says whether the cubin of the
/// variant `key` goes into this line (default: every non-empty cubin).
std::string encode_job(const Job&, const std::function<bool(const std::string& key)>& send_cubin = {});
/// Errors name the field and what was expected ("job.variants[3].plan.launches[0].grid: ...").
std::expected<Job, std::string> decode_job(std::string_view line);

std::string encode_message(const WorkerMessage&);
/// Errors for anything that is not one of the messages above, spelled exactly: not JSON, an
/// unknown type, a missing or mistyped field. The supervisor treats such a line as a crash.
std::expected<WorkerMessage, std::string> decode_message(std::string_view line);

std::string base64_encode(const std::vector<std::uint8_t>&);
std::expected<std::vector<std::uint8_t>, std::string> base64_decode(std::string_view);

// Families and kernels -----------------------------------------------------------------------------

/// The kernel-side spec of a protocol family (dtype and compile-time constants).
jit::FamilySpec spec_of(const api::Family&);
/// The runtime shape of a point.
jit::RuntimeShape shape_of(const api::Point&);

/// The text of tuner/worker/worker_kernels.cu (embedded at build time): input generation and
/// the on-device error reduction the worker uses. Compiled like any variant, cached like one.
std::string_view worker_kernel_source();
/// The cache key of the worker kernels for `arch` (their own source hash, the same options).
jit::CubinKey worker_kernels_key(const std::string& arch);
/// Compiles (or finds in `cache`, which may be null) the worker kernels for `arch`.
std::expected<jit::Cubin, jit::CompileError> compile_worker_kernels(const std::string& arch,
                                                                    jit::CubinCache* cache);

/// Entries of worker_kernels.cu. Each takes a SelectionParams (the one argument the driver
/// layer launches with) whose fields carry the arguments as listed in the .cu file.
inline constexpr const char* kFillNormalBf16 = "nsa_worker_fill_normal_bf16";
inline constexpr const char* kFillNormalFp16 = "nsa_worker_fill_normal_fp16";
inline constexpr const char* kErrorBf16 = "nsa_worker_error_bf16";
inline constexpr const char* kErrorFp16 = "nsa_worker_error_fp16";
inline constexpr unsigned kWorkerKernelThreads = 256;
inline constexpr unsigned kErrorGrid = 1024;   // CTAs of the error reduction (partials)
inline constexpr int kErrorPartialFields = 5;  // per CTA: sum d^2, sum r^2, sum |d|, max |d|, nonfinite

}  // namespace nsa::tuner

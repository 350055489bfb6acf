#pragma once
// The worker's side of a job (worker_protocol.hpp): inputs on the device, the device reference,
// and for each variant a numerics check and a timing. job_runner.cpp explains the method.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nsa/jit/device.hpp"
#include "nsa/jit/driver.hpp"
#include "nsa/jit/host_reference.hpp"
#include "nsa/tuner/worker_protocol.hpp"

namespace nsa::tuner::worker {

using Send = std::function<void(const WorkerMessage&)>;
/// Log lines for stderr ("setup: 3 copies ...").
using Log = std::function<void(const std::string&)>;

/// The host-side copy of the last job's copy-0 inputs and the device reference's output, for
/// the self-test's cross-check against the host reference (small shapes only).
struct HostInputs {
  jit::SelectionShape shape;
  jit::ElemType dtype = jit::ElemType::bf16;
  std::vector<float> q, k, v;
  std::vector<std::int32_t> block_idx;
  std::vector<float> reference_o;
};

class JobRunner {
 public:
  /// Retains device `info.ordinal`'s primary context and creates the stream. The error names
  /// the driver call that failed.
  static jit::DriverResult<JobRunner> create(const jit::DeviceInfo& info, int driver_version, Log log);
  JobRunner(JobRunner&&) noexcept;
  JobRunner& operator=(JobRunner&&) noexcept;
  ~JobRunner();

  WorkerHello hello() const;

  /// Runs `job`, sending begin/result/done/job_failed through `send`. Returns the error when
  /// the context is poisoned (a sticky CUDA error; the result of the variant that caused it has
  /// been sent): the caller sends `fatal` and exits. Never throws for kernel behaviour.
  std::optional<WorkerFatal> run(const Job& job, const Send& send);

  /// Downloads the last job's copy-0 inputs and the reference output (self-test only: the
  /// whole tensors come to the host).
  jit::DriverResult<HostInputs> download_inputs() const;

 private:
  struct State;
  explicit JobRunner(std::unique_ptr<State>);
  std::unique_ptr<State> m;
};

}  // namespace nsa::tuner::worker

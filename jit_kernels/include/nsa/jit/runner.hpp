#pragma once
// Running variants on a problem: the inputs of one selection-attention problem on the host and
// on the device, and a compiled variant loaded with its launch plan and workspace. Shared by the
// GPU tests, the kernel benchmark and the tuner, so that all three poison outputs, size
// workspaces and fill SelectionParams the same way.
//
// Poisoning: outputs (O, LSE) and the workspace are filled with NaN before each checked run, so
// an element a kernel forgot to write, or workspace it read before writing, shows up as NaN.

#include <cstdint>
#include <expected>
#include <random>
#include <string>
#include <vector>

#include "nsa/jit/driver.hpp"
#include "nsa/jit/host_reference.hpp"
#include "nsa/jit/kernel_variant.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/jit/selection_patterns.hpp"

namespace nsa::jit {

/// The inputs of one problem on the host, as dtype bits (what the device gets).
struct HostProblem {
  SelectionShape shape;
  ElemType dtype = ElemType::bf16;
  std::vector<std::uint16_t> q, k, v;
  std::vector<std::int32_t> block_idx;

  /// Fresh standard-normal Q, K, V (rounded to the dtype) and a block_idx of `pattern`.
  static HostProblem random(const SelectionShape& shape, ElemType dtype, SelectionPattern pattern,
                            std::mt19937_64& rng, const PatternOptions& options = {});
  /// The host reference on these inputs (fp64 by default).
  std::expected<ReferenceOutput, std::string> reference(Accumulate accumulate = Accumulate::fp64) const;
  /// Multiply-adds the host reference needs (visible keys x h x (D_qk + D_v)), to decide between
  /// the host and the device reference.
  double reference_cost() const;
};

/// Device buffers for one problem: inputs, outputs (O, LSE).
class DeviceProblem {
 public:
  /// Allocates every tensor of `shape` (uninitialised).
  static DriverResult<DeviceProblem> allocate(const SelectionShape& shape, ElemType dtype);
  /// Allocates and uploads the inputs of `host`.
  static DriverResult<DeviceProblem> upload(const HostProblem& host);

  const SelectionShape& shape() const { return m_shape; }
  ElemType dtype() const { return m_dtype; }
  DeviceBuffer& q() { return m_q; }
  DeviceBuffer& k() { return m_k; }
  DeviceBuffer& v() { return m_v; }
  DeviceBuffer& block_idx() { return m_idx; }
  DeviceBuffer& o() { return m_o; }
  DeviceBuffer& lse() { return m_lse; }

  /// Fills O and LSE with NaN.
  DriverResult<void> poison_outputs();
  /// The parameter block for these tensors; `with_lse` false passes lse = 0 (not requested).
  SelectionParams params(CUdeviceptr workspace, bool with_lse = true) const;
  /// O widened to float, and LSE.
  DriverResult<std::vector<float>> download_o() const;
  DriverResult<std::vector<float>> download_lse() const;

 private:
  SelectionShape m_shape;
  ElemType m_dtype = ElemType::bf16;
  DeviceBuffer m_q, m_k, m_v, m_idx, m_o, m_lse;
};

/// A compiled variant loaded into the current context, with its plan for one runtime shape and
/// a workspace of the size the plan asks for.
class LoadedVariant {
 public:
  /// The plan is for `shape` on the current context's device (its SM count, when the shape
  /// leaves it 0). Errors: a plan the catalog refuses (call "plan_for", the reason in detail),
  /// module load, missing entries, shared memory over the device's limit, workspace allocation.
  static DriverResult<LoadedVariant> load(const KernelVariant& variant, const Cubin& cubin, const RuntimeShape& shape);

  /// Launches the plan on `problem` (asynchronously on `stream`).
  DriverResult<void> launch(const DeviceProblem& problem, const Stream& stream, bool with_lse = true) const;
  /// Launches the plan with explicit parameters (e.g. pointing at one of several rotated input
  /// copies); params.workspace is replaced by this variant's workspace.
  DriverResult<void> launch(SelectionParams params, const Stream& stream) const;
  /// Launches only launch `index` of the plan (plan().launches[index]) with explicit parameters,
  /// params.workspace replaced by this variant's workspace: times one kernel of a multi-kernel
  /// design alone (the benchmark's sdpa_packed gather and attention parts).
  DriverResult<void> launch_one(std::size_t index, SelectionParams params, const Stream& stream) const;
  /// Fills the workspace with NaN (a plan without workspace: nothing to do).
  DriverResult<void> poison_workspace();
  /// Poisons outputs and workspace, launches, waits, and downloads O and LSE (LSE empty when
  /// `with_lse` is false).
  struct Result {
    std::vector<float> o, lse;
  };
  DriverResult<Result> run_checked(DeviceProblem& problem, const Stream& stream, bool with_lse = true);

  const KernelVariant& variant() const { return m_variant; }
  const LaunchPlan& plan() const { return m_prepared.plan(); }
  /// Registers a thread of the variant's kernels uses, from the driver (PreparedPlan::registers).
  int registers() const { return m_prepared.registers(); }
  /// The cluster width launch `index` of the plan runs with (PreparedPlan::cluster_width).
  int cluster_width(std::size_t index) const { return m_prepared.cluster_width(index); }

 private:
  LoadedVariant(KernelVariant v, Module m, PreparedPlan p, DeviceBuffer w)
      : m_variant(std::move(v)), m_module(std::move(m)), m_prepared(std::move(p)), m_workspace(std::move(w)) {}
  KernelVariant m_variant;
  Module m_module;
  PreparedPlan m_prepared;  // borrows m_module's functions (a move keeps the CUmodule handle)
  DeviceBuffer m_workspace;
};

}  // namespace nsa::jit

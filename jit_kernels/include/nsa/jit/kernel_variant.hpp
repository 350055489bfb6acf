#pragma once
// A kernel variant: one design, specialised for one family (compile-time shape constants) and
// one setting of the design's tuning knobs, for one target arch. Its key spells out all of it:
//   sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_stages2.sm90
// The runtime part of a problem (batch, T_q, T_kv, H_kv) is a kernel argument, never a constant.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nsa::jit {

enum class ElemType : std::uint8_t { bf16, fp16 };

/// Compile-time constants shared by every design.
struct FamilySpec {
  ElemType dtype = ElemType::bf16;
  int d_qk = 128, d_v = 128;
  int h = 16;       // query heads per KV group
  int block = 64;   // l'
  int n = 16;       // selected blocks per row
  bool operator==(const FamilySpec&) const = default;
  /// "dqk128_dv128_h16_blk64_n16_bf16"
  std::string key() const;
};

/// Designs. Families 1-2 of the spec are `reference` and the SDPA baseline (`sdpa_packed`:
/// gather + dense attention); the rest are sparse selection designs.
enum class Design : std::uint8_t {
  reference,
  sdpa_packed,
  query_outer,
  split_kv,
  prefill_shared,
  prefill_stream,
  decode_stream,
  prefill_group
};
std::string_view to_string(Design);
bool is_sparse(Design);

struct KernelVariant {
  Design design = Design::reference;
  FamilySpec spec;
  /// The design's knobs, in the order they appear in the key ("warps", 4), ("stages", 2).
  std::vector<std::pair<std::string, int>> knobs;
  std::string arch = "sm_90";  // the device's target: sm_80, sm_86, sm_89, sm_90, sm_90a, ...

  /// The target NVRTC compiles for: `arch`, except that a design using instructions of the
  /// arch-specific target only (prefill_group's wgmma) gets that target on sm_90 ("sm_90a").
  std::string compile_arch() const;

  /// "sel_fwd.<design>.<spec>.<knob><value>_....<arch without '_'>"
  std::string key() const;
  /// The inverse of key(): parse(v.key()) == v for every variant. nullopt for any text key()
  /// would not produce (a leading zero, an unknown design or dtype, a missing part), so a key
  /// read back from the store or a reply either names exactly one variant or none. Knobs are
  /// not checked against the catalog (a key of another build may carry knobs this one lacks;
  /// jit::plan_for says so when asked to plan it).
  static std::optional<KernelVariant> parse(std::string_view key);
  int knob(const std::string& name, int fallback) const;
  /// "#define NSA_DQK 128\n#define NSA_KNOB_WARPS 4\n..." prepended to the design's source:
  /// NSA_DQK NSA_DV NSA_H NSA_BLOCK NSA_N NSA_DTYPE_BF16|NSA_DTYPE_FP16 and NSA_KNOB_<NAME>.
  std::string prelude() const;
};

/// The runtime shape a launch plan is computed for, and the device's multiprocessor count: a
/// design whose CTAs are persistent (prefill_stream with tma = 1) launches as many as the SMs
/// hold at once; with sm_count 0 (unknown) it launches one per work item, which is correct but
/// forgoes the overlap between items. LoadedVariant::load fills it from the current device.
struct RuntimeShape {
  std::int64_t batch = 1, t_q = 1, t_kv = 1, h_kv = 1;
  int sm_count = 0;
};

/// A TMA tensor map that a launch takes after SelectionParams (its kernel's second, third, ...
/// argument, in the order of Launch::tensor_maps), passed by value as a 64-byte-aligned
/// CUtensorMap. The launcher encodes it from the launch's own SelectionParams: a 4-D tiled view
/// of K (or V) [B, T_kv, H_kv, D] as dims {D, H_kv, T_kv, B} (innermost first; byte strides
/// {2 D, 2 D H_kv, 2 D H_kv T_kv}), 16-bit elements, a box of {64, 1, box_rows, 1}, 128-byte
/// swizzle, no interleave, L2 promotion of 256 bytes, and zeros for elements outside the tensor.
/// docs/protocol.md ("tensor_maps") gives the same contract to clients that launch themselves.
struct TensorMapArg {
  enum class Operand : std::uint8_t { k, v };
  Operand operand = Operand::k;
  unsigned dim = 0;       // D: D_qk for K, D_v for V (elements)
  unsigned box_rows = 0;  // keys per box: the family's block
  bool operator==(const TensorMapArg&) const = default;
};
std::string_view to_string(TensorMapArg::Operand);

/// One kernel launch of a plan.
struct Launch {
  std::string entry;                 // extern "C" __global__ name in the design's source
  unsigned grid[3] = {1, 1, 1};
  unsigned block[3] = {128, 1, 1};
  unsigned shared_bytes = 0;         // dynamic shared memory
  std::vector<TensorMapArg> tensor_maps;  // kernel arguments after SelectionParams (TMA variants)
  bool operator==(const Launch&) const = default;
};

/// Everything needed to run a variant on a shape: its launches, in order, all taking the same
/// SelectionParams, and the workspace they share.
struct LaunchPlan {
  std::vector<Launch> launches;
  std::uint64_t workspace_bytes = 0;
  bool operator==(const LaunchPlan&) const = default;
};

}  // namespace nsa::jit

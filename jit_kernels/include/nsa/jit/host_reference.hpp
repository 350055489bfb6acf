#pragma once
// The host reference of selection attention (../shared/spec/selection-attention.md), the
// half-precision conversions the checks need, and the error metrics every correctness check
// uses. Slow and obviously correct on purpose: it is the yardstick for every device kernel on
// small shapes (the device `reference` design takes over for large ones).

#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nsa/jit/kernel_variant.hpp"

namespace nsa::jit {

// Half-precision conversions --------------------------------------------------------------------

/// Exact widening.
float bf16_to_float(std::uint16_t bits);
float fp16_to_float(std::uint16_t bits);
/// Round to nearest, ties to even; NaN stays NaN (quiet), overflow becomes +-inf, fp16
/// subnormals are produced exactly.
std::uint16_t float_to_bf16(float value);
std::uint16_t float_to_fp16(float value);

float to_float(ElemType, std::uint16_t bits);
std::uint16_t from_float(ElemType, float value);
std::vector<std::uint16_t> encode(ElemType, std::span<const float> values);
std::vector<float> decode(ElemType, std::span<const std::uint16_t> bits);
/// A NaN of the dtype, for poisoning outputs: 0x7FC0 (bf16), 0x7E00 (fp16).
std::uint16_t nan_bits(ElemType);

// Shapes ------------------------------------------------------------------------------------------

/// A full problem: the family's compile-time constants and the run-time sizes.
struct SelectionShape {
  std::int64_t batch = 1, t_q = 1, t_kv = 1, h_kv = 1;
  int h = 1, d_qk = 64, d_v = 64, block = 64, n = 1;
  float scale = 0;  // 0 means 1/sqrt(d_qk)

  static SelectionShape from(const FamilySpec&, const RuntimeShape&);
  std::int64_t h_q() const { return h_kv * h; }
  float effective_scale() const;
  /// Element counts of each tensor of the spec.
  std::int64_t q_elems() const { return batch * t_q * h_q() * d_qk; }
  std::int64_t k_elems() const { return batch * t_kv * h_kv * d_qk; }
  std::int64_t v_elems() const { return batch * t_kv * h_kv * d_v; }
  std::int64_t idx_elems() const { return batch * h_kv * t_q * n; }
  std::int64_t o_elems() const { return batch * t_q * h_q() * d_v; }
  std::int64_t lse_elems() const { return batch * h_q() * t_q; }
  /// Key position of query row t: T_kv - T_q + t.
  std::int64_t position(std::int64_t t) const { return t_kv - t_q + t; }
  /// "B=2 Tq=5 Tkv=300 Hkv=2 h=4 dqk=64 dv=64 blk=64 n=4"
  std::string describe() const;
  /// nullopt when every size is positive, t_q <= t_kv and dims are sane; otherwise what is wrong.
  std::optional<std::string> validate() const;
};

// The reference ------------------------------------------------------------------------------------

enum class Accumulate { fp32, fp64 };

struct ReferenceOutput {
  std::vector<double> o;    // [B, T_q, H_q, D_v]
  std::vector<double> lse;  // [B, H_q, T_q]; -inf for rows without a visible key
};

/// Selection attention on the host, inputs already widened to float (use decode()). Follows the
/// spec literally: -1 slots skipped wherever they stand, indices in any order, keys visible iff
/// in a selected block, < T_kv and <= p(t); empty rows give O = 0 and LSE = -inf. Errors (as
/// text) for a bad shape, spans of the wrong size, or an index < -1 (which the spec forbids).
/// Duplicate valid indices are also rejected: the spec says valid entries are distinct.
std::expected<ReferenceOutput, std::string> selection_reference(
    const SelectionShape& shape, std::span<const float> q, std::span<const float> k,
    std::span<const float> v, std::span<const std::int32_t> block_idx,
    Accumulate accumulate = Accumulate::fp64);

// Error metrics ------------------------------------------------------------------------------------

struct ErrorStats {
  std::int64_t count = 0;      // elements compared
  std::int64_t nan_count = 0;  // NaN (or inf) in the result where the reference is finite
  double rel_l2 = 0;           // ||X - R|| / ||R|| over finite pairs (0 when ||R|| == 0 and X == R)
  double mean_abs = 0;
  double max_abs = 0;
  std::int64_t max_abs_index = -1;
  /// "rel_l2=1.2e-03 mean_abs=... max_abs=... at 17, 0 NaN of 4096"
  std::string describe() const;
};

/// Compares a result to the reference element by element. Sizes must match (else every element
/// counts as a NaN, so a check cannot pass by accident).
ErrorStats compare(std::span<const float> got, std::span<const double> reference);

/// LSE check: positions where the reference is -inf must be -inf in the result
/// (`inf_mismatches` counts those that are not, and finite references met by non-finite
/// results); elsewhere the absolute error.
struct LseStats {
  std::int64_t count = 0;
  std::int64_t inf_mismatches = 0;
  double max_abs = 0;
};
LseStats compare_lse(std::span<const float> got, std::span<const double> reference);

/// Counts output elements of empty rows (reference LSE = -inf) that are not exactly +0 or -0.
std::int64_t empty_row_violations(const SelectionShape& shape, std::span<const float> got_o,
                                  std::span<const double> reference_lse);

}  // namespace nsa::jit

#pragma once
// Pieces of nsa-bench-kernels that are not the main loop: shape specs, the useful work of a
// selection (bytes and flops), device-side random inputs, and the measured bandwidth ceiling.

#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nsa/jit/driver.hpp"
#include "nsa/jit/host_reference.hpp"
#include "nsa/jit/kernel_variant.hpp"
#include "nsa/jit/selection_patterns.hpp"

namespace nsa::bench {

struct ShapeSpec {
  std::string name;  // "decode", "prefill" or the spec text
  jit::SelectionShape shape;
  jit::ElemType dtype = jit::ElemType::bf16;
  /// Set by the shape key `pattern`: only this selection pattern is run for the shape, whatever
  /// --pattern says (so one run can time decode on random and prefill on both).
  std::optional<jit::SelectionPattern> pattern;
  jit::FamilySpec family() const;
  std::string describe() const;
};

/// The defaults: decode B=64, T_kv=32768, H_q=64, H_kv=4, D=128, block 64, n=16, bf16; and
/// prefill B=1, T_q=T_kv=8192 with the same heads and family.
ShapeSpec default_decode();
ShapeSpec default_prefill();

/// Parses "decode", "prefill", or comma-separated key=value pairs over a default decode shape:
/// b, tq, tkv, hq, hkv, h, d (sets dqk and dv), dqk, dv, block, n, dtype (bf16|fp16),
/// pattern (random|clustered: this shape runs only that pattern).
/// Example: "b=8,tq=1,tkv=65536,hq=64,hkv=4,d=128,dtype=fp16". H_q must be a multiple of H_kv.
std::expected<ShapeSpec, std::string> parse_shape(const std::string& text);

/// The work a perfect kernel must do, from the selection actually drawn:
///   visible_keys = sum over rows (b, g, t) of the keys of its valid blocks that are < T_kv and
///                  <= p(t) (a -1 slot or a block past p(t) counts nothing);
///   kv_bytes     = visible_keys * (D_qk + D_v) * sizeof(elem): each selected block's K and V
///                  bytes counted once per row group, i.e. once for the h heads of a (b, g, t)
///                  row that share the selection (GQA), and again for every other row selecting it;
///   flops        = 2 * h * visible_keys * (D_qk + D_v) (QK^T and PV), which for full selections
///                  is 4 * B * T_q * H_q * n * block * D when D_qk = D_v = D.
/// Prefill rows that share blocks make kv_bytes exceed what must cross HBM, so its bandwidth
/// figure can pass the measured ceiling for designs that reuse tiles.
struct UsefulWork {
  std::int64_t visible_keys = 0;
  double kv_bytes = 0;
  double flops = 0;
};
UsefulWork useful_work(const jit::SelectionShape& shape, std::span<const std::int32_t> block_idx);

/// Fills `count` dtype elements at `ptr` with standard normals from a counter-based generator
/// (seeded; NVRTC-compiled once per process for `arch`).
jit::DriverResult<void> fill_normal_on_device(CUdeviceptr ptr, std::uint64_t count, jit::ElemType dtype,
                                              std::uint64_t seed, const std::string& arch, const jit::Stream& stream);

/// Device-to-device copy bandwidth (bytes read + bytes written per second) of a copy of `bytes`:
/// the practical HBM ceiling. Median of `runs` after warm-up.
jit::DriverResult<double> measure_copy_bandwidth(std::size_t bytes, const jit::Stream& stream, int runs = 20);

/// L2 read bandwidth: every SM reads a `bytes` buffer (small enough to stay in L2) again and
/// again with 16-byte loads that bypass L1 (ld.global.cg), several in flight per thread; bytes
/// read per second, median of `runs` launches after warm-up launches that bring the buffer into
/// L2. The ceiling for kernels that stream the same K/V blocks from L2 (prefill).
jit::DriverResult<double> measure_l2_read_bandwidth(std::size_t bytes, const std::string& arch, int sm_count,
                                                    const jit::Stream& stream, int runs = 20);

/// The empty kernel that stands in for a selection kernel launch with `maps` tensor maps and a
/// compiled-in cluster width `cluster` (<= 1: none): the same parameters (SelectionParams by
/// value, then the maps, 64-byte aligned) and no body. Its source and entry name.
std::string empty_launch_source(int maps, int cluster);
std::string empty_launch_entry(int maps, int cluster);

/// The launch floor of `plan` on this device: every launch replaced by the empty kernel of its
/// parameters and cluster width (`cluster_widths[i]`, LoadedVariant::cluster_width) with the
/// same grid, block and dynamic shared memory, its tensor maps encoded from `params`, timed as
/// the variants are (an event pair around the plan, median of `runs` after `warmup`), in
/// microseconds: what the benchmark's timing of any kernel launched so cannot go below. The
/// timed launches are queued behind a spinning kernel, so that the pairs time the GPU's side of
/// the launch and not the host's cost of issuing it.
jit::DriverResult<double> measure_launch_floor_us(const jit::LaunchPlan& plan, std::span<const int> cluster_widths,
                                                  const SelectionParams& params, const std::string& arch,
                                                  const jit::Stream& stream, int runs = 20, int warmup = 3);

/// Compiles the benchmark's helper kernels (fill, L2 read, spin, the empty launches of 0 and 2
/// tensor maps, with and without a cluster) with NVRTC for `arch` without loading them (no GPU
/// needed): nullopt, or the first compile error with its log.
std::optional<std::string> helper_kernels_compile_error(const std::string& arch);

/// rel_l2 and the count of non-finite results (where the reference is finite, or not matching a
/// non-finite reference exactly) of dtype bits `got` against `ref`, as jit::compare computes
/// them, on `threads` threads (0: all cores): the check of a T=32768 prefill output (268M
/// elements) takes a fraction of a second instead of seconds.
struct Agreement {
  double rel_l2 = 0;
  std::int64_t nan_count = 0;
};
Agreement compare_bits(std::span<const std::uint16_t> got, jit::ElemType dtype, std::span<const double> ref,
                       unsigned threads = 0);

/// A variant as the tables name it: its design, then its knobs ("decode_stream tma1_split1_...").
std::string label_of(const jit::KernelVariant& v);

/// Median and the 10th/90th percentiles of `samples` (sorted in place).
struct Summary {
  double median = 0, p10 = 0, p90 = 0;
};
Summary summarize(std::vector<double>& samples);

}  // namespace nsa::bench

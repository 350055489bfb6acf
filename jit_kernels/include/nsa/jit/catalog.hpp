#pragma once
// The variant catalog: which kernel variants exist for a family on an arch, and how to launch
// one on a run-time shape. It is pure arithmetic (no GPU, no NVRTC): the tuner enumerates
// variants here, the compiler builds them, the driver layer launches them with plan_for().
//
// Designs and their knobs (docs/kernels.md, "Kernel designs", explains the algorithms):
//
//   design          knob    values (preferred first)   meaning
//   reference       -       -                 fp32, one CTA per (b, t, query head); 128 threads
//   sdpa_packed     warps   4, 8              warps of the dense attention kernel (the gather
//                                               kernel always has 256 threads)
//                   tile    64, 128, 32       packed keys per pipeline stage
//                   stages  3, 2, 4           cp.async pipeline depth
//   query_outer     warps   4, 8              CTA of one (b, g, t) row: warps split the key
//                   tile    64, 128, 32         columns of each tile (and the h rows when h > 16)
//                   stages  3, 2, 4           cp.async pipeline depth
//                   evict   0, 1              1: K/V copies carry the L2 evict-first hint
//                                               (decode); 0: plain (prefill re-reads blocks)
//   split_kv        split   8, 16, 4, 32, 2   CTAs per (b, g, t) row, each a contiguous share of
//                                               the row's tiles, merged in the same launch; at
//                                               most the tiles of a full row (n*block keys)
//                   warps   4, 2, 8           (2 warps allow 32-key tiles when h <= 16; 8 warps
//                   tile    64, 32, 128         with 128-key tiles shorten a lone CTA's chain)
//                   stages  3, 2, 4           (K/V copies always evict-first); 3 and 4 only
//                                               when a CTA's share has stages-1 tiles
//                   cluster 1, 0              1: the row's CTAs form a thread-block cluster and
//                                               merge through distributed shared memory (sm_90+,
//                                               split <= 8); 0: a global workspace, merged by
//                                               the row's last CTA to arrive
//   prefill_shared  qtile   4, 2, 8, 1        consecutive query rows per CTA (qtile*h <= 128):
//                                               the union of their selected blocks is loaded once
//                   warps   4, 8
//                   tile    64, 128, 32
//                   stages  2, 3
//   prefill_stream  tma     1, 0              1: one thread copies each block with the tensor
//                                               memory accelerator into 128-byte-swizzled slots
//                                               (sm_90+, D_qk and D_v multiples of 64, one
//                                               producer warp, warps <= 12); 0: cp.async
//                   warps   12, 16, 8, 4      register class (16: 128 registers, 12: 168, 8 and 4:
//                                               255); warps - producers consecutive queries per
//                                               CTA, one consumer warp each (h <= 16); producers
//                                               stream the union of their blocks through a ring,
//                                               consumers compute only their query's blocks
//                   producers 2, 4, 1         loading warps
//                   stages  5, 4, 3, 2        ring depth in whole blocks
//                   persist 0, 1              1 (tma = 1, where two CTAs share an SM): persistent
//                                               CTAs, one grid of what the SMs hold, the next
//                                               tile's union built while this one streams
//   decode_stream   tma     1, 0              as prefill_stream's (one producer warp when 1)
//                   split   1, 4, 2           CTAs per (b, g, t) row, each a contiguous share of
//                                               its visible blocks; > 1: the row's CTAs are one
//                                               cluster merging through distributed shared
//                                               memory (sm_90+); at most n
//                   consumers 4, 2, 6         warps computing whole blocks (h <= 16), a block each
//                   producers 2, 1            warps streaming the share's blocks through a ring
//                                               (consumers + producers <= 8; 1 only with tma = 1)
//                   stages  4, 3, 2, 5        ring depth in whole blocks; > 2 only up to a CTA's
//                                               share of a full row
//   prefill_group   warps   5, 9              prefill_stream (tma 1, one producer warp) whose
//                                               warps - 1 consumers form warpgroups of four
//                                               queries computing each block together with wgmma
//                                               (sm_90 only, compiled for sm_90a; block 64,
//                                               D_qk a multiple of 64, D_v 64 or 128, h <= 16);
//                                               5: two CTAs per SM (stages 2), 9: one
//                   stages  2, 5, 4, 3        ring depth in whole blocks
//                   persist 0, 1              as prefill_stream's (warps 5 only)
//
// A setting is offered only when it is valid for the family: every warp owns a multiple of 16
// key columns of a tile and at most two 16-row MMA tiles, the accumulators fit the register
// budget (no spills), and the dynamic shared memory fits the arch (sm_90 227 KiB, sm_80 163 KiB,
// sm_86/sm_89 99 KiB, unknown archs 48 KiB). Tensor-core designs need sm_80 or newer.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nsa/jit/kernel_variant.hpp"

namespace nsa::jit {

/// The .cu file of a design in the embedded source table ("query_outer.cu").
std::string_view source_for(Design);

/// Every design, in a fixed order (reference first, then the baseline, then the sparse ones).
const std::vector<Design>& all_designs();
/// The names of all_designs() (only the sparse ones with `sparse_only`), comma-separated, for
/// messages that list the choices.
std::string design_names(bool sparse_only = false);

/// nullopt when every design can run `spec`; otherwise why not, in words a person can act on
/// ("D_qk=100 is not a multiple of 16: the MMA k-step is 16 elements; use the sdpa fallback").
/// Bounds: D_qk and D_v multiples of 16 in [16, 256], h in [1, 64], block a power of two in
/// [16, 256], n in [1, 128].
std::optional<std::string> unsupported_reason(const FamilySpec&);

/// Largest dynamic shared memory one CTA may use on `arch` ("sm_90" -> 227 KiB). Unknown archs
/// get the 48 KiB every CUDA device supports.
int max_dynamic_shared_bytes(const std::string& arch);

/// Every valid knob setting of `design` for `spec` on `arch`, in a fixed order (the design's
/// default first). Empty when the spec is unsupported (see unsupported_reason) or no setting
/// fits the arch's shared memory.
std::vector<KernelVariant> variants_for(const FamilySpec&, const std::string& arch, Design);

/// variants_for() of every design, reference and sdpa_packed included, concatenated.
std::vector<KernelVariant> all_variants(const FamilySpec&, const std::string& arch);

/// The design's default setting for `spec` on `arch`: the first entry of variants_for(), or
/// (when nothing fits) the design's nominal knobs, which a compile or launch will then reject.
KernelVariant default_variant(Design, const FamilySpec&, const std::string& arch);

/// The launches (entries, grids, blocks, dynamic shared memory, tensor maps) and the workspace a
/// variant needs for `shape`. Grids are capped at 2^31-1 CTAs (kernels loop over the rest); a
/// persistent variant's grid is shape.sm_count times the CTAs one SM holds (when sm_count > 0). Throws
/// std::invalid_argument for a variant whose knobs are not a valid setting (unknown knob value,
/// a setting variants_for would not offer for its spec) or a non-positive shape.
LaunchPlan plan_for(const KernelVariant&, const RuntimeShape&);

/// Dynamic shared memory of the variant's largest launch (independent of the run-time shape).
unsigned shared_bytes_for(const KernelVariant&);

}  // namespace nsa::jit

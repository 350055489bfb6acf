// Shared-memory and workspace layouts of every design, written once for both sides: the kernels
// carve their dynamic shared memory and workspace with these functions, and the host catalog
// (jit_kernels/catalog.cpp includes this file) reserves exactly the bytes they carve. Plain
// constexpr C++ with no CUDA or standard headers, so g++ and NVRTC both compile it.
//
// The MMA designs share one CTA engine (attention_core.cuh) whose shared memory is
//
//   [ design extras | Q tile | STAGES x (K tile, V tile) ]      during the key loop
//   [ design extras | merge buffer (fp32 O, m, l per warp column group)         ]  at the end
//
// Rows of bf16/fp16 tiles are padded by 8 elements (16 bytes) so that the 8 row addresses of an
// ldmatrix phase fall into 8 different 4-bank groups: a row of D elements is D/2 + 4 words, an
// odd multiple of 4 words when D is a multiple of 16, hence conflict-free for every supported D.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define NSA_HD __host__ __device__
#else
#define NSA_HD
#endif

namespace nsa_layout {

constexpr int kPad = 8;            // elements of padding per bf16/fp16 smem row
constexpr int kMaxRows = 128;      // largest M (query rows x heads) of one CTA
constexpr int kMaxSplit = 32;      // largest split of split_kv (the merging CTA holds every split's m in registers)

NSA_HD constexpr long long round_up(long long x, long long m) { return (x + m - 1) / m * m; }
NSA_HD constexpr int min_i(int a, int b) { return a < b ? a : b; }
NSA_HD constexpr long long max_ll(long long a, long long b) { return a > b ? a : b; }

/// 16-row MMA tiles for `rows` rows, rounded up to a power of two so warps can split them evenly.
NSA_HD constexpr int m_tiles(int rows) {
  int mt = (rows + 15) / 16;
  int p = 1;
  while (p < mt) p *= 2;
  return p;
}
NSA_HD constexpr int log2_exact(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}
NSA_HD constexpr int pow2_at_least(int x) { return 1 << log2_exact(x); }

/// Warp arrangement of the engine: WM warps along M (each owning MT/WM tiles of 16 rows), WN
/// along the key columns of a tile (each owning TILE/WN columns).
NSA_HD constexpr int warps_m(int mt, int warps) { return min_i(mt, warps); }
NSA_HD constexpr int warps_n(int mt, int warps) { return warps / warps_m(mt, warps); }

/// Whether the engine can run this arrangement: every warp owns a multiple of 16 key columns
/// (one P.V k-step) and at most two 16-row tiles (register budget).
NSA_HD constexpr bool core_valid(int mt, int warps, int tile) {
  return mt >= 1 && warps >= 1 && warps <= 16 && mt % warps_m(mt, warps) == 0 &&
         warps % warps_m(mt, warps) == 0 && mt / warps_m(mt, warps) <= 2 &&
         tile % (16 * warps_n(mt, warps)) == 0 && tile >= 16;
}

NSA_HD constexpr long long q_tile_bytes(int dqk, int mt) { return (long long)mt * 16 * (dqk + kPad) * 2; }
NSA_HD constexpr long long kv_stage_bytes(int dqk, int dv, int tile) {
  return (long long)tile * ((dqk + kPad) + (dv + kPad)) * 2;
}
/// fp32 partial O (row stride DV + 8 floats), then m and l, for each of WN column groups.
NSA_HD constexpr long long merge_o_floats(int dv, int mt, int warps) {
  return (long long)warps_n(mt, warps) * mt * 16 * (dv + kPad);
}
NSA_HD constexpr long long merge_bytes(int dv, int mt, int warps) {
  return merge_o_floats(dv, mt, warps) * 4 + (long long)warps_n(mt, warps) * mt * 16 * 2 * 4;
}
/// The engine's region (after the design extras).
NSA_HD constexpr long long core_bytes(int dqk, int dv, int mt, int warps, int tile, int stages) {
  return max_ll(q_tile_bytes(dqk, mt) + stages * kv_stage_bytes(dqk, dv, tile), merge_bytes(dv, mt, warps));
}

// Design extras (before the engine region, rounded to 128 bytes) -----------------------------

/// query_outer / split_kv: the row's compacted block list (n ints) and 4 scalars.
NSA_HD constexpr long long row_list_bytes(int n) { return round_up((long long)(n + 4) * 4, 128); }
/// prefill_shared: the sort buffer (pow2 >= qtile*n ints), the union list and the per-block
/// query masks (qtile*n each), and 4 scalars.
NSA_HD constexpr int union_sort_size(int qtile, int n) { return pow2_at_least(qtile * n); }
NSA_HD constexpr long long union_bytes(int qtile, int n) {
  return round_up((long long)(union_sort_size(qtile, n) + 2 * qtile * n + 4) * 4, 128);
}

NSA_HD constexpr long long query_outer_smem(int dqk, int dv, int h, int n, int warps, int tile, int stages) {
  return row_list_bytes(n) + core_bytes(dqk, dv, m_tiles(h), warps, tile, stages);
}
/// split_kv with cluster = 1: the CTA's partial result stays in its own shared memory for the
/// cluster's merge: O [h][D_v], m [h], l [h] (fp32), after the row list and before the engine.
NSA_HD constexpr long long split_partial_bytes(int h, int dv) { return round_up((long long)h * (dv + 2) * 4, 128); }
NSA_HD constexpr long long split_kv_smem(int dqk, int dv, int h, int n, int warps, int tile, int stages, int cluster) {
  return query_outer_smem(dqk, dv, h, n, warps, tile, stages) + (cluster != 0 ? split_partial_bytes(h, dv) : 0);
}
NSA_HD constexpr long long packed_attention_smem(int dqk, int dv, int h, int warps, int tile, int stages) {
  return core_bytes(dqk, dv, m_tiles(h), warps, tile, stages);
}
NSA_HD constexpr long long prefill_shared_smem(int dqk, int dv, int h, int n, int qtile, int warps, int tile,
                                               int stages) {
  return union_bytes(qtile, n) + core_bytes(dqk, dv, m_tiles(qtile * h), warps, tile, stages);
}
/// prefill_stream's register plan. Its `warps` warps are spread over the SM's four schedulers,
/// each with 16384 registers, so a thread may have 255 registers up to 8 warps, 168 up to 12 and
/// 128 up to 16. A consumer's Q fragments stay in registers up to 8 warps only, and its compute
/// step (the S accumulator, step / 2 registers) shrinks from 64 keys to 32 and 16.
NSA_HD constexpr int stream_register_budget(int warps) {
  return min_i(255, 16384 / (32 * ((warps + 3) / 4)) / 8 * 8);
}
NSA_HD constexpr bool stream_q_in_registers(int warps) { return warps <= 8; }
NSA_HD constexpr int stream_chunk(int warps, int block) {
  return min_i(block, warps <= 8 ? 64 : (warps <= 12 ? 32 : 16));
}
/// decode_stream's compute step: `share` consumers compute a block together, each its
/// block / share keys, in steps of at most stream_chunk's.
NSA_HD constexpr int decode_stream_step(int warps, int block, int share) {
  return min_i(stream_chunk(warps, block), block / share);
}
/// A ring slot of the streaming designs holds one whole block of K and V: padded rows when
/// cp.async fills it, the TMA's unpadded 128-byte-swizzled panels when it does (tma = 1), whose
/// ring starts at the next multiple of kTmaAlign bytes (the kernel aligns it at run time, so the
/// layout reserves that much more).
constexpr int kTmaAlign = 1024;
/// An sm_90 SM's shared memory, and what the hardware reserves of it per resident CTA: the
/// count of CTAs that fit an SM (the catalog's resident_ctas_per_sm, prefill_group_q_tiles).
constexpr long long kSmemPerSm = 228 * 1024;
constexpr long long kSmemReservedPerCta = 1024;
NSA_HD constexpr long long ring_slot_bytes(int dqk, int dv, int block, int tma) {
  return tma ? (long long)block * (dqk + dv) * 2 : kv_stage_bytes(dqk, dv, block);
}
NSA_HD constexpr long long ring_bytes(int dqk, int dv, int block, int stages, int tma) {
  return (tma ? kTmaAlign : 0) + stages * ring_slot_bytes(dqk, dv, block, tma);
}
/// prefill_stream: the union of qtile = warps - producers queries (as prefill_shared; two with
/// tma = 1, whose producer warp builds the next tile's while the consumers work on this one's),
/// 2 * stages mbarriers (8 bytes each; two more with tma = 1, one per union buffer), each consumer
/// warp's 16 Q rows, then the ring of `stages` whole blocks of K and V.
NSA_HD constexpr long long stream_barrier_bytes(int stages) { return round_up((long long)stages * 2 * 8, 128); }
NSA_HD constexpr long long prefill_stream_barrier_bytes(int stages, int tma) {
  return round_up((long long)(stages * 2 + (tma ? 2 : 0)) * 8, 128);
}
NSA_HD constexpr long long prefill_stream_smem(int dqk, int dv, int n, int block, int warps, int producers,
                                               int stages, int tma) {
  return (tma ? 2 : 1) * union_bytes(warps - producers, n) + prefill_stream_barrier_bytes(stages, tma) +
         (warps - producers) * q_tile_bytes(dqk, 1) + ring_bytes(dqk, dv, block, stages, tma);
}
/// prefill_group: prefill_stream's two unions, its barriers (tma = 1), a full and an empty
/// barrier per stage more (a slot's K and V are handed over apart) and two `freed` barriers (a
/// union buffer's readers are done with it), the TMA ring, and after it each consumer
/// warpgroup's Q tile of 64 unpadded rows (4 queries x 16; swizzled panels), or two of them
/// (prefill_group_q_tiles).
NSA_HD constexpr long long prefill_group_barrier_bytes(int stages) { return round_up((long long)(stages * 4 + 4) * 8, 128); }
NSA_HD constexpr long long prefill_group_smem_with(int dqk, int dv, int n, int block, int warps, int stages,
                                                   int q_tiles) {
  return 2 * union_bytes(warps - 1, n) + prefill_group_barrier_bytes(stages) + ring_bytes(dqk, dv, block, stages, 1) +
         (long long)q_tiles * (warps - 1) * 16 * dqk * 2;
}
/// CTAs of prefill_group an SM runs: two of one group (warps = 5), one of two groups (warps = 9).
NSA_HD constexpr int prefill_group_ctas_per_sm(int warps) { return warps <= 5 ? 2 : 1; }
/// Q tiles per consumer warpgroup: with persist = 1 two, so that a tile's Q is copied while the
/// group computes the previous tile, where prefill_group_ctas_per_sm CTAs still fit an SM with
/// them (228 KiB, 1 KiB reserved a CTA: with 5 warps D_qk = 128 at 2 stages, not the paper
/// config's 192; with 9 warps up to 4 stages at D_qk = 128); else one.
NSA_HD constexpr int prefill_group_q_tiles(int dqk, int dv, int n, int block, int warps, int stages, int persist) {
  return persist != 0 && prefill_group_ctas_per_sm(warps) *
                                 (prefill_group_smem_with(dqk, dv, n, block, warps, stages, 2) + kSmemReservedPerCta) <=
                             kSmemPerSm
             ? 2
             : 1;
}
NSA_HD constexpr long long prefill_group_smem(int dqk, int dv, int n, int block, int warps, int stages, int persist) {
  return prefill_group_smem_with(dqk, dv, n, block, warps, stages,
                                 prefill_group_q_tiles(dqk, dv, n, block, warps, stages, persist));
}
/// decode_stream: the row list, 2 * stages mbarriers, the CTA's split partial (split > 1, for the
/// cluster merge), the row's 16 Q rows, then the ring of `stages` whole blocks of K and V (from
/// the next multiple of kTmaAlign when tma = 1), which the consumers' merge buffer (fp32 O rows
/// of stride D_v + 8, then m and l, per consumer) overlays at the end.
NSA_HD constexpr long long decode_stream_merge_bytes(int dv, int consumers) {
  return (long long)consumers * 16 * ((dv + kPad) + 2) * 4;
}
NSA_HD constexpr long long decode_stream_smem(int dqk, int dv, int h, int n, int block, int consumers, int stages,
                                              int split, int tma) {
  return row_list_bytes(n) + stream_barrier_bytes(stages) + (split > 1 ? split_partial_bytes(h, dv) : 0) +
         q_tile_bytes(dqk, 1) +
         (tma ? kTmaAlign : 0) +
         max_ll(stages * ring_slot_bytes(dqk, dv, block, tma), decode_stream_merge_bytes(dv, consumers));
}
/// reference: q (fp32), one score per thread of a 128-key chunk, 32 reduction slots.
constexpr int kReferenceThreads = 128;
NSA_HD constexpr long long reference_smem(int dqk) { return (long long)(dqk + kReferenceThreads + 32) * 4; }
/// sdpa_packed gather: per slot its block, visible count and packed offset.
constexpr int kGatherThreads = 256;
NSA_HD constexpr long long gather_smem(int n) { return (long long)n * 3 * 4; }

// Workspaces ----------------------------------------------------------------------------------
// Rows are (b, g, t) triples numbered ((b * H_kv + g) * T_q + t), the order of block_idx.

/// sdpa_packed: K_p [rows][n*block][D_qk], V_p [rows][n*block][D_v] (dtype), len [rows] (int32).
NSA_HD constexpr long long packed_k_offset() { return 0; }
NSA_HD constexpr long long packed_v_offset(long long rows, int dqk, int block, int n) {
  return rows * n * block * dqk * 2;
}
NSA_HD constexpr long long packed_len_offset(long long rows, int dqk, int dv, int block, int n) {
  return rows * n * block * (long long)(dqk + dv) * 2;
}
NSA_HD constexpr long long packed_workspace_bytes(long long rows, int dqk, int dv, int block, int n) {
  return packed_len_offset(rows, dqk, dv, block, n) + round_up(rows * 4, 256);
}

/// split_kv: partial O [rows][split][h][D_v] (fp32, relative to m), m and l [rows][split][h],
/// then two 64-bit arrival words per row: the counters [rows] (fetch-and-add, tagged with the
/// launch) and the fallback words [rows] (compare-and-swap, used only when a counter held
/// garbage). See split_kv.cu: any initial contents are fine, and every complete launch leaves
/// each counter 0.
NSA_HD constexpr long long split_m_offset(long long rows, int split, int h, int dv) {
  return rows * split * h * (long long)dv * 4;
}
NSA_HD constexpr long long split_l_offset(long long rows, int split, int h, int dv) {
  return split_m_offset(rows, split, h, dv) + rows * split * h * 4;
}
NSA_HD constexpr long long split_counter_offset(long long rows, int split, int h, int dv) {
  return round_up(split_l_offset(rows, split, h, dv) + rows * split * h * 4, 256);  // 8-byte aligned
}
NSA_HD constexpr long long split_fallback_offset(long long rows, int split, int h, int dv) {
  return split_counter_offset(rows, split, h, dv) + rows * 8;
}
NSA_HD constexpr long long split_workspace_bytes(long long rows, int split, int h, int dv) {
  return split_counter_offset(rows, split, h, dv) + round_up(rows * 16, 256);
}

}  // namespace nsa_layout

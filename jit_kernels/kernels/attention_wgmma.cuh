// The warpgroup engine of prefill_group: four consumer warps, one query each, compute a ring
// block for all four queries at once with wgmma (sm_90a), M = 64 = 4 queries x 16 heads.
//
// Why. In prefill_stream each consumer warp computes its own query's blocks with mma.sync: per
// 64-key block ~700 SASS instructions a warp (ldmatrix of K and V, 128 MMAs, the softmax). With
// the clustered pattern (neighbouring queries selecting nearly the same blocks) a tile's union is
// small and the copies are not what bounds it (on the H200 the random pattern's ncu showed its
// consumers latency-bound already: 34% of issue slots busy, 0.5 eligible warps per scheduler;
// docs/performance.md v8). A wgmma reads K and V straight from the swizzled ring, so a block
// costs a warp 8 + 4 MMA instructions instead of 128 MMAs and 32 ldmatrix, at the warpgroup
// instruction's rate, and the block's bytes are read from shared memory once for four queries.
// The price: the four queries compute every block that any of them selected (a query that did
// not select it contributes nothing, exactly: P = 0), so the design pays where queries share
// blocks and loses where they do not; the tuner decides per shape and pattern.
//
// Measured on the H200 (docs/performance.md, v10-v12): at T = 32768 clustered 1.3x faster than
// prefill_stream's best (paper config 1.36x in v11). The best setting is one group per CTA, two CTAs
// per SM; a group's chain (S, wait, softmax, P V, wait) took ~2700 cycles a block, ~5x its
// tensor-core time. So a one-group CTA now runs a block's softmax while the previous block's
// P V runs (prefill_stream.cu, consume): 1.04-1.06x. That needs the ring's K and V handed over
// apart: with a slot released only after its P V, both slots of the two-stage ring were held
// through the softmax and the overlap was 15-20% slower (v11, commit cc88c4a). The engine's
// steps are therefore separate calls (issue_s, softmax, pack_p, issue_pv, o_settled), which the
// design orders; no wgmma may stay in flight across a branch ptxas cannot prove uniform (it
// then serializes every wgmma: C7518, as v10's first overlap did).
//
// Work of one block (ring slot `slot`, this warp's query sees its first `vis` keys, 0 when it
// did not select the block):
//   S = Q K^T     DQK / 16 wgmma m64n64k16, A = the group's Q tile, B = the slot's K, both from
//                 shared memory (K-major descriptors); committed and waited for, then the
//                 slot's K may be released.
//   softmax       per warp on its own 16 rows, in registers: the mma.sync engine's online update
//                 (attention_core.cuh, online_softmax_p, then rescale_o once the previous
//                 block's P V is retired) after masking keys >= vis; a warp whose query did
//                 not select the block sets P = 0 and leaves m, l, O alone.
//   O += P V      BLK / 16 wgmma m64n{DV}k16, A = P from registers (the k16 A fragments of the
//                 scores, p_fragment), B = the slot's V (MN-major descriptor); waited for before
//                 the slot's V is released and before O is rescaled again.
// The four warps execute every wgmma together (the instruction is warpgroup-wide): a group
// computes a block when any of its queries selected it, and passes it otherwise, both decided
// from the union's mask alone, so uniform across the group.
//
// Shared memory. The ring slots are the TMA's: K as D_qk / 64 panels of [BLK][64] elements, V
// as D_v / 64 panels, 128-byte rows, 128-byte swizzle, 1024-byte aligned (attention_core.cuh,
// "Swizzled rings"). The group's Q tile is laid out the same way by this engine's own cp.async
// copies: D_qk / 64 panels of [64 rows][64], row 16 w + r = head r of the group's warp w (rows
// r >= h zero-filled), the 16-byte chunk c of a row at chunk c ^ (row % 8).
//
// Numerics are the other designs': scores scaled into the log2 domain, online softmax in fp32,
// P rounded to the input dtype for P V, O normalised once at the end.
#pragma once

#include "attention_core.cuh"

/// UNIFORM_DESCRIPTORS: the caller makes the descriptors' sources warp-uniform as ptxas sees
/// them (one group: prefill_stream.cu's consume), so they live in uniform registers; else they
/// are per-lane values, and Q's are re-read for every block rather than held (see issue_s).
template <bool UNIFORM_DESCRIPTORS>
struct GroupCore {
  static constexpr int PANEL_ROWS_BYTES = 128;         // one row of a 64-element panel
  static constexpr int K_PANEL = BLK * 128;            // bytes of one panel of a ring slot's operand
  static constexpr int Q_PANEL = 64 * 128;             // bytes of one panel of the group's Q tile
  static constexpr int K_SLOT_BYTES = BLK * DQK * 2;
  static constexpr int V_SLOT_BYTES = BLK * DV * 2;
  static constexpr int Q_GROUP_BYTES = 64 * DQK * 2;  // the group's Q tile
  static_assert(BLK == 64, "the warpgroup engine computes a block's scores as one m64n64 product: block 64");
  static_assert(DQK % 64 == 0 && DV % 64 == 0 && DV <= 128,
                "the warpgroup engine reads 64-element panels and holds O of at most 128 columns");
  static_assert(H <= 16, "the warpgroup engine gives each query 16 rows of the M = 64 tile");

  // The mma.sync engine's accumulator shapes (one 16-row tile), so that the designs' store and
  // merge code reads either engine.
  float o[1][DV / 8][4];
  float m_run[1][2];
  float l_run[1][2];
  u32 q_group;  // shared address of the group's Q tile (the one the wgmmas read)
  // The low words of the wgmma descriptors of the Q tile and of ring slot 0's K and V (slot s at
  // + s * K_SLOT_BYTES / 16, likewise V): a step's descriptor is one of them plus a constant, so
  // that a block's 12 wgmmas cost an add each in descriptor arithmetic (building each from its
  // address was ~80 instructions a block, between the ring's wait and the first wgmma).
  u32 q_desc, k_desc, v_desc;
  static constexpr u32 DESC_HI = wgmma_desc_hi(1024);  // every operand here: sbo 1024, 128-byte swizzle
  int lane;
  int wq;       // this warp's index in its group (its rows are 16 wq .. 16 wq + 15)

  __device__ __forceinline__ void init(u32 q_group_addr, u32 k_ring_addr, u32 v_ring_addr) {
    q_group = q_group_addr;
    q_desc = wgmma_desc_lo(q_group_addr, 16);
    k_desc = wgmma_desc_lo(k_ring_addr, 16);
    v_desc = wgmma_desc_lo(v_ring_addr, K_PANEL);
    lane = threadIdx.x & 31;
    wq = (threadIdx.x >> 5) & 3;
  }

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[0][dt][e] = 0.f;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      m_run[0][hf] = NSA_NEG_INF;
      l_run[0][hf] = 0.f;
    }
  }

  /// The group's Q tile is at `q_group_addr` from now on (prefill_group's persistent loop
  /// alternates two tiles, the next one copied while this one is read).
  __device__ __forceinline__ void use_q_tile(u32 q_group_addr) {
    q_group = q_group_addr;
    q_desc = wgmma_desc_lo(q_group_addr, 16);
  }

  /// Issues this warp's copies of its 16 rows of a Q tile at `tile` (the group's, by default);
  /// `row_ptr(r)` is head r's D_qk elements, or nullptr for a padding row (zero-filled). Joins
  /// the caller's next commit group. Before a wgmma reads the tile every warp of the group must
  /// have waited for its copies and made them visible to the async proxy (q_landed).
  template <class RowPtr>
  __device__ __forceinline__ void load_q_async(RowPtr row_ptr) const {
    load_q_async(row_ptr, q_group);
  }
  template <class RowPtr>
  __device__ __forceinline__ void load_q_async(RowPtr row_ptr, u32 tile) const {
    constexpr int CH = DQK / 8;
    const elem_t* any_row = row_ptr(0);
#pragma unroll
    for (int i = lane; i < 16 * CH; i += 32) {
      const int r = i / CH, ch = i % CH;
      const int row = wq * 16 + r;
      const u32 dst = tile + (u32)((ch >> 3) * Q_PANEL + row * PANEL_ROWS_BYTES + (((ch & 7) ^ (row & 7)) << 4));
      const elem_t* src = row_ptr(r);
      cp_async_16(dst, src != nullptr ? src + ch * 8 : any_row, src != nullptr);
    }
  }

  /// This thread's Q copies have landed and are visible to wgmma (the async proxy). The caller
  /// then synchronises the group's 128 threads before the first wgmma reads the tile.
  __device__ __forceinline__ void q_landed() const {
    cp_async_wait<0>();
    fence_proxy_async_shared();
  }

  using Scores = float[BLK / 8][4];  // this thread's S (then P) of its warp's 16 rows of a block
  using PFrag = u32[BLK / 16][4];     // P as the A fragments of P V's BLK / 16 k16 steps

  /// Issues S = Q K^T of the block in ring slot `slot` into `s` and commits it: k16 step ks is
  /// 32 bytes into the rows of panel ks / 4. `s` is in flight until the group is waited for.
  __device__ __forceinline__ void issue_s(Scores& s, int slot) const {
    const u32 k_slot = k_desc + (u32)(slot * (K_SLOT_BYTES >> 4));
    // With UNIFORM_DESCRIPTORS every descriptor here is the warp's (q_desc, k_desc and v_desc
    // made so by the caller: consume's warp_uniform, init's constant addresses; the slot from a
    // uniform count), so ptxas builds them in uniform registers, an add each; built per lane,
    // each HGMMA costs four R2UR (docs/performance.md v16). Per lane, Q's loop-invariant
    // descriptors held across the loop would take 16 registers, which the overlapped consume
    // has not got (ptxas hoisted them and spilled them): then they are rebuilt here.
    u32 q_lo = q_desc;
    if constexpr (!UNIFORM_DESCRIPTORS) asm volatile("mov.b32 %0, %1;" : "=r"(q_lo) : "r"(q_desc));
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < DQK / 16; ++ks) {
      const u32 off = (u32)(((ks >> 2) * Q_PANEL + (ks & 3) * 32) >> 4);
      const u32 koff = (u32)(((ks >> 2) * K_PANEL + (ks & 3) * 32) >> 4);
      wgmma_m64n64k16_ss(s, wgmma_desc_of(q_lo + off, DESC_HI), wgmma_desc_of(k_slot + koff, DESC_HI),
                         ks > 0);
    }
    wgmma_commit();
  }

  /// Once issue_s's group is retired: this warp's P in `s` (its query sees the first `vis` keys;
  /// 0: P = 0), m and l updated, and `alpha` the factor O is to be rescaled by (pack_p). Touches
  /// neither O nor a P V's fragments, so a P V may be in flight meanwhile.
  __device__ __forceinline__ void softmax(Scores& s, int vis, float scale_log2, float (&alpha)[2]) {
#pragma unroll
    for (int j = 0; j < BLK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) wgmma_fence_operand(s[j][e]);
    if (vis > 0) {
      if (vis < BLK) {
        const int c2 = (lane & 3) * 2;
#pragma unroll
        for (int j = 0; j < BLK / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (j * 8 + c2 + (e & 1) >= vis) s[j][e] = NSA_NEG_INF;
      }
      // The scale folds into the step's fma where it keeps the max (a positive scale, the
      // usual 1/sqrt(D) one); any other finite scale is applied first.
      if (scale_log2 > 0.f) {
        online_softmax_p<BLK / 8, true>(s, m_run[0], l_run[0], alpha, scale_log2);
      } else {
#pragma unroll
        for (int j = 0; j < BLK / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] = s[j][e] == NSA_NEG_INF ? NSA_NEG_INF : s[j][e] * scale_log2;
        online_softmax_p(s, m_run[0], l_run[0], alpha);
      }
    } else {
#pragma unroll
      for (int j = 0; j < BLK / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
      alpha[0] = alpha[1] = 1.f;
    }
  }

  /// O rescaled by `alpha` (when `rescale`: the warp's query saw the block) and P packed into
  /// `pa`. No P V may be in flight: it accumulates into O.
  __device__ __forceinline__ void pack_p(const Scores& s, const float (&alpha)[2], bool rescale, PFrag& pa) {
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) wgmma_fence_operand(o[0][dt][e]);
    if (rescale) rescale_o(o[0], alpha);
#pragma unroll
    for (int kc = 0; kc < BLK / 16; ++kc) p_fragment(pa[kc], s, kc);
  }

  /// Issues O += P V of the block in ring slot `slot` from `pa` and commits it: k16 step kc is 16
  /// V rows (2048 bytes) into the slot; N runs over the D_v / 64 panels, K_PANEL apart. O and
  /// `pa` are in flight until the group is waited for (then o_settled).
  __device__ __forceinline__ void issue_pv(const PFrag& pa, int slot) {
    const u32 v_slot = v_desc + (u32)(slot * (V_SLOT_BYTES >> 4));
    wgmma_fence();
#pragma unroll
    for (int kc = 0; kc < BLK / 16; ++kc)
      wgmma_m64nNk16_rs(o[0], pa[kc], wgmma_desc_of(v_slot + (u32)((kc * 16 * PANEL_ROWS_BYTES) >> 4), DESC_HI));
    wgmma_commit();
  }

  /// After issue_pv's group is retired: O is settled for the compiler too.
  __device__ __forceinline__ void o_settled() {
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) wgmma_fence_operand(o[0][dt][e]);
  }
};

// The tensor-core attention engine shared by sdpa_packed, query_outer, split_kv and
// prefill_shared. A design hands it M query rows (Q rows in shared memory) and a sequence of key
// tiles; the engine runs a cp.async pipeline over the tiles, computes S = Q K^T and O += P V with
// mma.sync, keeps the online-softmax statistics in fp32 registers, and merges the warps' partial
// results through shared memory at the end. What differs between designs is only where a tile's
// key rows come from (a functor mapping a tile row to a key row, or -1 for "zero-fill") and
// which (row, key) pairs are masked (a functor giving the valid prefix of a 16-key chunk).
//
// Warps. The M rows form MT tiles of 16 (MT a power of two); the WARPS warps form a WM x WN
// grid: warp w owns row tiles [(w % WM) * MTW, +MTW) and key columns [(w / WM) * TKW, +TKW) of
// every tile, with MTW = MT / WM <= 2 and TKW = TILE / WN a multiple of 16. Each warp keeps its
// own (m, l, O) over its columns; finish() merges the WN column groups of a row.
//
// A worked example, h = 16 and TILE = 64 with 4 warps: MT = 1, WM = 1, WN = 4, so each warp
// owns all 16 rows and 16 keys of each tile. Per tile it issues D_qk/16 ldmatrix.x4 of K and
// 2 * D_qk/16 MMAs for its 16x16 block of S, masks and exponentiates S in registers, packs P
// to bf16 in place (the S accumulator of keys 0-7 and 8-15 is exactly the A fragment of a
// k16 MMA), and issues D_v/16 ldmatrix.x4.trans of V and D_v/8 MMAs for O (16 x D_v).
//
// Softmax. Scores are scaled by scale * log2(e) so exp2 (ex2.approx) does the exponentials.
// (The warpgroup engine folds a positive scale into the exponent's fma; here that was 5% slower
// for prefill_stream's 12-warp setting on the H200, docs/performance.md v12, so S is scaled.)
// A fully masked row keeps m = -inf; the exponent base is then taken as 0 instead of m, so no
// (-inf) - (-inf) = NaN ever appears, and l stays 0: the design writes O = 0, LSE = -inf for it.
//
// Pipeline. Tile i goes to stage i % STAGES. The first STAGES-1 tiles are issued up front (with
// Q in the first group); at iteration i the engine waits until tile i has landed (at most
// STAGES-2 younger groups in flight), synchronises the CTA once, issues tile i+STAGES-1 into
// the stage that tile i-1 used (every warp finished it before that barrier), then computes
// tile i. Empty groups are committed past the end so the wait count stays uniform.
//
// Shared memory (layout.cuh): [Q: MT*16 rows][STAGES x (K: TILE rows, V: TILE rows)], rows padded
// by 8 elements (conflict-free ldmatrix); the fp32 merge buffer reuses it after the loop.
//
// Skipping (optional). A design may pass run() a `skip(tile)` rule that tells a warp its rows see
// no key of its columns of that tile. The warp then does not compute the tile at all (no S, no
// softmax update, no P V) but still issues its share of the copies and meets the barrier. That
// is exact, not an approximation: computing a tile whose scores are all masked leaves the state
// bit for bit as it was (m_new = max(m, -inf) = m, alpha = 2^0 = 1 or, for a row with m = -inf,
// O and l are still 0; every p is 2^-inf = 0, so l and O gain exact zeros). A warp skips only
// when all 32 lanes say so (one vote), so the branch is warp-uniform by construction. Designs
// that pass no rule get ComputeEveryTile: no vote, no branch, their SASS is unchanged.
//
// Swizzled rings (optional). With SWIZZLED the K/V stages are not padded rows but the layout the
// tensor memory accelerator writes with 128-byte swizzle (the TMA variants of the streaming
// designs): a ring slot holds one whole block of BLK keys, K as D_qk/64 panels of [BLK][64]
// elements and V as D_v/64 panels, each row of a panel 128 bytes whose eight 16-byte chunks are
// permuted by chunk ^ (row % 8); panels start 1024-byte aligned, so the permutation is the TMA's.
// An ldmatrix phase reads 8 consecutive rows at one logical chunk, which the permutation spreads
// over 8 different chunks: conflict-free, with no padding. compute_tile's `stage` is then a
// TILE-key step of the ring: slot stage / (BLK / TILE), rows from (stage % (BLK / TILE)) * TILE.
// Q stays in padded rows.
//
// L2 hint. With EVICT_FIRST the K/V tile copies carry an evict-first L2 policy: right for a
// stream read once (decode), wrong where neighbouring rows re-read the same blocks (prefill),
// so it is a design knob and the tuner decides. Q copies never carry it.
#pragma once

#include "common.cuh"

/// acc[e] += w * x[e] for one 8-wide chunk x = (x0, x1) of a partial O: the step of every merge
/// of partial results (the engine's column groups, split_kv's shares).
__device__ __forceinline__ void add_weighted_chunk(float (&acc)[8], float w, const float4& x0, const float4& x1) {
  acc[0] += w * x0.x;
  acc[1] += w * x0.y;
  acc[2] += w * x0.z;
  acc[3] += w * x0.w;
  acc[4] += w * x1.x;
  acc[5] += w * x1.y;
  acc[6] += w * x1.z;
  acc[7] += w * x1.w;
}

/// Merges W partial results of one row over NQ 4-wide quads of D_v: partial w has the row max m_w
/// (log2 domain), the sum l_w and the unnormalised O_w, whose quad j is at quad(w, j) (a float4,
/// 16-byte aligned). Gives acc[4 j ..] = sum_w 2^(m_w - m) O_w's quad j, l = sum_w 2^(m_w - m) l_w
/// and m = max_w m_w at ml(w) = {m_w, l_w}; a partial with m_w = -inf (and l_w = 0, O_w = 0)
/// weighs exactly nothing, and if all have, m = -inf, l = 0, acc = 0.
template <int W, int NQ, class Ml, class Quad>
__device__ __forceinline__ void merge_partial_quads(Ml ml, Quad quad, float (&acc)[4 * NQ], float& m, float& l) {
  m = NSA_NEG_INF;
#pragma unroll
  for (int w = 0; w < W; ++w) m = fmaxf(m, ml(w)[0]);
  const float base = m == NSA_NEG_INF ? 0.f : m;
#pragma unroll
  for (int e = 0; e < 4 * NQ; ++e) acc[e] = 0.f;
  l = 0.f;
#pragma unroll
  for (int w = 0; w < W; ++w) {
    const float wgt = fast_exp2(ml(w)[0] - base);
    l += wgt * ml(w)[1];
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
      const float4 x = *quad(w, j);
      acc[4 * j] += wgt * x.x;
      acc[4 * j + 1] += wgt * x.y;
      acc[4 * j + 2] += wgt * x.z;
      acc[4 * j + 3] += wgt * x.w;
    }
  }
}

/// merge_partial_quads for one 8-wide chunk of D_v at o(w) (8 floats, 16-byte aligned): the
/// merge of the engine's column groups.
template <int W, class Ml, class O>
__device__ __forceinline__ void merge_partials(Ml ml, O o, float (&acc)[8], float& m, float& l) {
  merge_partial_quads<W, 2>(
      ml, [&](int w, int j) { return reinterpret_cast<const float4*>(o(w)) + j; }, acc, m, l);
}

/// The online-softmax step of one warp's 16-row MMA tile (see "Softmax" above): s holds the
/// tile's scores of NT 8-key column tiles in the mma.m16n8k16 C layout, masked (-inf) and
/// already scaled into the log2 domain, or with SCALE_HERE to be multiplied by `scale` (> 0)
/// here, in one fma with the subtraction of the max (a positive scale keeps the max). Per row
/// (the 4 lanes of a quad share one): the new running max, P = 2^(s - m) in place of s, l, and
/// in `alpha` the factor 2^(m_old - m) by which O is to be rescaled (rescale_o), which the
/// warpgroup engine does only once the previous block's P V, accumulating into O, is retired.
template <int NT, bool SCALE_HERE = false>
__device__ __forceinline__ void online_softmax_p(float (&s)[NT][4], float (&m_run)[2], float (&l_run)[2],
                                                 float (&alpha)[2], float scale = 1.f) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float mx = NSA_NEG_INF;
#pragma unroll
    for (int j = 0; j < NT; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hf], s[j][2 * hf + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run[hf], SCALE_HERE ? mx * scale : mx);
    const float base = m_new == NSA_NEG_INF ? 0.f : m_new;
    alpha[hf] = fast_exp2(m_run[hf] - base);
    float rs = 0.f;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pv = fast_exp2(SCALE_HERE ? fmaf(s[j][2 * hf + e], scale, -base) : s[j][2 * hf + e] - base);
        s[j][2 * hf + e] = pv;
        rs += pv;
      }
    l_run[hf] = l_run[hf] * alpha[hf] + rs;
    m_run[hf] = m_new;
  }
}

/// A row's l from its quad: each of the row's 4 lanes holds the sum over its own columns.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/// O's rows times the factors of online_softmax_p.
template <int NO>
__device__ __forceinline__ void rescale_o(float (&o)[NO][4], const float (&alpha)[2]) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
#pragma unroll
    for (int dt = 0; dt < NO; ++dt) {
      o[dt][2 * hf] *= alpha[hf];
      o[dt][2 * hf + 1] *= alpha[hf];
    }
}

/// online_softmax_p and rescale_o in one: the step of the mma.sync engine below.
template <int NT, int NO>
__device__ __forceinline__ void online_softmax_step(float (&s)[NT][4], float (&m_run)[2], float (&l_run)[2],
                                                    float (&o)[NO][4]) {
  float alpha[2];
  online_softmax_p(s, m_run, l_run, alpha);
  rescale_o(o, alpha);
}

/// The A fragment of P for keys [16 kc, 16 kc + 16): the C tiles 2 kc and 2 kc + 1 of the
/// scores, rounded to the input dtype (the accumulator layout of keys 0-7 and 8-15 is exactly
/// the A layout of a k16 step).
template <int NT>
__device__ __forceinline__ void p_fragment(u32 (&a)[4], const float (&s)[NT][4], int kc) {
  a[0] = pack2(s[2 * kc][0], s[2 * kc][1]);
  a[1] = pack2(s[2 * kc][2], s[2 * kc][3]);
  a[2] = pack2(s[2 * kc + 1][0], s[2 * kc + 1][1]);
  a[3] = pack2(s[2 * kc + 1][2], s[2 * kc + 1][3]);
}

/// run()'s default skip rule: every warp computes every tile.
struct ComputeEveryTile {
  __device__ __forceinline__ bool operator()(long long) const { return false; }
};
template <class Skip>
struct SkipsNothing {
  static constexpr bool value = false;
};
template <>
struct SkipsNothing<ComputeEveryTile> {
  static constexpr bool value = true;
};

template <int MT, int WARPS, int TILE, int STAGES, bool EVICT_FIRST = false, int Q_REGS_MAX = 192,
          bool SWIZZLED = false>
struct AttentionCore {
  static constexpr int WM = nsa_layout::warps_m(MT, WARPS);
  static constexpr int WN = nsa_layout::warps_n(MT, WARPS);
  static constexpr int MTW = MT / WM;
  static constexpr int TKW = TILE / WN;
  static constexpr int ROWS = MT * 16;
  static constexpr int THREADS = WARPS * 32;
  static constexpr int TILE_KEYS = TILE;
  static constexpr int WARP_ROWS = MTW * 16;           // CTA rows a warp owns (see warp_row0)
  static constexpr int QSTR = DQK + nsa_layout::kPad;  // smem row strides, in elements
  static constexpr int KSTR = DQK + nsa_layout::kPad;
  static constexpr int VSTR = DV + nsa_layout::kPad;
  static constexpr int RSTR = DV + nsa_layout::kPad;   // merge buffer row stride, in floats
  static constexpr int KCH = DQK / 8;                  // 16-byte chunks per K row
  static constexpr int VCH = DV / 8;
  // Q fragments stay in registers when they take at most 64 of them; else they are re-read from
  // shared memory with ldmatrix for every tile (D_qk = 256, or two row tiles of D_qk >= 192).
  // A design short of registers may lower Q_REGS_MAX (the largest D_qk whose Q fragments stay
  // in registers; 192 by default, 0 keeps Q in shared memory always).
  static constexpr bool Q_IN_REGS = DQK <= Q_REGS_MAX && (MTW * DQK <= 128 || MTW == 1);
  static constexpr long long SMEM_BYTES = nsa_layout::core_bytes(DQK, DV, MT, WARPS, TILE, STAGES);

  static_assert(nsa_layout::core_valid(MT, WARPS, TILE), "invalid engine arrangement (see layout.cuh)");
  static_assert(STAGES >= 2 && STAGES <= 8, "stages must be in [2, 8]");
  static_assert(!SWIZZLED || (WARPS == 1 && DQK % 64 == 0 && DV % 64 == 0 && BLK % TILE == 0),
                "a swizzled ring is read by one-warp engines, in whole 64-element panels, TILE-key steps of a block");
  static_assert(ROWS <= nsa_layout::kMaxRows, "at most 128 rows per CTA");

  elem_t* q_s;
  elem_t* k_s;
  elem_t* v_s;
  float* red_o;
  float* red_ml;
  int tid, lane, warp, wm, wn;
  unsigned long long l2_policy;  // evict-first policy (EVICT_FIRST only)

  float o[MTW][DV / 8][4];
  float m_run[MTW][2];
  float l_run[MTW][2];
  u32 qf[Q_IN_REGS ? MTW : 1][Q_IN_REGS ? DQK / 16 : 1][4];

  __device__ __forceinline__ void init(unsigned char* base) {
    q_s = reinterpret_cast<elem_t*>(base);
    k_s = q_s + ROWS * QSTR;
    v_s = k_s + STAGES * TILE * KSTR;
    red_o = reinterpret_cast<float*>(base);
    red_ml = red_o + nsa_layout::merge_o_floats(DV, MT, WARPS);
    tid = threadIdx.x;
    lane = tid & 31;
    warp = tid >> 5;
    wm = warp % WM;
    wn = warp / WM;
    l2_policy = EVICT_FIRST ? l2_evict_first_policy() : 0ull;
  }

  /// A one-warp engine (WARPS == 1) for designs whose warps work independently of each other
  /// (prefill_stream): each warp owns its engine, its Q rows at `q_rows` and reads tile `stage`
  /// of the CTA's shared K/V ring at k_ring + stage * TILE * KSTR (V likewise). Such a warp uses
  /// load_q_async, load_q_fragments, reset and compute_tile; it never calls run or finish (no
  /// merge buffer), and it synchronises with its producer itself.
  __device__ __forceinline__ void init_warp(elem_t* q_rows, elem_t* k_ring, elem_t* v_ring) {
    static_assert(WARPS == 1, "init_warp is for one-warp engines");
    q_s = q_rows;
    k_s = k_ring;
    v_s = v_ring;
    red_o = nullptr;
    red_ml = nullptr;
    lane = threadIdx.x & 31;
    tid = lane;
    warp = 0;
    wm = 0;
    wn = 0;
    l2_policy = 0ull;
  }

  /// One 16-byte K/V copy, with the evict-first hint when the variant asks for it.
  __device__ __forceinline__ void copy_kv_16(u32 dst, const elem_t* src, bool valid) const {
    if constexpr (EVICT_FIRST) {
      cp_async_16_hint(dst, src, valid, l2_policy);
    } else {
      cp_async_16(dst, src, valid);
    }
  }

  /// One operand of load_tile_fixed_async: `CH` chunks per row, shared row stride DSTR.
  template <int CH, int DSTR, class KeyOf>
  __device__ __forceinline__ void load_rows_fixed(elem_t* dst, const elem_t* base, long long stride, KeyOf key_of) const {
    const int r0 = tid / CH, ch = tid % CH;
#pragma unroll
    for (int j = 0; j < TILE * CH / THREADS; ++j) {
      const int r = r0 + j * (THREADS / CH);
      const long long key = key_of(r);
      copy_kv_16(smem_addr(dst + r * DSTR + ch * 8), key >= 0 ? base + key * stride + ch * 8 : base, key >= 0);
    }
  }

  /// Clears the running statistics for a new unit of work.
  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt) {
#pragma unroll
      for (int dt = 0; dt < DV / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][dt][e] = 0.f;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        m_run[mt][hf] = NSA_NEG_INF;
        l_run[mt][hf] = 0.f;
      }
    }
  }

  /// Issues the copies of the ROWS query rows; `row_ptr(r)` is row r's D_qk elements, or nullptr
  /// for a padding row (zero-filled). Row 0 always exists. Joins the caller's next commit group.
  template <class RowPtr>
  __device__ __forceinline__ void load_q_async(RowPtr row_ptr) {
    const elem_t* any_row = row_ptr(0);  // a global address for the zero-fill copies (never read)
    for (int i = tid; i < ROWS * KCH; i += THREADS) {
      const int r = i / KCH, ch = i % KCH;
      const elem_t* src = row_ptr(r);
      cp_async_16(smem_addr(q_s + r * QSTR + ch * 8), src != nullptr ? src + ch * 8 : any_row, src != nullptr);
    }
  }

  /// Issues the copies of one tile into `stage`. `key_of(r)` maps tile row r to a key row, or -1
  /// for a row to zero-fill (outside the selection, past the causal limit or past T_kv: such a
  /// row is never read from global memory). Key row j lives at k_base + j * k_stride (elements),
  /// and likewise for V. Joins the caller's next commit group.
  template <class KeyOf>
  __device__ __forceinline__ void load_tile_async(int stage, KeyOf key_of, const elem_t* k_base, long long k_stride,
                                                  const elem_t* v_base, long long v_stride) {
    elem_t* ks = k_s + stage * TILE * KSTR;
    elem_t* vs = v_s + stage * TILE * VSTR;
#pragma unroll 4
    for (int i = tid; i < TILE * KCH; i += THREADS) {
      const int r = i / KCH, ch = i % KCH;
      const long long key = key_of(r);
      const elem_t* src = key >= 0 ? k_base + key * k_stride + ch * 8 : k_base;
      copy_kv_16(smem_addr(ks + r * KSTR + ch * 8), src, key >= 0);
    }
#pragma unroll 4
    for (int i = tid; i < TILE * VCH; i += THREADS) {
      const int r = i / VCH, ch = i % VCH;
      const long long key = key_of(r);
      const elem_t* src = key >= 0 ? v_base + key * v_stride + ch * 8 : v_base;
      copy_kv_16(smem_addr(vs + r * VSTR + ch * 8), src, key >= 0);
    }
  }

  /// True when every thread copies whole passes of one 16-byte chunk column of K and of V: then
  /// load_tile_fixed_async applies (D = 64, 128, 256 with 4 or 8 warps; not D = 192).
  static constexpr bool FIXED_ROWS =
      THREADS % KCH == 0 && THREADS % VCH == 0 && TILE * KCH % THREADS == 0 && TILE * VCH % THREADS == 0;

  /// load_tile_async with each thread's rows and chunk fixed at compile time: thread t copies
  /// chunk t % CH of rows t / CH + j * (THREADS / CH), so with a cheap `key_of` (one block id
  /// read per tile, then key0 + r) its copies issue back to back with no per-copy division,
  /// list lookup or branch. The generic loop cost ~40% of prefill_shared's time on the H100
  /// (docs/kernels.md); the row-wise designs use this one whenever a tile lies in one block.
  template <class KeyOf>
  __device__ __forceinline__ void load_tile_fixed_async(int stage, KeyOf key_of, const elem_t* k_base,
                                                        long long k_stride, const elem_t* v_base, long long v_stride) {
    static_assert(FIXED_ROWS, "load_tile_fixed_async needs THREADS to divide the chunks of a tile evenly");
    load_rows_fixed<KCH, KSTR>(k_s + stage * TILE * KSTR, k_base, k_stride, key_of);
    load_rows_fixed<VCH, VSTR>(v_s + stage * TILE * VSTR, v_base, v_stride, key_of);
  }

  /// Loads this warp's Q fragments into registers (after Q has landed and the CTA synchronised).
  __device__ __forceinline__ void load_q_fragments() {
    if constexpr (Q_IN_REGS) {
#pragma unroll
      for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
        for (int ks = 0; ks < DQK / 16; ++ks) q_fragment(qf[mt][ks], mt, ks);
    }
  }

  __device__ __forceinline__ void q_fragment(u32 (&a)[4], int mt, int ks) const {
    const int row = (wm * MTW + mt) * 16 + (lane & 15);
    const int col = ks * 16 + (lane >> 4) * 8;
    ldsm_x4(a, smem_addr(q_s + row * QSTR + col));
  }

  /// CTA-local row of accumulator half `hf` (0: row g, 1: row g+8) of this warp's tile `mt`.
  __device__ __forceinline__ int row_of(int mt, int hf) const { return (wm * MTW + mt) * 16 + (lane >> 2) + hf * 8; }

  /// This warp's CTA rows are [warp_row0(), + WARP_ROWS); its columns of every tile are
  /// [warp_col0(), + TKW). For a design's skip rule.
  __device__ __forceinline__ int warp_row0() const { return wm * WARP_ROWS; }
  __device__ __forceinline__ int warp_col0() const { return wn * TKW; }

  /// Shared address of 16-byte chunk `c16` (dims 8 c16 .. 8 c16 + 7) of row `row` (counted from
  /// the step's first key) of TILE-key step `stage` of a swizzled ring whose operand rows have
  /// `D` elements (see "Swizzled rings"). Every caller's row is its lane modulo 8 (the steps
  /// and the ldmatrix row groups start at multiples of 8), which is what the chunk is permuted by.
  __device__ __forceinline__ u32 swizzled_addr(const elem_t* ring, int D, int stage, int row, int c16) const {
    constexpr int SUBS = BLK / TILE;
    const u32 slot = smem_addr(ring) + (u32)(stage / SUBS) * (u32)(BLK * D * 2);
    const int r = (stage % SUBS) * TILE + row;
    return slot + (u32)((c16 >> 3) * BLK * 128 + r * 128 + (((c16 & 7) ^ (lane & 7)) << 4));
  }

  /// Computes one tile that has landed in `stage`. When `full` is false, `valid(c0, row)` gives
  /// how many of the 16 keys at tile columns [c0, c0+16) row `row` may see: a prefix length in
  /// [0, 16] (keys of a 16-aligned chunk are consecutive, blocks being >= 16 keys).
  template <class Valid>
  __device__ __forceinline__ void compute_tile(int stage, bool full, float scale_log2, Valid valid) {
    const int col0 = wn * TKW;
    // Shared address of the ldmatrix row this lane names: K rows col0 + np*16 + (lane & 7) +
    // (lane >> 4) * 8 at dims kk*16 + ((lane >> 3) & 1) * 8; V rows col0 + kc*16 + (lane & 7) +
    // ((lane >> 3) & 1) * 8 at dims dp*16 + (lane >> 4) * 8.
    auto k_row_addr = [&](int np, int kk) -> u32 {
      if constexpr (SWIZZLED) {
        return swizzled_addr(k_s, DQK, stage, col0 + np * 16 + (lane & 7) + (lane >> 4) * 8,
                             kk * 2 + ((lane >> 3) & 1));
      } else {
        return smem_addr(k_s + stage * TILE * KSTR + (col0 + np * 16 + (lane & 7) + (lane >> 4) * 8) * KSTR + kk * 16 +
                         ((lane >> 3) & 1) * 8);
      }
    };
    auto v_row_addr = [&](int kc, int dp) -> u32 {
      if constexpr (SWIZZLED) {
        return swizzled_addr(v_s, DV, stage, col0 + kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 2 + (lane >> 4));
      } else {
        return smem_addr(v_s + stage * TILE * VSTR + (col0 + kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * VSTR +
                         dp * 16 + (lane >> 4) * 8);
      }
    };

    float s[MTW][TKW / 8][4];
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int j = 0; j < TKW / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;

    // S = Q K^T over this warp's columns. ldmatrix.x4 of K rows [n0, n0+16), dims [k0, k0+16):
    // matrices (keys n0.., dims k0..), (n0.., k0+8..), (n0+8.., k0..), (n0+8.., k0+8..) are the
    // B fragments (reg0, reg1) of key tiles n0 and n0+8.
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      u32 a[MTW][4];
#pragma unroll
      for (int mt = 0; mt < MTW; ++mt) {
        if constexpr (Q_IN_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = qf[mt][kk][e];
        } else {
          q_fragment(a[mt], mt, kk);
        }
      }
#pragma unroll
      for (int np = 0; np < TKW / 16; ++np) {
        u32 b[4];
        ldsm_x4(b, k_row_addr(np, kk));
#pragma unroll
        for (int mt = 0; mt < MTW; ++mt) {
          mma_16816(s[mt][2 * np], a[mt], b[0], b[1]);
          mma_16816(s[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int j = 0; j < TKW / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] *= scale_log2;

    if (!full) {
      // Thread columns within a 16-key chunk: 2c, 2c+1 (first n8 tile) and 8+2c, 9+2c.
      const int c2 = (lane & 3) * 2;
#pragma unroll
      for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = row_of(mt, hf);
#pragma unroll
          for (int ch = 0; ch < TKW / 16; ++ch) {
            const int nv = valid(col0 + ch * 16, row);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e)
                if (nt * 8 + c2 + e >= nv) s[mt][2 * ch + nt][2 * hf + e] = NSA_NEG_INF;
          }
        }
    }

    // Online softmax, per accumulator row (the 4 lanes of a quad share a row).
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt) online_softmax_step(s[mt], m_run[mt], l_run[mt], o[mt]);

    // O += P V. P of keys [16kc, 16kc+16) is the A fragment built from S tiles 2kc and 2kc+1.
    // ldmatrix.x4.trans of V rows [k0, k0+16), dims [n0, n0+16): matrices (keys k0.., dims n0..),
    // (k0+8.., n0..), (k0.., n0+8..), (k0+8.., n0+8..) are B fragments (reg0, reg1) of dim tiles
    // n0 and n0+8.
#pragma unroll
    for (int kc = 0; kc < TKW / 16; ++kc) {
      u32 pa[MTW][4];
#pragma unroll
      for (int mt = 0; mt < MTW; ++mt) p_fragment(pa[mt], s[mt], kc);
#pragma unroll
      for (int dp = 0; dp < DV / 16; ++dp) {
        u32 b[4];
        ldsm_x4_t(b, v_row_addr(kc, dp));
#pragma unroll
        for (int mt = 0; mt < MTW; ++mt) {
          mma_16816(o[mt][2 * dp], pa[mt], b[0], b[1]);
          mma_16816(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
        }
      }
    }
  }

  /// One-warp engines over a ring of whole blocks (prefill_stream, decode_stream): computes the
  /// block in ring slot `slot` (BLK_ keys = BLK_ / TILE tiles from tile slot * BLK_ / TILE on),
  /// of which only the first `vis` keys (1 <= vis <= BLK_) are visible to this warp's rows: the
  /// tiles past them are skipped, the one they cut is masked.
  template <int BLK_>
  __device__ __forceinline__ void compute_block_prefix(int slot, int vis, float scale_log2) {
    compute_block_part<BLK_, BLK_>(slot, 0, vis, scale_log2);
  }

  /// compute_block_prefix for the block's keys [key0, key0 + KEYS) only (both multiples of
  /// TILE), for engines that share a block's keys between warps (decode_stream's share knob):
  /// keys at or past `vis` are skipped or masked as there.
  template <int BLK_, int KEYS>
  __device__ __forceinline__ void compute_block_part(int slot, int key0, int vis, float scale_log2) {
    static_assert(BLK_ % TILE == 0 && KEYS % TILE == 0 && KEYS <= BLK_, "a block part is a whole number of compute steps");
    constexpr int SUBS = BLK_ / TILE;
#pragma unroll
    for (int sub = 0; sub < KEYS / TILE; ++sub) {
      const int k0 = key0 + sub * TILE;
      if (k0 >= vis) break;
      compute_tile(slot * SUBS + k0 / TILE, k0 + TILE <= vis, scale_log2, [&](int c0, int) {
        const int left = vis - k0 - c0;
        return left <= 0 ? 0 : (left >= 16 ? 16 : left);
      });
    }
  }

  /// Runs the whole pipeline over `ntiles` tiles numbered [first, first + ntiles). For tile i,
  /// `load(stage, i)` issues its copies (load_tile_async), `full(i)` says no key of it is masked
  /// for any row (it is asked by each warp, so an answer for the calling warp's rows and
  /// columns is enough), `valid(i, c0, row)` is the masking rule of compute_tile. `load_q()` issues the
  /// Q copies (joined to the first group). With ntiles == 0 nothing is loaded and the
  /// statistics stay empty. `skip(i)` (optional) says this warp's rows see no key of its
  /// columns of tile i: the warp then leaves the tile out (see "Skipping" above);
  /// `full` and `valid` are only asked about tiles the warp computes.
  template <class LoadQ, class Load, class Full, class Valid, class Skip = ComputeEveryTile>
  __device__ __forceinline__ void run(long long first, long long ntiles, float scale_log2, LoadQ load_q, Load load,
                                      Full full, Valid valid, Skip skip = Skip{}) {
    reset();
    if (ntiles <= 0) return;
    load_q();
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
      if (st < ntiles) load(st, first + st);
      cp_async_commit();
    }
    for (long long it = 0; it < ntiles; ++it) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      if (it == 0) load_q_fragments();
      const long long next = it + STAGES - 1;
      if (next < ntiles) load((int)(next % STAGES), first + next);
      cp_async_commit();
      const long long tile = first + it;
      if constexpr (!SkipsNothing<Skip>::value) {
        if (__all_sync(0xffffffffu, skip(tile))) continue;
      }
      compute_tile((int)(it % STAGES), full(tile), scale_log2,
                   [&](int c0, int row) { return valid(tile, c0, row); });
    }
  }

  /// Merges the warps' partial results. For each CTA row r < rows and 8-wide chunk ch of D_v,
  /// calls emit(r, ch, acc, m, l) with acc[e] = sum over column groups of exp2(m_w - m) O_w
  /// (unnormalised, relative to the row's log2-domain max m) and l the matching sum of
  /// exp2(m_w - m) l_w. m = -inf and l = 0 for a row that saw no key. Call it on every thread;
  /// it synchronises the CTA before and after.
  template <class Emit>
  __device__ __forceinline__ void finish(int rows, Emit emit) {
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with Q/K/V: the merge buffer overlays them
    const int g = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float l = quad_sum(l_run[mt][hf]);
        const int row = (wm * MTW + mt) * 16 + g + hf * 8;
        float* dst = red_o + (wn * ROWS + row) * RSTR;
#pragma unroll
        for (int dt = 0; dt < DV / 8; ++dt)  // 8 bytes a lane: conflict-free (decode_stream's stash_state)
          *reinterpret_cast<float2*>(dst + dt * 8 + c2) = make_float2(o[mt][dt][2 * hf], o[mt][dt][2 * hf + 1]);
        if ((lane & 3) == 0) {
          red_ml[(wn * ROWS + row) * 2] = m_run[mt][hf];
          red_ml[(wn * ROWS + row) * 2 + 1] = l;
        }
      }
    __syncthreads();
    for (int i = tid; i < rows * (DV / 8); i += THREADS) {
      const int r = i / (DV / 8), ch = i % (DV / 8);
      float acc[8], m, l;
      merge_partials<WN>([&](int w) { return red_ml + (w * ROWS + r) * 2; },
                         [&](int w) { return red_o + (w * ROWS + r) * RSTR + ch * 8; }, acc, m, l);
      emit(r, ch, acc, m, l);
    }
    __syncthreads();  // the merge buffer and the design's shared state may be reused next
  }
};

/// Writes one 8-wide chunk of a final output row: O = acc / l (0 for an empty row), and when
/// `lse` is not null and ch == 0, LSE = ln(sum exp(s)) = (m + log2 l) ln 2 (or -inf).
__device__ __forceinline__ void store_output_chunk(elem_t* o_row, float* lse, int ch, const float (&acc)[8], float m,
                                                   float l) {
  const float inv = l > 0.f ? 1.f / l : 0.f;
  uint4 v;
  v.x = pack2(acc[0] * inv, acc[1] * inv);
  v.y = pack2(acc[2] * inv, acc[3] * inv);
  v.z = pack2(acc[4] * inv, acc[5] * inv);
  v.w = pack2(acc[6] * inv, acc[7] * inv);
  st_global_v4(o_row + ch * 8, v);
  if (lse != nullptr && ch == 0) *lse = l > 0.f ? (m + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
}

/// store_output_chunk for NQ 4-wide quads of a row, quad j at column 4 column_quad(j) (an 8-byte
/// store each); LSE where `lse` is not null.
template <int NQ, class ColumnQuad>
__device__ __forceinline__ void store_output_quads(elem_t* o_row, float* lse, ColumnQuad column_quad,
                                                   const float (&acc)[4 * NQ], float m, float l) {
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int j = 0; j < NQ; ++j) {
    uint2 v;
    v.x = pack2(acc[4 * j] * inv, acc[4 * j + 1] * inv);
    v.y = pack2(acc[4 * j + 2] * inv, acc[4 * j + 3] * inv);
    st_global_v2(o_row + 4 * column_quad(j), v);
  }
  if (lse != nullptr) *lse = l > 0.f ? (m + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
}

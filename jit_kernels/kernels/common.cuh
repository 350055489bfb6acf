// What every selection kernel shares: the family's compile-time constants (from the variant
// prelude), the parameter block, and the spec's index arithmetic in one place.
//
// Contract of every kernel (../shared/spec/selection-attention.md):
//   - Q [B, T_q, H_q, D_qk], K [B, T_kv, H_kv, D_qk], V [B, T_kv, H_kv, D_v], O [B, T_q, H_q, D_v],
//     block_idx [B, H_kv, T_q, n] int32, LSE [B, H_q, T_q] fp32 (written only when p.lse != 0).
//     Base addresses are 16-byte aligned (cp.async and vector stores rely on it).
//   - Query row t sits at key position p(t) = T_kv - T_q + t; a row sees the keys of its valid
//     selected blocks that are < T_kv and <= p(t). A row with no visible key gets O = 0 and
//     LSE = -inf.
//   - Every element offset is computed in 64 bits.
#pragma once

#include "selection_params.cuh"
#include "layout.cuh"
#include "ptx.cuh"

#if !defined(NSA_DQK) || !defined(NSA_DV) || !defined(NSA_H) || !defined(NSA_BLOCK) || !defined(NSA_N)
#error "the variant prelude must define NSA_DQK, NSA_DV, NSA_H, NSA_BLOCK and NSA_N"
#endif

constexpr int DQK = NSA_DQK;
constexpr int DV = NSA_DV;
constexpr int H = NSA_H;          // query heads per KV group
constexpr int BLK = NSA_BLOCK;    // keys per selected block (l')
constexpr int NSEL = NSA_N;       // selected blocks per row
constexpr int LOG_BLK = nsa_layout::log2_exact(BLK);

static_assert(DQK % 16 == 0 && DQK >= 16 && DQK <= 256, "D_qk must be a multiple of 16 in [16, 256]");
static_assert(DV % 16 == 0 && DV >= 16 && DV <= 256, "D_v must be a multiple of 16 in [16, 256]");
static_assert(H >= 1 && H <= 64, "h must be in [1, 64]");
static_assert((1 << LOG_BLK) == BLK && BLK >= 16 && BLK <= 256, "block must be a power of two in [16, 256]");
static_assert(NSEL >= 1 && NSEL <= 128, "n must be in [1, 128]");

#define NSA_NEG_INF (__int_as_float(0xff800000))
#define NSA_LOG2E 1.4426950408889634f
#define NSA_LN2 0.6931471805599453f

/// A (b, g, t) row of block_idx, numbered ((b * H_kv + g) * T_q + t): the unit of work of the
/// row-wise designs and the row order of their workspaces.
struct RowId {
  long long b, g, t;
};
__device__ __forceinline__ RowId split_row(long long row, const SelectionParams& p) {
  RowId r;
  r.t = row % p.t_q;
  const long long bg = row / p.t_q;
  r.g = bg % p.h_kv;
  r.b = bg / p.h_kv;
  return r;
}

/// Keys of row t that are visible at all lie in [0, visible_limit): min(p(t) + 1, T_kv). Zero
/// or negative when none is (a query that sits before the first key).
__device__ __forceinline__ long long visible_limit(long long t, const SelectionParams& p) {
  const long long lim = p.t_kv - p.t_q + t + 1;
  return lim < p.t_kv ? lim : p.t_kv;
}

/// Visible keys of block c for a row whose limit is `lim`: in [0, BLK].
__device__ __forceinline__ int visible_in_block(int c, long long lim) {
  if (c < 0) return 0;
  const long long start = (long long)c * BLK;
  const long long left = lim - start;
  return left <= 0 ? 0 : (left >= BLK ? BLK : (int)left);
}

__device__ __forceinline__ const elem_t* ptr_elem(nsa_u64 a) { return reinterpret_cast<const elem_t*>(a); }
__device__ __forceinline__ elem_t* ptr_elem_mut(nsa_u64 a) { return reinterpret_cast<elem_t*>(a); }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Stops the kernel loudly (a sticky launch failure) when it was launched with less dynamic
/// shared memory than its layout needs: a plan/kernel mismatch must never corrupt memory quietly.
__device__ __forceinline__ void require_smem(long long bytes) {
  if ((long long)dynamic_smem_size() < bytes) __trap();
}

// The merge of a row's split partials inside a thread-block cluster, shared by the designs that
// split a row's blocks over the CTAs of one cluster (split_kv with cluster = 1, decode_stream
// with split > 1). Each CTA of the cluster keeps its partial in its own shared memory:
//   part = O [H][D_v] (fp32, unnormalised, relative to m), m [H] (log2 domain), l [H]
// (nsa_layout::split_partial_bytes(H, D_v)), with m = -inf for an empty share. After a cluster
// barrier every CTA merges a 1/SPLIT share of the row's (head, 8-wide chunk) items, reading its
// peers' partials through distributed shared memory:
//   M = max_s m_s,  w_s = 2^(m_s - M),  l = sum_s w_s l_s,  O = (sum_s w_s O_s) / l,
//   LSE = (M + log2 l) ln 2,
// and a second barrier keeps every CTA (and so its shared memory) alive until its peers are done
// reading it. No workspace, no global atomics, no round trip through L2: two on-chip barriers and
// one DSMEM round trip. Needs sm_90 (clusters); compile it only in cluster variants.
#pragma once

#include "attention_core.cuh"
#include "trace.cuh"

/// Writes NQ 4-wide quads of head `i` of this CTA's partial, quad j at column 4 column_quad(j),
/// and m, l with `first`.
template <int NQ, class ColumnQuad>
__device__ __forceinline__ void store_partial_quads(float* part, int i, ColumnQuad column_quad,
                                                    const float (&acc)[4 * NQ], float m, float l, bool first) {
#pragma unroll
  for (int j = 0; j < NQ; ++j)
    *reinterpret_cast<float4*>(part + i * DV + 4 * column_quad(j)) =
        make_float4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
  if (first) {
    part[H * DV + i] = m;
    part[H * DV + H + i] = l;
  }
}

/// store_partial_quads for the 8-wide chunk `ch` of head `i` (m and l with chunk 0).
__device__ __forceinline__ void store_partial_chunk(float* part, int i, int ch, const float (&acc)[8], float m, float l) {
  store_partial_quads<2>(part, i, [&](int j) { return 2 * ch + j; }, acc, m, l, ch == 0);
}

/// Merges the row's SPLIT partials at `part` (this CTA's; the peers' at the same offset) and
/// writes the row's O and LSE. Called by all THREADS threads of every CTA of the cluster, between
/// two cluster_sync()s (the caller's: the first makes every partial visible, the second keeps the
/// partials alive).
template <int SPLIT, int THREADS>
__device__ __forceinline__ void merge_in_cluster(float* part, const SelectionParams& p, const RowId& r) {
  const long long h_q = p.h_kv * H;
  elem_t* o_rows = ptr_elem_mut(p.o) + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
  float* LSE = NSA_LSE_OUT(p);  // (none in a traced build: trace.cuh)
  float* lse_rows = LSE != nullptr ? LSE + (r.b * h_q + r.g * H) * p.t_q + r.t : nullptr;
  const u32 rank = cluster_cta_rank();
  const u32 o_base = smem_addr(part), m_base = smem_addr(part + H * DV), l_base = smem_addr(part + H * DV + H);
  for (int it = (int)rank * THREADS + (int)threadIdx.x; it < H * (DV / 8); it += SPLIT * THREADS) {
    const int i = it / (DV / 8), ch = it % (DV / 8);
    float ms[SPLIT];
    float mx = NSA_NEG_INF;
#pragma unroll
    for (int sp = 0; sp < SPLIT; ++sp) {
      ms[sp] = ld_cluster_f32(cluster_map(m_base + i * 4, sp));
      mx = fmaxf(mx, ms[sp]);
    }
    const float base = mx == NSA_NEG_INF ? 0.f : mx;
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = 0.f;
    float l = 0.f;
#pragma unroll
    for (int sp = 0; sp < SPLIT; ++sp) {
      // An empty share wrote only m = -inf (its O and l are stale): skipped, not scaled by 0.
      if (ms[sp] == NSA_NEG_INF) continue;
      const u32 src = cluster_map(o_base + (i * DV + ch * 8) * 4, sp);
      const float4 x0 = ld_cluster_f32x4(src), x1 = ld_cluster_f32x4(src + 16);
      const float w = fast_exp2(ms[sp] - base);
      l += w * ld_cluster_f32(cluster_map(l_base + i * 4, sp));
      add_weighted_chunk(acc, w, x0, x1);
    }
    store_output_chunk(o_rows + (long long)i * DV, lse_rows != nullptr ? lse_rows + (long long)i * p.t_q : nullptr, ch,
                       acc, mx, l);
  }
}

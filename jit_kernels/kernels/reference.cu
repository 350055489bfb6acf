// reference: the obviously-correct device implementation of selection attention, in fp32, that
// every other design is checked against on large shapes (the host reference covers small ones).
// Slow on purpose: no tensor cores, no pipelining, no approximate math. It only avoids being
// needlessly slow: reads of K and V rows are coalesced, so the GPU tests can afford it on
// decode batches and long prefill chunks.
//
// One CTA of 128 threads (4 warps) per (b, t, query head i); CTAs loop when there are more than
// 2^31-1. Shared memory: q (fp32, D_qk), one score per key of a chunk of 128 keys, reduction
// slots. Two passes over the row's selected blocks, in slot order:
//   1. warp w scores keys w, w+4, ... of each visible range (lanes split D_qk, a warp sum gives
//      the dot product) and the CTA takes the max m;
//   2. chunk by chunk of 128 keys, the warps write p_k = exp(s_k - m) into shared memory, then
//      thread d accumulates sum_k p_k * V[k][d] for its output dimensions; l sums the p_k.
// O = acc / l and LSE = m + log(l); with no visible key, m = -inf, l = 0, and the row gets O = 0,
// LSE = -inf (pass 2 never evaluates exp(-inf - -inf)).
#include "common.cuh"

namespace {

constexpr int kThreads = nsa_layout::kReferenceThreads;
constexpr int kDvPerThread = (DV + kThreads - 1) / kThreads;

__device__ float block_reduce(float v, float* slots, bool is_max) {
  v = is_max ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  float r = slots[0];
  for (int w = 1; w < kThreads / 32; ++w) r = is_max ? fmaxf(r, slots[w]) : r + slots[w];
  __syncthreads();  // slots are reused by the next reduction
  return r;
}

/// scale * dot(q, k_row), computed by a whole warp (lanes split the dimensions); every lane
/// gets the result.
__device__ float warp_score(const float* q_s, const elem_t* k_row, float scale) {
  float acc = 0.f;
  for (int d = threadIdx.x % 32; d < DQK; d += 32) acc += q_s[d] * to_float(k_row[d]);
  return warp_sum(acc) * scale;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) nsa_reference(const SelectionParams p) {
  require_smem(nsa_layout::reference_smem(DQK));
  float* q_s = reinterpret_cast<float*>(dynamic_smem());
  float* p_s = q_s + DQK;
  float* slots = p_s + kThreads;
  const int tid = threadIdx.x;

  const elem_t* Q = ptr_elem(p.q);
  const elem_t* K = ptr_elem(p.k);
  const elem_t* V = ptr_elem(p.v);
  const int* idx = reinterpret_cast<const int*>(p.block_idx);
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);
  const long long h_q = p.h_kv * H;
  const long long total = p.batch * p.t_q * h_q;

  for (long long item = blockIdx.x; item < total; item += gridDim.x) {
    const long long i = item % h_q;  // query head
    const long long bt = item / h_q;
    const long long t = bt % p.t_q;
    const long long b = bt / p.t_q;
    const long long g = i / H;
    const long long lim = visible_limit(t, p);
    const int* sel = idx + ((b * p.h_kv + g) * p.t_q + t) * NSEL;
    const elem_t* q_row = Q + ((b * p.t_q + t) * h_q + i) * DQK;
    // Key j of group g: K[b][j][g][:], rows H_kv * D apart.
    const elem_t* k_bg = K + (b * p.t_kv * p.h_kv + g) * DQK;
    const elem_t* v_bg = V + (b * p.t_kv * p.h_kv + g) * DV;
    const long long k_stride = p.h_kv * DQK, v_stride = p.h_kv * DV;

    for (int d = tid; d < DQK; d += kThreads) q_s[d] = to_float(q_row[d]);
    __syncthreads();

    // Pass 1: the row maximum. Loops are uniform per warp (cnt is the same for every thread).
    const int warp = tid / 32;
    constexpr int kWarps = kThreads / 32;
    float m_local = NSA_NEG_INF;
    for (int j = 0; j < NSEL; ++j) {
      const int c = sel[j];
      const int cnt = visible_in_block(c, lim);
      for (int k = warp; k < cnt; k += kWarps) {
        const long long key = (long long)c * BLK + k;
        m_local = fmaxf(m_local, warp_score(q_s, k_bg + key * k_stride, p.scale));
      }
    }
    const float m = block_reduce(m_local, slots, true);

    // Pass 2: exponentials, their sum and the weighted sum of V.
    float acc[kDvPerThread];
    for (int e = 0; e < kDvPerThread; ++e) acc[e] = 0.f;
    float l_local = 0.f;
    for (int j = 0; j < NSEL; ++j) {
      const int c = sel[j];
      const int cnt = visible_in_block(c, lim);  // the same for every thread: the loop is uniform
      for (int k0 = 0; k0 < cnt; k0 += kThreads) {
        const int chunk = cnt - k0 < kThreads ? cnt - k0 : kThreads;
        for (int kk = warp; kk < chunk; kk += kWarps) {
          const long long key = (long long)c * BLK + k0 + kk;
          const float pk = expf(warp_score(q_s, k_bg + key * k_stride, p.scale) - m);
          if (tid % 32 == 0) {
            p_s[kk] = pk;
            l_local += pk;
          }
        }
        __syncthreads();
        for (int e = 0; e < kDvPerThread; ++e) {
          const int d = tid + e * kThreads;
          if (d >= DV) break;
          float a = acc[e];
          for (int kk = 0; kk < chunk; ++kk) {
            const long long key = (long long)c * BLK + k0 + kk;
            a += p_s[kk] * to_float(v_bg[key * v_stride + d]);
          }
          acc[e] = a;
        }
        __syncthreads();
      }
    }
    const float l = block_reduce(l_local, slots, false);

    elem_t* o_row = O + ((b * p.t_q + t) * h_q + i) * DV;
    for (int e = 0; e < kDvPerThread; ++e) {
      const int d = tid + e * kThreads;
      if (d < DV) o_row[d] = from_float(l > 0.f ? acc[e] / l : 0.f);
    }
    if (LSE != nullptr && tid == 0) LSE[(b * h_q + i) * p.t_q + t] = l > 0.f ? m + logf(l) : NSA_NEG_INF;
    __syncthreads();  // q_s is rewritten by the next item
  }
}

// sdpa_packed: the spec's "packed SDPA" baseline, the fallback a client runs when no sparse
// kernel wins. It must be a strong bar, so both halves are built for bandwidth and tensor cores:
//
// 1. nsa_sdpa_gather (one CTA of 256 threads per (b, g, t) row): warp 0 scans the n slots in
//    slot order, giving each slot its visible key count (0 for -1, past p(t) or past T_kv; cut
//    at p(t)) and its offset in the packed row; then the CTA copies each slot's visible K and V
//    rows to K_p[row][off..] and V_p[row][off..] with 16-byte loads, four in flight per thread,
//    and writes the row's length L_row.
// 2. nsa_sdpa_attention (one CTA per packed row): dense attention of the row's h query heads
//    over its L_row packed keys with no further mask than the length, on the same tensor-core
//    engine as the sparse designs (attention_core.cuh): mma.sync, online softmax in fp32
//    registers, cp.async multi-stage pipeline, positions >= L_row zero-filled and masked.
//
// The workspace (layout.cuh) holds K_p [rows][n*block][D_qk], V_p [rows][n*block][D_v] and
// L [rows]; rows are numbered ((b * H_kv + g) * T_q + t). A benchmark of this variant times both
// launches, as the spec requires: a client that falls back pays for the gather too.
//
// Knobs (the attention kernel): NSA_KNOB_WARPS (4, 8), NSA_KNOB_TILE (32, 64, 128),
// NSA_KNOB_STAGES (2..4).
#include "attention_core.cuh"

#if !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES)
#error "sdpa_packed.cu needs the knobs warps, tile and stages (jit_kernels/catalog.cpp)"
#endif

namespace {

constexpr int kGatherThreads = nsa_layout::kGatherThreads;
constexpr long long kMaxLen = (long long)NSEL * BLK;

struct PackedWorkspace {
  elem_t* k;
  elem_t* v;
  int* len;
  __device__ PackedWorkspace(const SelectionParams& p, long long rows)
      : k(reinterpret_cast<elem_t*>(p.workspace + nsa_layout::packed_k_offset())),
        v(reinterpret_cast<elem_t*>(p.workspace + nsa_layout::packed_v_offset(rows, DQK, BLK, NSEL))),
        len(reinterpret_cast<int*>(p.workspace + nsa_layout::packed_len_offset(rows, DQK, DV, BLK, NSEL))) {}
};

/// Copies `count` rows of CH 16-byte chunks from src (rows `src_stride` elements apart) to the
/// contiguous dst, four loads in flight per thread before their stores.
template <int CH>
__device__ __forceinline__ void copy_rows(elem_t* __restrict__ dst, const elem_t* __restrict__ src,
                                          long long src_stride, int count) {
  const int units = count * CH;
  for (int u0 = 0; u0 < units; u0 += 4 * kGatherThreads) {
    uint4 buf[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int u = u0 + e * kGatherThreads + (int)threadIdx.x;
      if (u < units) buf[e] = *reinterpret_cast<const uint4*>(src + (u / CH) * src_stride + (u % CH) * 8);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int u = u0 + e * kGatherThreads + (int)threadIdx.x;
      if (u < units) *reinterpret_cast<uint4*>(dst + (long long)u * 8) = buf[e];
    }
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kGatherThreads) nsa_sdpa_gather(const SelectionParams p) {
  require_smem(nsa_layout::gather_smem(NSEL));
  int* blk_s = reinterpret_cast<int*>(dynamic_smem());
  int* cnt_s = blk_s + NSEL;
  int* off_s = cnt_s + NSEL;
  const long long rows = p.batch * p.h_kv * p.t_q;
  const PackedWorkspace ws(p, rows);
  const int lane = threadIdx.x & 31;

  for (long long rid = blockIdx.x; rid < rows; rid += gridDim.x) {
    const RowId r = split_row(rid, p);
    if (threadIdx.x < 32) {
      const long long lim = visible_limit(r.t, p);
      const int* sel = reinterpret_cast<const int*>(p.block_idx) + rid * NSEL;
      int carry = 0;
      for (int j0 = 0; j0 < NSEL; j0 += 32) {
        const int j = j0 + lane;
        const int c = j < NSEL ? sel[j] : -1;
        const int vis = visible_in_block(c, lim);
        int incl = vis;  // inclusive prefix sum over the lanes
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int y = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += y;
        }
        if (j < NSEL) {
          blk_s[j] = c;
          cnt_s[j] = vis;
          off_s[j] = carry + incl - vis;
        }
        carry += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (lane == 0) ws.len[rid] = carry;
    }
    __syncthreads();
    const elem_t* k_bg = ptr_elem(p.k) + (r.b * p.t_kv * p.h_kv + r.g) * DQK;
    const elem_t* v_bg = ptr_elem(p.v) + (r.b * p.t_kv * p.h_kv + r.g) * DV;
    const long long k_stride = p.h_kv * DQK, v_stride = p.h_kv * DV;
    for (int j = 0; j < NSEL; ++j) {
      const int cnt = cnt_s[j];
      if (cnt == 0) continue;
      const long long key0 = (long long)blk_s[j] * BLK;
      const long long off = rid * kMaxLen + off_s[j];
      copy_rows<DQK / 8>(ws.k + off * DQK, k_bg + key0 * k_stride, k_stride, cnt);
      copy_rows<DV / 8>(ws.v + off * DV, v_bg + key0 * v_stride, v_stride, cnt);
    }
    __syncthreads();  // the slot tables are rewritten for the next row
  }
}

using Core = AttentionCore<nsa_layout::m_tiles(H), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES>;

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_sdpa_attention(const SelectionParams p) {
  constexpr int TILE = Core::TILE_KEYS;
  require_smem(nsa_layout::packed_attention_smem(DQK, DV, H, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  Core core;
  core.init(dynamic_smem());
  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  const PackedWorkspace ws(p, rows);
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);

  for (long long rid = blockIdx.x; rid < rows; rid += gridDim.x) {
    const RowId r = split_row(rid, p);
    const long long len = ws.len[rid];
    const elem_t* q_rows = ptr_elem(p.q) + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DQK;
    const elem_t* k_row0 = ws.k + rid * kMaxLen * DQK;
    const elem_t* v_row0 = ws.v + rid * kMaxLen * DV;
    elem_t* o_rows = O + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
    float* lse_rows = LSE != nullptr ? LSE + (r.b * h_q + r.g * H) * p.t_q + r.t : nullptr;
    core.run(
        0, (len + TILE - 1) / TILE, p.scale * NSA_LOG2E,
        [&]() { core.load_q_async([&](int i) -> const elem_t* { return i < H ? q_rows + (long long)i * DQK : nullptr; }); },
        [&](int stage, long long tile) {
          core.load_tile_async(
              stage,
              [&](int i) -> long long {
                const long long pos = tile * TILE + i;
                return pos < len ? pos : -1;
              },
              k_row0, DQK, v_row0, DV);
        },
        [&](long long tile) { return (tile + 1) * TILE <= len; },
        [&](long long tile, int c0, int) {
          const long long left = len - (tile * TILE + c0);
          return left <= 0 ? 0 : (left >= 16 ? 16 : (int)left);
        });
    core.finish(H, [&](int i, int ch, const float (&acc)[8], float m, float l) {
      store_output_chunk(o_rows + (long long)i * DV, lse_rows != nullptr ? lse_rows + i * p.t_q : nullptr, ch, acc, m, l);
    });
  }
}

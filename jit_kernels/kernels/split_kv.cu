// split_kv: selection attention for few rows (decode at small batch), where one CTA per
// (b, g, t) row would leave most SMs idle: the row's visible tiles are divided among SPLIT
// CTAs, each a contiguous share [s*ntiles/SPLIT, (s+1)*ntiles/SPLIT) of the tiles. Each CTA runs
// the same engine as query_outer (selected_row.cuh, attention_core.cuh) over its share and
// writes its partial result in fp32 to the workspace: O unnormalised relative to its row max m
// (log2 domain), m and l. A second kernel merges the SPLIT partials of each (row, head):
//   M = max_s m_s,  w_s = 2^(m_s - M),  l = sum_s w_s l_s,  O = (sum_s w_s O_s) / l,
//   LSE = (M + log2 l) ln 2,
// with empty shares (m = -inf, l = 0) weighing nothing and an all-empty row giving O = 0,
// LSE = -inf. The combine reads rows * SPLIT * h * (D_v + 2) floats; at decode sizes that is a
// few hundred KB, far less than the K/V bytes the split spreads over the GPU.
//
// Example: B = 1, H_kv = 4, n = 16 blocks of 64, TILE = 64 and SPLIT = 16: 64 CTAs of one tile
// each instead of 4 CTAs of 16 tiles; with TILE = 32 and SPLIT = 32, 128 CTAs.
//
// Knobs: NSA_KNOB_SPLIT (2..32), NSA_KNOB_WARPS (4, 8), NSA_KNOB_TILE (32, 64),
// NSA_KNOB_STAGES (2, 3). Launches: nsa_split_kv_partial with grid.x = min(rows*SPLIT, 2^31-1),
// then nsa_split_kv_combine with 128 threads per CTA, one warp per (row, head). Workspace:
// nsa_layout::split_workspace_bytes(rows, SPLIT, h, D_v).
#include "selected_row.cuh"

#if !defined(NSA_KNOB_SPLIT) || !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES)
#error "split_kv.cu needs the knobs split, warps, tile and stages (jit_kernels/catalog.cpp)"
#endif

constexpr int SPLIT = NSA_KNOB_SPLIT;
static_assert(SPLIT >= 1 && SPLIT <= nsa_layout::kMaxSplit, "split must be in [1, 32]");

using Core = AttentionCore<nsa_layout::m_tiles(H), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES>;

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_split_kv_partial(const SelectionParams p) {
  constexpr long long kExtras = nsa_layout::row_list_bytes(NSEL);
  require_smem(nsa_layout::query_outer_smem(DQK, DV, H, NSEL, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  unsigned char* smem = dynamic_smem();
  Core core;
  core.init(smem + kExtras);
  SelectedRow row;

  const long long rows = p.batch * p.h_kv * p.t_q;
  float* part_o = reinterpret_cast<float*>(p.workspace);
  float* part_m = reinterpret_cast<float*>(p.workspace + nsa_layout::split_m_offset(rows, SPLIT, H, DV));
  float* part_l = reinterpret_cast<float*>(p.workspace + nsa_layout::split_l_offset(rows, SPLIT, H, DV));
  for (long long item = blockIdx.x; item < rows * SPLIT; item += gridDim.x) {
    const long long rid = item / SPLIT;
    const int s = (int)(item % SPLIT);
    const RowId r = split_row(rid, p);
    row.build(reinterpret_cast<int*>(smem), p, r);
    const long long ntiles = (row.npos + Core::TILE_KEYS - 1) / Core::TILE_KEYS;
    const long long first = s * ntiles / SPLIT, last = (s + 1) * ntiles / SPLIT;
    attend_selected_row(core, row, p, r, first, last - first,
                        [&](int i, int ch, const float (&acc)[8], float m, float l) {
                          const long long slot = item * H + i;  // ((rid * SPLIT + s) * H + i)
                          float4* dst = reinterpret_cast<float4*>(part_o + slot * DV + ch * 8);
                          dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
                          dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
                          if (ch == 0) {
                            part_m[slot] = m;
                            part_l[slot] = l;
                          }
                        });
  }
}

extern "C" __global__ void __launch_bounds__(128) nsa_split_kv_combine(const SelectionParams p) {
  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  const float* part_o = reinterpret_cast<const float*>(p.workspace);
  const float* part_m = reinterpret_cast<const float*>(p.workspace + nsa_layout::split_m_offset(rows, SPLIT, H, DV));
  const float* part_l = reinterpret_cast<const float*>(p.workspace + nsa_layout::split_l_offset(rows, SPLIT, H, DV));
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);
  const int lane = threadIdx.x & 31;
  const long long warps = (long long)gridDim.x * 4;
  for (long long item = (long long)blockIdx.x * 4 + (threadIdx.x >> 5); item < rows * H; item += warps) {
    const long long rid = item / H;
    const int i = (int)(item % H);
    const RowId r = split_row(rid, p);
    // Lane s holds split s's statistics.
    const long long slot_s = (rid * SPLIT + lane) * H + i;
    const float ms = lane < SPLIT ? part_m[slot_s] : NSA_NEG_INF;
    const float ls = lane < SPLIT ? part_l[slot_s] : 0.f;
    const float m = warp_max(ms);
    const float base = m == NSA_NEG_INF ? 0.f : m;
    const float ws = lane < SPLIT ? fast_exp2(ms - base) : 0.f;
    const float l = warp_sum(ws * ls);
    const float inv = l > 0.f ? 1.f / l : 0.f;

    const long long head = r.g * H + i;
    u32* o_row = reinterpret_cast<u32*>(O + ((r.b * p.t_q + r.t) * h_q + head) * DV);
    // Lane owns dimension pairs lane, lane+32, ...; the loop is uniform so every lane joins the
    // shuffles even when D_v/2 is not a multiple of 32.
    for (int pr0 = 0; pr0 < DV / 2; pr0 += 32) {
      const int pr = pr0 + lane;
      const bool active = pr < DV / 2;
      float a0 = 0.f, a1 = 0.f;
#pragma unroll 4
      for (int s = 0; s < SPLIT; ++s) {
        const float w = __shfl_sync(0xffffffffu, ws, s);
        if (active) {
          const float2 x = reinterpret_cast<const float2*>(part_o + ((rid * SPLIT + s) * H + i) * DV)[pr];
          a0 += w * x.x;
          a1 += w * x.y;
        }
      }
      if (active) o_row[pr] = pack2(a0 * inv, a1 * inv);
    }
    if (LSE != nullptr && lane == 0) LSE[(r.b * h_q + head) * p.t_q + r.t] = l > 0.f ? (m + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
  }
}

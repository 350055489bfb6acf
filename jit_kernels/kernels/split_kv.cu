// split_kv: selection attention for few rows (decode at small batch), where one CTA per
// (b, g, t) row would leave most SMs idle: the row's visible tiles are divided among SPLIT
// CTAs, each a contiguous share [s*ntiles/SPLIT, (s+1)*ntiles/SPLIT) of the tiles. Each CTA runs
// the same engine as query_outer (selected_row.cuh, attention_core.cuh) over its share and
// writes its partial result in fp32 to the workspace: O unnormalised relative to its row max m
// (log2 domain), m and l. The last of the row's SPLIT CTAs to finish merges the partials of
// each (row, head):
//   M = max_s m_s,  w_s = 2^(m_s - M),  l = sum_s w_s l_s,  O = (sum_s w_s O_s) / l,
//   LSE = (M + log2 l) ln 2,
// with empty shares (m = -inf, l = 0) weighing nothing and an all-empty row giving O = 0,
// LSE = -inf.
//
// One launch, not two. At small batch the whole call takes a few microseconds, and a second
// kernel (the combine) costs a launch, a grid drain and a grid ramp-up: as much as the work. So
// the combine is fused: every CTA, after writing its partial, makes the partial visible
// (__threadfence) and arrives on its row's counter in the workspace; the CTA whose arrival is
// the SPLIT-th reads the partials back (through L2, __ldcg) and writes O and LSE. It also
// resets the counter, so a complete launch leaves every counter as it found a fresh one.
//
// The counter must work whatever the workspace held before: workspaces are shared between
// variants, poisoned with NaN by checked runs, and a killed launch can leave a count behind.
// So a counter is a 64-bit word `tag << 16 | count`, where the tag is a hash of this launch's
// %gridid (never 0); an arrival that finds another tag (any garbage, or 0 after a reset) counts
// from 0. A stale word fools it only if its upper 48 bits equal this launch's hashed tag.
// Arrivals are a compare-and-swap loop on that word: at most SPLIT CTAs per row contend.
//
// Ordering (the classic threadfence-reduction pattern): every thread stores its share of the
// partial, executes __threadfence(), the CTA synchronises, and only then thread 0 arrives; the
// last CTA executes __threadfence() after seeing the final count and reads the partials with
// L1-bypassing loads, so no SM can see a partial older than the arrival that announced it.
//
// Example: B = 1, H_kv = 4, n = 16 blocks of 64, TILE = 64 and SPLIT = 16: 64 CTAs of one tile
// each instead of 4 CTAs of 16 tiles; the 4 last arrivals merge 16 partials of 16 x 128 floats.
//
// Knobs: NSA_KNOB_SPLIT (2..32), NSA_KNOB_WARPS (2, 4), NSA_KNOB_TILE (32, 64),
// NSA_KNOB_STAGES (2..4). K/V copies always carry the L2 evict-first hint: this design exists
// for decode, where every selected byte is read once. Launch: nsa_split_kv with
// grid.x = min(rows*SPLIT, 2^31-1) (CTAs loop over the rest), block = 32 * warps. Workspace:
// nsa_layout::split_workspace_bytes(rows, SPLIT, h, D_v); its contents need no initialisation.
#include "selected_row.cuh"

#if !defined(NSA_KNOB_SPLIT) || !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES)
#error "split_kv.cu needs the knobs split, warps, tile and stages (jit_kernels/catalog.cpp)"
#endif

constexpr int SPLIT = NSA_KNOB_SPLIT;
static_assert(SPLIT >= 1 && SPLIT <= nsa_layout::kMaxSplit, "split must be in [1, 32] (one lane per split)");

using Core = AttentionCore<nsa_layout::m_tiles(H), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES, true>;
static_assert(nsa_layout::split_combine_smem(SPLIT, H) <= Core::SMEM_BYTES,
              "the combine's weights must fit the engine region they reuse");

/// Arrives on a row's counter for this launch (tag: nonzero, low 16 bits clear); true for the
/// SPLIT-th arrival. Called by one thread.
__device__ __forceinline__ bool arrive_last(unsigned long long* counter, unsigned long long tag) {
  unsigned long long old = 0ull;  // the state a completed launch leaves: usually right, else CAS says
  for (;;) {
    const unsigned long long count = (old & ~0xffffull) == tag ? (old & 0xffffull) : 0ull;
    const unsigned long long seen = atomicCAS(counter, old, tag | (count + 1));
    if (seen == old) return count + 1 == (unsigned long long)SPLIT;
    old = seen;
  }
}

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_split_kv(const SelectionParams p) {
  constexpr long long kExtras = nsa_layout::row_list_bytes(NSEL);
  require_smem(nsa_layout::query_outer_smem(DQK, DV, H, NSEL, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  unsigned char* smem = dynamic_smem();
  Core core;
  core.init(smem + kExtras);
  SelectedRow row;
  // The row list's spare scalar slot carries "this CTA arrived last" from thread 0 to the CTA.
  volatile int* last_flag = reinterpret_cast<int*>(smem) + NSEL + 3;
  float* weights = reinterpret_cast<float*>(smem + kExtras);  // [H][SPLIT], after the engine is done

  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  float* part_o = reinterpret_cast<float*>(p.workspace);
  float* part_m = reinterpret_cast<float*>(p.workspace + nsa_layout::split_m_offset(rows, SPLIT, H, DV));
  float* part_l = reinterpret_cast<float*>(p.workspace + nsa_layout::split_l_offset(rows, SPLIT, H, DV));
  unsigned long long* counters =
      reinterpret_cast<unsigned long long*>(p.workspace + nsa_layout::split_counter_offset(rows, SPLIT, H, DV));
  unsigned long long tag = (grid_launch_id() * 0x9E3779B97F4A7C15ull) << 16;
  if (tag == 0ull) tag = 1ull << 16;
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

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
    // finish() ended with a barrier; every store of this CTA's partial precedes it.
    __threadfence();
    __syncthreads();
    if (tid == 0) *last_flag = arrive_last(counters + rid, tag) ? 1 : 0;
    __syncthreads();
    if (*last_flag == 0) continue;  // uniform across the CTA
    __threadfence();
    if (tid == 0) atomicExch(counters + rid, 0ull);  // every arrival of this launch is in

    // Weights: a warp per head, lane s holding split s's statistics.
    for (int i = warp; i < H; i += Core::THREADS / 32) {
      const long long slot_s = (rid * SPLIT + lane) * H + i;
      const float ms = lane < SPLIT ? __ldcg(part_m + slot_s) : NSA_NEG_INF;
      const float ls = lane < SPLIT ? __ldcg(part_l + slot_s) : 0.f;
      const float m = warp_max(ms);
      const float base = m == NSA_NEG_INF ? 0.f : m;
      const float ws = lane < SPLIT ? fast_exp2(ms - base) : 0.f;
      const float l = warp_sum(ws * ls);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (lane < SPLIT) weights[i * SPLIT + lane] = ws * inv;
      if (LSE != nullptr && lane == 0)
        LSE[(r.b * h_q + r.g * H + i) * p.t_q + r.t] = l > 0.f ? (m + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
    }
    __syncthreads();
    // O: a thread per (head, 8-wide chunk of D_v), the SPLIT partial chunks loaded 4 at a time.
    elem_t* o_rows = O + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
    for (int it = tid; it < H * (DV / 8); it += Core::THREADS) {
      const int i = it / (DV / 8), ch = it % (DV / 8);
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll 4
      for (int sp = 0; sp < SPLIT; ++sp) {
        const float w = weights[i * SPLIT + sp];
        const float4* src = reinterpret_cast<const float4*>(part_o + ((rid * SPLIT + sp) * H + i) * DV + ch * 8);
        const float4 x0 = __ldcg(src), x1 = __ldcg(src + 1);
        acc[0] += w * x0.x;
        acc[1] += w * x0.y;
        acc[2] += w * x0.z;
        acc[3] += w * x0.w;
        acc[4] += w * x1.x;
        acc[5] += w * x1.y;
        acc[6] += w * x1.z;
        acc[7] += w * x1.w;
      }
      store_output_chunk(o_rows + (long long)i * DV, nullptr, ch, acc, 0.f, 1.f);
    }
    __syncthreads();  // the weights and the row list are rebuilt for the next item
  }
}

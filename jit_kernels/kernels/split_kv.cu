// split_kv: selection attention for few rows (decode at small batch), where one CTA per
// (b, g, t) row would leave most SMs idle: the row's visible tiles are divided among SPLIT
// CTAs, each a contiguous share [s*ntiles/SPLIT, (s+1)*ntiles/SPLIT) of the tiles. Each CTA runs
// the same engine as query_outer (selected_row.cuh, attention_core.cuh) over its share and
// writes its partial result in fp32 to the workspace: O unnormalised relative to its row max m
// (log2 domain), m and l. The last of the row's SPLIT CTAs to finish merges the partials of
// each (row, head):
//   M = max_s m_s,  w_s = 2^(m_s - M),  l = sum_s w_s l_s,  O = (sum_s w_s O_s) / l,
//   LSE = (M + log2 l) ln 2,
// with empty shares (m = -inf) weighing nothing and an all-empty row giving O = 0, LSE = -inf.
// An empty share (a row with fewer visible tiles than SPLIT: -1 slots, causal cut) writes only
// its m = -inf: the merge never reads its O or l.
//
// One launch, not two. At small batch the whole call takes a few microseconds, and a second
// kernel (the combine) costs a launch, a grid drain and a grid ramp-up: as much as the work. So
// the combine is fused: every CTA stores its partial, synchronises, and one thread arrives on
// the row's counter with a release-acquire fetch-and-add at GPU scope; the CTA whose arrival is
// the SPLIT-th reads the partials back (through L2, __ldcg) and writes O and LSE. Why each part
// is the way it is (docs/kernels.md, "Why large splits were slow", has the measurements):
//
// - Fetch-and-add, not a compare-and-swap loop. The CTAs of a row do equal work and arrive
//   within a few hundred nanoseconds of each other; with a CAS loop exactly one of them wins
//   each round, so the last needed SPLIT round trips to L2 (~30 us at split 32). An add is one
//   round trip for every arrival however many contend.
// - The counter must work whatever the workspace held before: workspaces are shared between
//   variants, poisoned with NaN by checked runs, and a killed launch can leave a count behind.
//   Each arrival adds A = tag + 1, where the tag is a hash of this launch's %gridid shifted left
//   16 bits (never 0; A is odd and A = 1 mod 2^16). Starting from 0 (what a complete launch
//   leaves), the k-th arrival reads k * A, so it checks old == (old mod 2^16) * A and takes
//   k = old mod 2^16. From any other start F, every arrival reads F + k * A = (f + k) * A with
//   f = F * A^-1 mod 2^64, and the check passes iff f + k < 2^16: for garbage or a count left by
//   a launch with another tag, f is a pseudo-random 64-bit number and the check fails for all
//   arrivals of the row alike (a stale word fools it only when f < 2^16, chance 2^-48).
//   Arrivals that fail it fall back to a second word per row and the tagged CAS loop (an
//   arrival that finds another tag counts from 0), whose last arrival resets both words. So a
//   poisoned workspace costs one slow launch, and every launch leaves the counters at 0.
// - Ordering (the pattern of cooperative groups' grid barrier, with release-acquire instead of
//   a sequentially consistent fence): every thread stores its share of the partial, the CTA
//   synchronises, thread 0's arrival is a release; the last CTA's arrival is also an acquire,
//   after which it synchronises and every thread reads the partials with L1-bypassing loads.
// - The merge is one pass per (head, chunk) item: the thread loads m_s of every split for its
//   head, then l_s and the partial O chunks with loads that do not depend on each other, so a
//   row's merge is about one L2 round trip per item rather than one per head and per 4 splits.
//
// Example: B = 1, H_kv = 4, n = 16 blocks of 64, TILE = 64 and SPLIT = 8: 32 CTAs of two tiles
// each instead of 4 CTAs of 16 tiles; the 4 last arrivals merge 8 partials of 16 x 128 floats.
//
// The cluster variant (NSA_KNOB_CLUSTER = 1, sm_90 and newer, SPLIT <= 8) replaces all of that
// with on-chip traffic: the row's SPLIT CTAs are one thread-block cluster (__cluster_dims__), each
// keeps its partial in its own shared memory, and after a cluster barrier each merges 1/SPLIT of
// the row's (head, chunk) items by reading its peers' partials through distributed shared memory
// (cluster_merge.cuh). It drops the partial's round trip through L2, the release/acquire
// arrival and the serial merge by one CTA, and needs the SPLIT CTAs of a cluster resident on one
// GPC at once. On the H100 that bought ~1 us at B=16 and nothing at B=1, where each CTA is bound
// by its own instruction chain, not by the merge (docs/performance.md, v3); the tuner keeps both.
//
// Knobs: NSA_KNOB_SPLIT (2..32), NSA_KNOB_WARPS (2, 4), NSA_KNOB_TILE (32, 64),
// NSA_KNOB_STAGES (2..4), NSA_KNOB_CLUSTER (0, 1); the catalog offers only splits that give
// every CTA of a full row a tile and pipelines no deeper than a CTA's share. K/V copies always
// carry the L2 evict-first hint: this design exists for decode, where every selected byte is
// read once. Launch: nsa_split_kv with grid.x = min(rows*SPLIT, the largest multiple of SPLIT
// <= 2^31-1) (CTAs loop over the rest), block = 32 * warps. Workspace (cluster = 0 only):
// nsa_layout::split_workspace_bytes(rows, SPLIT, h, D_v); its contents need no initialisation.
#include "selected_row.cuh"
#if NSA_KNOB_CLUSTER
#include "cluster_merge.cuh"
#endif

#if !defined(NSA_KNOB_SPLIT) || !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES) || \
    !defined(NSA_KNOB_CLUSTER)
#error "split_kv.cu needs the knobs split, warps, tile, stages and cluster (jit_kernels/catalog.cpp)"
#endif

constexpr int SPLIT = NSA_KNOB_SPLIT;
static_assert(SPLIT >= 1 && SPLIT <= nsa_layout::kMaxSplit, "split must be in [1, 32]");
#if NSA_KNOB_CLUSTER
static_assert(SPLIT <= 8, "a cluster of more than 8 CTAs is not portable");
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define NSA_SPLIT_CLUSTER_DIMS __cluster_dims__(SPLIT, 1, 1)
#else
#error "split_kv with cluster=1 needs sm_90 or newer (thread-block clusters)"
#endif
#else
#define NSA_SPLIT_CLUSTER_DIMS
#endif

using Core = AttentionCore<nsa_layout::m_tiles(H), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES, true>;

/// Arrives on row counter `counter` (fallback word `fallback`) for the launch tagged `tag`
/// (nonzero, low 16 bits clear); true for the SPLIT-th arrival, which has then reset both words
/// to 0. Called by one thread, after a CTA barrier that follows every store of the CTA's partial.
__device__ __forceinline__ bool arrive_last(unsigned long long* counter, unsigned long long* fallback,
                                            unsigned long long tag) {
  const unsigned long long step = tag | 1ull;  // A = tag + 1
  const unsigned long long old = atom_add_acq_rel_gpu(counter, step);
  const unsigned long long k = old & 0xffffull;
  if (old == k * step) {  // the counter started at 0 this launch: k arrivals came before
    if (k + 1 != (unsigned long long)SPLIT) return false;
    st_relaxed_gpu(counter, 0ull);  // all SPLIT adds are in (this one was the last)
    return true;
  }
  // The counter held garbage when the launch began (and so fails this check for every arrival
  // of the row): count on the fallback word with the tagged CAS loop.
  unsigned long long seen_old = 0ull;
  for (;;) {
    const unsigned long long count = (seen_old & ~0xffffull) == tag ? (seen_old & 0xffffull) : 0ull;
    const unsigned long long seen = atom_cas_acq_rel_gpu(fallback, seen_old, tag | (count + 1));
    if (seen == seen_old) {
      if (count + 1 != (unsigned long long)SPLIT) return false;
      // Every arrival added to the counter before arriving here: both words can be cleared.
      st_relaxed_gpu(fallback, 0ull);
      st_relaxed_gpu(counter, 0ull);
      return true;
    }
    seen_old = seen;
  }
}

#if NSA_KNOB_CLUSTER
/// cluster = 1: the row's SPLIT CTAs are one cluster (consecutive blockIdx.x, grid.x a multiple
/// of SPLIT), so every CTA of the cluster takes the same items and its share is its rank.
__device__ __forceinline__ void split_rows_in_cluster(const SelectionParams& p, unsigned char* smem) {
  constexpr long long kExtras = nsa_layout::row_list_bytes(NSEL);
  float* part = reinterpret_cast<float*>(smem + kExtras);
  Core core;
  core.init(smem + kExtras + nsa_layout::split_partial_bytes(H, DV));
  SelectedRow row;
  const long long rows = p.batch * p.h_kv * p.t_q;
  for (long long item = blockIdx.x; item < rows * SPLIT; item += gridDim.x) {
    const long long rid = item / SPLIT;
    const int s = (int)(item % SPLIT);
    const RowId r = split_row(rid, p);
    row.build(reinterpret_cast<int*>(smem), p, r);
    const long long ntiles = (row.npos + Core::TILE_KEYS - 1) / Core::TILE_KEYS;
    const long long first = s * ntiles / SPLIT, last = (s + 1) * ntiles / SPLIT;
    if (last > first) {
      attend_selected_row(core, row, p, r, first, last - first,
                          [&](int i, int ch, const float (&acc)[8], float m, float l) {
                            store_partial_chunk(part, i, ch, acc, m, l);
                          });
    } else {
      for (int i = threadIdx.x; i < H; i += Core::THREADS) part[H * DV + i] = NSA_NEG_INF;
    }
    cluster_sync();  // every CTA's partial is written and visible cluster-wide
    merge_in_cluster<SPLIT, Core::THREADS>(part, p, r);
    cluster_sync();  // no CTA leaves or rebuilds its partial while a peer may still read it
  }
}
#else
/// cluster = 0: partials in the global workspace, merged by the row's last CTA to arrive.
__device__ __forceinline__ void split_rows_through_l2(const SelectionParams& p, unsigned char* smem) {
  constexpr long long kExtras = nsa_layout::row_list_bytes(NSEL);
  Core core;
  core.init(smem + kExtras);
  SelectedRow row;
  // The row list's spare scalar slot carries "this CTA arrived last" from thread 0 to the CTA.
  volatile int* last_flag = reinterpret_cast<int*>(smem) + NSEL + 3;

  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  float* part_o = reinterpret_cast<float*>(p.workspace);
  float* part_m = reinterpret_cast<float*>(p.workspace + nsa_layout::split_m_offset(rows, SPLIT, H, DV));
  float* part_l = reinterpret_cast<float*>(p.workspace + nsa_layout::split_l_offset(rows, SPLIT, H, DV));
  unsigned long long* counters =
      reinterpret_cast<unsigned long long*>(p.workspace + nsa_layout::split_counter_offset(rows, SPLIT, H, DV));
  unsigned long long* fallbacks =
      reinterpret_cast<unsigned long long*>(p.workspace + nsa_layout::split_fallback_offset(rows, SPLIT, H, DV));
  unsigned long long tag = (grid_launch_id() * 0x9E3779B97F4A7C15ull) << 16;
  if (tag == 0ull) tag = 1ull << 16;
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);
  const int tid = threadIdx.x;

  for (long long item = blockIdx.x; item < rows * SPLIT; item += gridDim.x) {
    const long long rid = item / SPLIT;
    const int s = (int)(item % SPLIT);
    const RowId r = split_row(rid, p);
    row.build(reinterpret_cast<int*>(smem), p, r);
    const long long ntiles = (row.npos + Core::TILE_KEYS - 1) / Core::TILE_KEYS;
    const long long first = s * ntiles / SPLIT, last = (s + 1) * ntiles / SPLIT;
    if (last > first) {
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
    } else {
      // An empty share: no tile to load, no engine merge, no O; m = -inf tells the merge.
      for (int i = tid; i < H; i += Core::THREADS) part_m[item * H + i] = NSA_NEG_INF;
    }
    __syncthreads();  // every store of this CTA's partial precedes thread 0's release
    if (tid == 0) *last_flag = arrive_last(counters + rid, fallbacks + rid, tag) ? 1 : 0;
    __syncthreads();
    if (*last_flag == 0) continue;  // uniform across the CTA

    // The merge: a thread per (head i, 8-wide chunk ch of D_v). m_s of every split first (for
    // the max), then l_s and the partial chunks; neither batch depends on the other's values,
    // so the loads of an item are in flight together.
    elem_t* o_rows = O + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
    float* lse_rows = LSE != nullptr ? LSE + (r.b * h_q + r.g * H) * p.t_q + r.t : nullptr;
    for (int it = tid; it < H * (DV / 8); it += Core::THREADS) {
      const int i = it / (DV / 8), ch = it % (DV / 8);
      const long long slot0 = rid * SPLIT * H + i;  // split sp's slot: slot0 + sp * H
      float ms[SPLIT];
      float mx = NSA_NEG_INF;
#pragma unroll
      for (int sp = 0; sp < SPLIT; ++sp) {
        ms[sp] = __ldcg(part_m + slot0 + sp * H);
        mx = fmaxf(mx, ms[sp]);
      }
      const float base = mx == NSA_NEG_INF ? 0.f : mx;
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = 0.f;
      float l = 0.f;
#pragma unroll 8
      for (int sp = 0; sp < SPLIT; ++sp) {
        const float4* src = reinterpret_cast<const float4*>(part_o + (slot0 + sp * H) * DV + ch * 8);
        const float4 x0 = __ldcg(src), x1 = __ldcg(src + 1);
        const float ls = __ldcg(part_l + slot0 + sp * H);
        // An empty share wrote only m = -inf: its l and O are whatever the workspace held
        // (NaN after a checked run's poisoning), so they are skipped, not multiplied by 0.
        const bool live = ms[sp] != NSA_NEG_INF;
        const float w = live ? fast_exp2(ms[sp] - base) : 0.f;
        l += live ? w * ls : 0.f;
        acc[0] += live ? w * x0.x : 0.f;
        acc[1] += live ? w * x0.y : 0.f;
        acc[2] += live ? w * x0.z : 0.f;
        acc[3] += live ? w * x0.w : 0.f;
        acc[4] += live ? w * x1.x : 0.f;
        acc[5] += live ? w * x1.y : 0.f;
        acc[6] += live ? w * x1.z : 0.f;
        acc[7] += live ? w * x1.w : 0.f;
      }
      store_output_chunk(o_rows + (long long)i * DV, lse_rows != nullptr ? lse_rows + (long long)i * p.t_q : nullptr,
                         ch, acc, mx, l);
    }
    __syncthreads();  // the row list is rebuilt for the next item
  }
}
#endif

extern "C" __global__ void NSA_SPLIT_CLUSTER_DIMS __launch_bounds__(Core::THREADS, 1) nsa_split_kv(const SelectionParams p) {
  require_smem(nsa_layout::split_kv_smem(DQK, DV, H, NSEL, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES,
                                         NSA_KNOB_CLUSTER));
#if NSA_KNOB_CLUSTER
  split_rows_in_cluster(p, dynamic_smem());
#else
  split_rows_through_l2(p, dynamic_smem());
#endif
}

// prefill_shared: prefill selection attention that loads a K/V block once for several queries.
// One CTA takes QTILE consecutive query rows t0 .. t0+QTILE-1 of one (b, g); its M rows are the
// (query, head) pairs r = q * h + head (QTILE * h <= 128). Neighbouring queries of NSA select
// largely the same blocks (block 0, the most recent ones, and clustered earlier ones), so the
// CTA streams the UNION of their selections through the engine (attention_core.cuh) and masks,
// per (row, key), what that row's query did not select or may not see.
//
// Building the union, in shared memory, for QTILE * n slots:
//   1. each slot holds its block c if c >= 0 and the block starts before its query's visible
//      limit lim_q = min(p(t0+q)+1, T_kv), else INT_MAX;
//   2. a bitonic sort (E = QTILE*n rounded up to a power of two) and a warp-ballot compaction of
//      the distinct values give the union list u[0 .. nu) in ascending block order;
//   3. each valid slot finds its block in the list by binary search and sets its query's bit in
//      mask[u] (atomicOr), so mask[u] says which queries selected block u.
// Positions of the union are then q -> key u[q / block] * block + q % block, as in
// selected_row.cuh. A key at position pos is visible to row r = (q, head) iff bit q of
// mask[pos / block] is set and key < lim_q; keys at or past the tile's largest limit are
// zero-filled at load time (never read). A 16-key chunk of a block that every query selected
// and that lies below the smallest limit needs no mask at all, so clustered tiles are mostly
// unmasked.
//
// Example: QTILE = 2, n = 3, block 64, prefill T = 1000, t0 = 700 (p = 700, 701): query 0 selects
// {0, 10, 4}, query 1 selects {10, 7, 0}: union {0, 4, 7, 10}, masks {0b11, 0b01, 0b10, 0b11};
// block 10 (keys 640..703) is cut at 700 for query 0 and at 701 for query 1.
//
// Knobs: NSA_KNOB_QTILE (1, 2, 4, 8), NSA_KNOB_WARPS (4, 8), NSA_KNOB_TILE (32, 64, 128),
// NSA_KNOB_STAGES (2, 3). Launch: grid.x = min(B * H_kv * ceil(T_q / QTILE), 2^31-1), block =
// 32 * warps, dynamic shared memory = nsa_layout::prefill_shared_smem(...). No workspace.
#include "attention_core.cuh"

#if !defined(NSA_KNOB_QTILE) || !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES)
#error "prefill_shared.cu needs the knobs qtile, warps, tile and stages (jit_kernels/catalog.cpp)"
#endif

constexpr int QTILE = NSA_KNOB_QTILE;
constexpr int MROWS = QTILE * H;
constexpr int SLOTS = QTILE * NSEL;
constexpr int SORT_N = nsa_layout::union_sort_size(QTILE, NSEL);
constexpr int kNone = 0x7fffffff;
static_assert(QTILE >= 1 && QTILE <= 32, "qtile must be in [1, 32] (one mask bit per query)");
static_assert(MROWS <= nsa_layout::kMaxRows, "qtile * h must be at most 128");

using Core = AttentionCore<nsa_layout::m_tiles(MROWS), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES>;

namespace {

/// The block of slot e (query e / n, slot e % n) if that query may see any of it, else kNone.
__device__ __forceinline__ int slot_block(const int* sel_tile, int e, int nq, long long lim0) {
  const int q = e / NSEL;
  if (q >= nq) return kNone;
  const int c = sel_tile[e];  // rows of block_idx for t0, t0+1, ... are consecutive
  return visible_in_block(c, lim0 + q) > 0 ? c : kNone;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_prefill_shared(const SelectionParams p) {
  constexpr int TILE = Core::TILE_KEYS;
  constexpr int THREADS = Core::THREADS;
  constexpr long long kExtras = nsa_layout::union_bytes(QTILE, NSEL);
  require_smem(nsa_layout::prefill_shared_smem(DQK, DV, H, NSEL, QTILE, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  unsigned char* smem = dynamic_smem();
  int* sort_s = reinterpret_cast<int*>(smem);
  int* ulist = sort_s + SORT_N;
  unsigned* umask = reinterpret_cast<unsigned*>(ulist + SLOTS);
  int* scalars = reinterpret_cast<int*>(umask + SLOTS);
  Core core;
  core.init(smem + kExtras);
  const int tid = threadIdx.x;

  const long long qtiles = (p.t_q + QTILE - 1) / QTILE;
  const long long items = p.batch * p.h_kv * qtiles;
  const long long h_q = p.h_kv * H;
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);

  for (long long item = blockIdx.x; item < items; item += gridDim.x) {
    const long long qt = item % qtiles;
    const long long bg = item / qtiles;
    const long long g = bg % p.h_kv, b = bg / p.h_kv;
    const long long t0 = qt * QTILE;
    const int nq = p.t_q - t0 < QTILE ? (int)(p.t_q - t0) : QTILE;
    const long long lim0 = visible_limit(t0, p);  // query q's limit is lim0 + q (never above T_kv)
    const long long lim_max = lim0 + nq - 1;
    const int* sel_tile = reinterpret_cast<const int*>(p.block_idx) + ((b * p.h_kv + g) * p.t_q + t0) * NSEL;

    // 1-2. The union of the tile's selections, sorted and deduplicated.
    for (int e = tid; e < SORT_N; e += THREADS) sort_s[e] = e < SLOTS ? slot_block(sel_tile, e, nq, lim0) : kNone;
    __syncthreads();
    for (int k = 2; k <= SORT_N; k <<= 1)
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int i = tid; i < SORT_N; i += THREADS) {
          const int ixj = i ^ j;
          if (ixj > i) {
            const int a = sort_s[i], c = sort_s[ixj];
            const bool ascending = (i & k) == 0;
            if ((a > c) == ascending) {
              sort_s[i] = c;
              sort_s[ixj] = a;
            }
          }
        }
        __syncthreads();
      }
    if (tid < 32) {
      int nu = 0;
      for (int i0 = 0; i0 < SORT_N; i0 += 32) {
        const int i = i0 + tid;
        const int v = i < SORT_N ? sort_s[i] : kNone;
        const int prev = (i > 0 && i < SORT_N) ? sort_s[i - 1] : -1;
        const bool keep = v != kNone && v != prev;
        const unsigned kb = __ballot_sync(0xffffffffu, keep);
        if (keep) {
          const int u = nu + __popc(kb & ((1u << tid) - 1u));
          ulist[u] = v;
          umask[u] = 0u;
        }
        nu += __popc(kb);
      }
      if (tid == 0) scalars[0] = nu;
    }
    __syncthreads();
    const int nu = scalars[0];

    // 3. Which queries selected each union block.
    for (int e = tid; e < SLOTS; e += THREADS) {
      const int c = slot_block(sel_tile, e, nq, lim0);
      if (c == kNone) continue;
      int lo = 0, hi = nu - 1;  // c is in ulist[0, nu): binary search
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (ulist[mid] < c) lo = mid + 1;
        else hi = mid;
      }
      atomicOr(&umask[lo], 1u << (e / NSEL));
    }
    __syncthreads();

    const unsigned all_queries = nq == 32 ? 0xffffffffu : ((1u << nq) - 1u);
    const long long npos = (long long)nu * BLK;
    const elem_t* k_bg = ptr_elem(p.k) + (b * p.t_kv * p.h_kv + g) * DQK;
    const elem_t* v_bg = ptr_elem(p.v) + (b * p.t_kv * p.h_kv + g) * DV;
    const long long k_stride = p.h_kv * DQK, v_stride = p.h_kv * DV;
    // Row r's Q: Q[b][t0 + r / h][g * h + r % h]; rows past the tile's queries are padding.
    const elem_t* q_tile = ptr_elem(p.q) + ((b * p.t_q + t0) * h_q + g * H) * DQK;

    core.run(
        0, (npos + TILE - 1) / TILE, p.scale * NSA_LOG2E,
        [&]() {
          core.load_q_async([&](int r) -> const elem_t* {
            return r < nq * H ? q_tile + ((long long)(r / H) * h_q + r % H) * DQK : nullptr;
          });
        },
        [&](int stage, long long tile) {
          core.load_tile_async(
              stage,
              [&](int i) -> long long {
                const long long pos = tile * TILE + i;
                if (pos >= npos) return -1;
                const long long key = (long long)ulist[pos >> LOG_BLK] * BLK + (pos & (BLK - 1));
                return key < lim_max ? key : -1;
              },
              k_bg, k_stride, v_bg, v_stride);
        },
        [&](long long tile) {
          // Full when every block the tile touches was selected by every query and ends at or
          // below the smallest limit (lim0).
          const long long pos0 = tile * TILE;
          if (pos0 + TILE > npos) return false;
          for (long long u = pos0 >> LOG_BLK; u <= (pos0 + TILE - 1) >> LOG_BLK; ++u)
            if (umask[u] != all_queries || (long long)(ulist[u] + 1) * BLK > lim0) return false;
          return true;
        },
        [&](long long tile, int c0, int row) {
          const long long pos = tile * TILE + c0;
          const int q = row / H;
          if (pos >= npos || q >= nq) return 0;
          const int u = (int)(pos >> LOG_BLK);
          if (((umask[u] >> q) & 1u) == 0u) return 0;
          const long long left = lim0 + q - ((long long)ulist[u] * BLK + (pos & (BLK - 1)));
          return left <= 0 ? 0 : (left >= 16 ? 16 : (int)left);
        });
    core.finish(nq * H, [&](int r, int ch, const float (&acc)[8], float m, float l) {
      const long long t = t0 + r / H;
      const long long head = g * H + r % H;
      store_output_chunk(O + ((b * p.t_q + t) * h_q + head) * DV, LSE != nullptr ? LSE + (b * h_q + head) * p.t_q + t : nullptr,
                         ch, acc, m, l);
    });
  }
}

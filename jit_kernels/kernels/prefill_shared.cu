// prefill_shared: prefill selection attention that loads a K/V block once for several queries.
// One CTA takes QTILE consecutive query rows t0 .. t0+QTILE-1 of one (b, g); its M rows are the
// (query, head) pairs r = q * h + head (QTILE * h <= 128). Neighbouring queries of NSA select
// largely the same blocks (block 0, the most recent ones, and clustered earlier ones), so the
// CTA streams the UNION of their selections through the engine (attention_core.cuh) and masks,
// per (row, key), what that row's query did not select or may not see.
//
// The union is built in shared memory by query_tile_union.cuh: ulist[0 .. nu) in ascending
// block order, umask[u] the queries that selected ulist[u], and nlow (the blocks every selecting
// query sees whole).
// Positions of the union are then q -> key u[q / block] * block + q % block, as in
// selected_row.cuh. A key at position pos is visible to row r = (q, head) iff bit q of
// mask[pos / block] is set and key < lim_q; keys at or past the tile's largest limit are
// zero-filled at load time (never read).
//
// Per warp, not per CTA. The engine gives each warp WARP_ROWS rows (queries q_lo .. q_hi, one
// query per warp when h = 16 and the warps all sit on rows: qtile 8 with 8 warps, qtile 4
// with 4) and TKW columns of every tile, and asks two questions per tile, each answered for
// the warp's own rows and columns only (one or two shared-memory reads):
//   - skip: none of the warp's queries selected a block under its columns, or none sees a key
//     of it. The warp then leaves the tile out: no S, no softmax update, no P V (exact: the
//     engine's "Skipping"). With the clustered pattern and qtile 8, a tile is one union block
//     of ~21, and each query uses 16: about 28% of a warp's tiles go; with the random one most.
//   - full: every query of the warp selected every block under its columns and sees all of
//     its keys. Then no mask is applied, so only the diagonal block (and blocks a neighbour
//     selected and this warp's query did not, which are skipped anyway) pays for masking.
// Tile 64 = block 64 makes both exact per block; a 128-key tile spans two union blocks and
// is skipped only when the warp wants neither.
//
// Knobs: NSA_KNOB_QTILE (1, 2, 4, 8), NSA_KNOB_WARPS (4, 8), NSA_KNOB_TILE (32, 64, 128),
// NSA_KNOB_STAGES (2, 3). Launch: grid.x = min(B * H_kv * ceil(T_q / QTILE), 2^31-1), block =
// 32 * warps, dynamic shared memory = nsa_layout::prefill_shared_smem(...). No workspace.
#include "attention_core.cuh"
#include "query_tile_union.cuh"

#if !defined(NSA_KNOB_QTILE) || !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES)
#error "prefill_shared.cu needs the knobs qtile, warps, tile and stages (jit_kernels/catalog.cpp)"
#endif

constexpr int QTILE = NSA_KNOB_QTILE;
constexpr int MROWS = QTILE * H;
static_assert(MROWS <= nsa_layout::kMaxRows, "qtile * h must be at most 128");

using Core = AttentionCore<nsa_layout::m_tiles(MROWS), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES, false, 128>;
using Union = QueryTileUnion<QTILE, Core::THREADS>;

namespace {

/// Issues the copies of union tile `tile` into `stage` of the engine's ring: tile row r is union
/// position pos = tile * TILE + r, key ulist[pos / BLK] * BLK + pos % BLK; rows at or past the
/// union's end (nu blocks) or whose key is at or past lim_max (no query of the tile sees it)
/// are zero-filled and never read. When a tile lies in one block (TILE <= BLK) and the threads
/// divide the 16-byte chunks of a row evenly (D = 64, 128, 256 with 4 or 8 warps), the block id
/// is read once and each thread's rows and chunks are fixed: its copies issue back to back.
/// Through the engine's generic loop, with a key functor that reads ulist and branches per
/// copy, the loads took ~40% of the kernel's time (H100, T=8192, docs/kernels.md). Other
/// shapes (D_qk = 192, tile 128) keep that generic loop: ptxas has no registers to spare there
/// (the fixed-row code spilled).
template <class C>
__device__ __forceinline__ void load_union_tile(C& core, int stage, long long tile, const int* ulist, int nu,
                                                long long lim_max, const elem_t* k_bg, long long k_stride,
                                                const elem_t* v_bg, long long v_stride) {
  constexpr int TILE = C::TILE_KEYS;
  const int pos0 = (int)tile * TILE;  // union positions fit an int (see npos)
  if constexpr (TILE <= BLK && C::FIXED_ROWS) {
    // The whole tile lies in union block pos0 / BLK (< nu: the union has a whole number of
    // tiles); one read of its id, then branch-free rows.
    const long long key0 = (long long)ulist[pos0 >> LOG_BLK] * BLK + (pos0 & (BLK - 1));
    core.load_tile_fixed_async(
        stage, [&](int r) -> long long { return key0 + r < lim_max ? key0 + r : -1; }, k_bg, k_stride, v_bg, v_stride);
  } else {
    core.load_tile_async(
        stage,
        [&](int r) -> long long {
          const int pos = pos0 + r;
          if (pos >= nu * BLK) return -1;
          const long long key = (long long)ulist[pos >> LOG_BLK] * BLK + (pos & (BLK - 1));
          return key < lim_max ? key : -1;
        },
        k_bg, k_stride, v_bg, v_stride);
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_prefill_shared(const SelectionParams p) {
  constexpr int TILE = Core::TILE_KEYS;
  constexpr int THREADS = Core::THREADS;
  constexpr long long kExtras = nsa_layout::union_bytes(QTILE, NSEL);
  require_smem(nsa_layout::prefill_shared_smem(DQK, DV, H, NSEL, QTILE, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  unsigned char* smem = dynamic_smem();
  Union un;
  un.carve(smem);
  const int* ulist = un.ulist;
  const unsigned* umask = un.umask;
  Core core;
  core.init(smem + kExtras);
  // The queries of this warp's rows (bits q_lo .. q_hi; none for a warp of padding rows only).
  const int q_lo = core.warp_row0() / H;
  const int q_last = (core.warp_row0() + Core::WARP_ROWS - 1) / H;
  const int q_hi = q_last < QTILE - 1 ? q_last : QTILE - 1;
  const unsigned warp_queries = q_lo > q_hi ? 0u : ((2u << q_hi) - 1u) & ~((1u << q_lo) - 1u);

  const long long qtiles = (p.t_q + QTILE - 1) / QTILE;
  const long long items = p.batch * p.h_kv * qtiles;
  const long long h_q = p.h_kv * H;
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);

  for (long long item = blockIdx.x; item < items; item += gridDim.x) {
    const QueryTile tile = query_tile<QTILE>(item, qtiles, p);
    const long long b = tile.b, g = tile.g, t0 = tile.t0, lim0 = tile.lim0;
    const int nq = tile.nq;
    const long long lim_max = lim0 + nq - 1;

    un.build(tile.sel, nq, lim0);
    const int nu = un.nu, nlow = un.nlow;

    const unsigned all_queries = nq == 32 ? 0xffffffffu : ((1u << nq) - 1u);
    const int npos = nu * BLK;  // union positions (at most 32 * 128 blocks of 256 keys: an int)
    const elem_t* k_bg = ptr_elem(p.k) + (b * p.t_kv * p.h_kv + g) * DQK;
    const elem_t* v_bg = ptr_elem(p.v) + (b * p.t_kv * p.h_kv + g) * DV;
    const long long k_stride = p.h_kv * DQK, v_stride = p.h_kv * DV;
    // Row r's Q: Q[b][t0 + r / h][g * h + r % h]; rows past the tile's queries are padding.
    const elem_t* q_tile = ptr_elem(p.q) + ((b * p.t_q + t0) * h_q + g * H) * DQK;

    // This warp's share of tile i: its columns [warp_col0, + TKW) are kSegs segments of
    // kSegKeys union positions, one per union block (columns start TKW-aligned, and TKW and
    // BLK are powers of two). Segment j starts at position seg_pos(i, j).
    constexpr int kSegs = Core::TKW > BLK ? Core::TKW / BLK : 1;
    constexpr int kSegKeys = Core::TKW > BLK ? BLK : Core::TKW;
    const unsigned real_queries = warp_queries & all_queries;  // (umask has no bit past nq)
    auto seg_pos = [&](long long tile, int j) { return (int)tile * TILE + core.warp_col0() + j * kSegKeys; };

    core.run(
        0, (npos + TILE - 1) / TILE, p.scale * NSA_LOG2E,
        [&]() {
          core.load_q_async([&](int r) -> const elem_t* {
            return r < nq * H ? q_tile + ((long long)(r / H) * h_q + r % H) * DQK : nullptr;
          });
        },
        [&](int stage, long long tile) {
          load_union_tile(core, stage, tile, ulist, nu, lim_max, k_bg, k_stride, v_bg, v_stride);
        },
        [&](long long tile) {
          // Unmasked for this warp when each block under its columns was selected by every
          // real query of its rows and ends at or below the smallest limit. Padding rows then
          // see unmasked zero scores: finite, never stored.
          if (real_queries == 0u) return false;
#pragma unroll
          for (int j = 0; j < kSegs; ++j) {
            const int pos = seg_pos(tile, j);
            if (pos >= npos) return false;
            const int u = pos >> LOG_BLK;
            if (u >= nlow || (umask[u] & real_queries) != real_queries) return false;
          }
          return true;
        },
        [&](long long tile, int c0, int row) {
          const int pos = (int)tile * TILE + c0;
          const int q = row / H;
          if (pos >= npos || q >= nq) return 0;
          const int u = pos >> LOG_BLK;
          if (((umask[u] >> q) & 1u) == 0u) return 0;
          const long long left = lim0 + q - ((long long)ulist[u] * BLK + (pos & (BLK - 1)));
          return left <= 0 ? 0 : (left >= 16 ? 16 : (int)left);
        },
        [&](long long tile) {
          // Skip when no query of this warp's rows selected a block under its columns, or the
          // latest selecting query (the largest limit) sees none of the segment's keys: a
          // selecting query sees the block's first key (slot_block), so that test is needed
          // only for a segment that starts inside its block (TKW < BLK). Positions past npos
          // are zero-fill, masked for every row.
#pragma unroll
          for (int j = 0; j < kSegs; ++j) {
            const int pos = seg_pos(tile, j);
            if (pos >= npos) break;
            const unsigned sel = umask[pos >> LOG_BLK] & real_queries;
            if (sel == 0u) continue;
            if (kSegKeys == BLK) return false;
            const long long first_key = (long long)ulist[pos >> LOG_BLK] * BLK + (pos & (BLK - 1));
            if (first_key < lim0 + (31 - __clz(sel))) return false;
          }
          return true;
        });
    core.finish(nq * H, [&](int r, int ch, const float (&acc)[8], float m, float l) {
      const long long t = t0 + r / H;
      const long long head = g * H + r % H;
      store_output_chunk(O + ((b * p.t_q + t) * h_q + head) * DV, LSE != nullptr ? LSE + (b * h_q + head) * p.t_q + t : nullptr,
                         ch, acc, m, l);
    });
  }
}

// One (b, g, t) row of the selection, as the row-wise designs (query_outer, split_kv) walk it.
//
// The row's n slots are compacted once, by warp 0, into a list in shared memory: first every
// block that is wholly visible (c >= 0 and (c+1)*block <= lim), then the one block that holds
// lim-1 and is cut by it (at most one: valid entries are distinct), where lim = min(p(t)+1, T_kv).
// Empty slots (-1), blocks past p(t) and blocks past T_kv are dropped here and never loaded.
// The visible keys of the row are then the positions [0, npos) of the list, with
//   npos = nfull * block + (keys of the cut block),
// position q being key list[q / block] * block + q % block. That makes masking one comparison
// (position < npos) whatever the selection looked like, and every tile but the last unmasked.
//
// Example: block 64, n = 4, T_kv = 1000, decode (p = 999, lim = 1000), slots {15, -1, 3, 20}:
// block 15 covers keys 960..1023 and is cut at 1000 (40 visible), block 20 is past T_kv, so
// list = {3, 15}, nfull = 1, npos = 64 + 40 = 104; with 64-key tiles, tile 0 is keys 192..255
// (full) and tile 1 is keys 960..999 then 24 zero-filled, masked positions.
#pragma once

#include "attention_core.cuh"

struct SelectedRow {
  int* list;          // shared: compacted block ids
  int nfull;          // wholly visible blocks (list[0, nfull))
  long long npos;     // visible positions

  /// Builds the list for row (b, g, t) into `shared` (row_list_bytes(n)); every thread calls it
  /// and gets the same answer. Synchronises the CTA.
  __device__ __forceinline__ void build(int* shared, const SelectionParams& p, const RowId& r) {
    list = shared;
    int* scalars = shared + NSEL;  // nfull, cut block, cut count
    const long long lim = visible_limit(r.t, p);
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      const int* sel = reinterpret_cast<const int*>(p.block_idx) + ((r.b * p.h_kv + r.g) * p.t_q + r.t) * NSEL;
      int nf = 0, cut = -1;
      for (int j0 = 0; j0 < NSEL; j0 += 32) {
        const int j = j0 + lane;
        const int c = j < NSEL ? sel[j] : -1;
        const int vis = visible_in_block(c, lim);
        const bool is_full = vis == BLK;
        const bool is_cut = vis > 0 && vis < BLK;
        const unsigned fb = __ballot_sync(0xffffffffu, is_full);
        if (is_full) list[nf + __popc(fb & ((1u << lane) - 1u))] = c;
        nf += __popc(fb);
        const unsigned cb = __ballot_sync(0xffffffffu, is_cut);
        if (cb != 0u) cut = __shfl_sync(0xffffffffu, c, __ffs(cb) - 1);
      }
      if (lane == 0) {
        scalars[0] = nf;
        scalars[1] = cut;
        scalars[2] = cut >= 0 ? visible_in_block(cut, lim) : 0;
        if (cut >= 0) list[nf] = cut;
      }
    }
    __syncthreads();
    nfull = scalars[0];
    npos = (long long)nfull * BLK + scalars[2];
  }

  /// Key row (element row index within the (b, g) slice) of visible position q, or -1.
  __device__ __forceinline__ long long key_at(long long q) const {
    if (q >= npos) return -1;
    return (long long)list[q >> LOG_BLK] * BLK + (q & (BLK - 1));
  }
};

/// Runs the engine over tiles [first, first + count) of the row's visible positions (TILE
/// positions per tile) and hands the merged result to `emit` (see AttentionCore::finish).
template <class Core, class Emit>
__device__ __forceinline__ void attend_selected_row(Core& core, const SelectedRow& row, const SelectionParams& p,
                                                    const RowId& r, long long first, long long count, Emit emit) {
  constexpr int TILE = Core::TILE_KEYS;
  const long long h_q = p.h_kv * H;
  const elem_t* q_rows = ptr_elem(p.q) + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DQK;
  const elem_t* k_bg = ptr_elem(p.k) + (r.b * p.t_kv * p.h_kv + r.g) * DQK;
  const elem_t* v_bg = ptr_elem(p.v) + (r.b * p.t_kv * p.h_kv + r.g) * DV;
  const long long k_stride = p.h_kv * DQK, v_stride = p.h_kv * DV;
  const long long npos = row.npos;
  core.run(
      first, count, p.scale * NSA_LOG2E,
      [&]() { core.load_q_async([&](int i) -> const elem_t* { return i < H ? q_rows + (long long)i * DQK : nullptr; }); },
      [&](int stage, long long tile) {
        if constexpr (TILE <= BLK && Core::FIXED_ROWS) {
          // The tile lies in one listed block (tiles never straddle blocks when TILE <= BLK): one
          // read of its id, then keys key0 + r for the tile's visible rows r < npos - pos0.
          const long long pos0 = tile * TILE;
          const long long key0 = (long long)row.list[pos0 >> LOG_BLK] * BLK + (pos0 & (BLK - 1));
          const long long left = npos - pos0;
          core.load_tile_fixed_async(
              stage, [&](int r) -> long long { return r < left ? key0 + r : -1; }, k_bg, k_stride, v_bg, v_stride);
        } else {
          core.load_tile_async(
              stage, [&](int i) { return row.key_at(tile * TILE + i); }, k_bg, k_stride, v_bg, v_stride);
        }
      },
      [&](long long tile) { return (tile + 1) * TILE <= npos; },
      [&](long long tile, int c0, int) {
        const long long left = npos - (tile * TILE + c0);
        return left <= 0 ? 0 : (left >= 16 ? 16 : (int)left);
      });
  core.finish(H, emit);
}

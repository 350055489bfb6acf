// query_outer: group-centric selection attention. One CTA per (b, g, t) row loads each selected
// K/V tile once for all h query heads of group g, which sit in the MMA M dimension (padded to
// 16). The row's visible keys are compacted (selected_row.cuh) and streamed through a STAGES-deep
// cp.async pipeline in tiles of TILE keys; warps split each tile's key columns (and the rows when
// h > 16), keep the online softmax in registers, and merge through shared memory at the end
// (attention_core.cuh). CTAs are numbered (b, g, t) with t fastest, so neighbouring queries of
// one group, which share blocks, run close in time and meet in L2.
//
// Knobs: NSA_KNOB_WARPS (4, 8), NSA_KNOB_TILE (32, 64, 128 keys), NSA_KNOB_STAGES (2..4),
// NSA_KNOB_EVICT (1: K/V copies carry the L2 evict-first hint, for decode, where each selected
// byte is read once; 0: plain copies, for prefill, where neighbouring queries re-read blocks).
// Launch: grid.x = min(rows, 2^31-1) (CTAs loop over rows), block = 32 * warps,
// dynamic shared memory = nsa_layout::query_outer_smem(...). No workspace.
#include "selected_row.cuh"

#if !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_TILE) || !defined(NSA_KNOB_STAGES) || !defined(NSA_KNOB_EVICT)
#error "query_outer.cu needs the knobs warps, tile, stages and evict (jit_kernels/catalog.cpp)"
#endif

using Core =
    AttentionCore<nsa_layout::m_tiles(H), NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES, NSA_KNOB_EVICT != 0>;

extern "C" __global__ void __launch_bounds__(Core::THREADS, 1) nsa_query_outer(const SelectionParams p) {
  constexpr long long kExtras = nsa_layout::row_list_bytes(NSEL);
  require_smem(nsa_layout::query_outer_smem(DQK, DV, H, NSEL, NSA_KNOB_WARPS, NSA_KNOB_TILE, NSA_KNOB_STAGES));
  unsigned char* smem = dynamic_smem();
  Core core;
  core.init(smem + kExtras);
  SelectedRow row;

  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  elem_t* O = ptr_elem_mut(p.o);
  float* LSE = reinterpret_cast<float*>(p.lse);
  for (long long rid = blockIdx.x; rid < rows; rid += gridDim.x) {
    const RowId r = split_row(rid, p);
    row.build(reinterpret_cast<int*>(smem), p, r);
    const long long ntiles = (row.npos + Core::TILE_KEYS - 1) / Core::TILE_KEYS;
    // Output rows of heads g*h .. g*h+h-1 are consecutive; their LSE entries are T_q apart.
    elem_t* o_rows = O + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
    float* lse_rows = LSE != nullptr ? LSE + (r.b * h_q + r.g * H) * p.t_q + r.t : nullptr;
    attend_selected_row(core, row, p, r, 0, ntiles, [&](int i, int ch, const float (&acc)[8], float m, float l) {
      store_output_chunk(o_rows + (long long)i * DV, lse_rows != nullptr ? lse_rows + i * p.t_q : nullptr, ch, acc, m, l);
    });
  }
}

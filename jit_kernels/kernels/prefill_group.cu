// prefill_group: prefill_stream with its consumer warps in warpgroups of four that compute each
// ring block for four queries at once with wgmma (sm_90a): attention_wgmma.cuh says why and how.
//
// Everything else is prefill_stream's with tma = 1 and one producer warp (prefill_stream.cu,
// compiled here with NSA_PREFILL_GROUP 1): the union of the tile's selections streamed through a
// ring of whole blocks by one TMA thread, a consumer warp per query passing every block in order,
// and the persistent, pipelined loop whose producer warp builds the next tile's union. A group
// computes a block when any of its four queries selected it, so the design wins where
// neighbouring queries share blocks (the clustered pattern) and loses where they do not; the
// tuner measures it next to prefill_stream.
//
// Knobs: NSA_KNOB_WARPS (5, 9: one producer warp and 1 or 2 consumer warpgroups),
// NSA_KNOB_STAGES (ring depth in whole blocks), NSA_KNOB_PERSIST (as prefill_stream's).
// Needs sm_90a (compiled for it where the device is sm_90), D_qk a multiple of 64, D_v 64 or 128,
// block 64, h <= 16. Launch: as prefill_stream's (grid, tensor maps), block = 32 * warps,
// dynamic shared memory = nsa_layout::prefill_group_smem(...), entry nsa_prefill_group.
#define NSA_PREFILL_GROUP 1
#define NSA_KNOB_TMA 1
#define NSA_KNOB_PRODUCERS 1
#include "prefill_stream.cu"

// The ring of whole blocks of the streaming designs (prefill_stream, decode_stream): its
// barriers, and the producer warps' copy of one selected block into a stage.
#pragma once

#include "common.cuh"

// The parameters of a streaming design's kernel: SelectionParams, then with tma = 1 the tensor
// maps of K and V that the launcher encodes for each launch (docs/protocol.md, "Tensor maps").
#if defined(NSA_KNOB_TMA) && NSA_KNOB_TMA
#define NSA_STREAM_PARAMS \
  const __grid_constant__ SelectionParams p, const __grid_constant__ TmaDescriptor k_map, \
      const __grid_constant__ TmaDescriptor v_map
#else
#define NSA_STREAM_PARAMS const SelectionParams p
#endif

/// Initialises the ring's 2 * stages mbarriers (8 bytes each, full[s] at full0 + 8 s, empty[s] at
/// empty0 + 8 s): full[s] completes when `copiers` producer lanes have arrived (each through
/// cp.async.mbarrier.arrive, once its copies of the stage's block have landed; or, with `tma`,
/// the one copying thread through arrive.expect_tx, once the block's bytes have landed), empty[s]
/// when `consumers` consumer warps are past the block. Called by one thread; the CTA must
/// synchronise before any other thread uses a barrier.
__device__ __forceinline__ void init_ring(u32 full0, u32 empty0, int stages, u32 copiers, u32 consumers,
                                          bool tma = false) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(full0 + 8u * s, copiers);
    mbar_init(empty0 + 8u * s, consumers);
  }
  if (tma) fence_mbarrier_init();  // the TMA unit completes transactions on full[s]
}

/// Where the ring starts after the CTA's other shared state ending at `after`: right there for
/// cp.async, at the next multiple of nsa_layout::kTmaAlign bytes (of the shared address) for the
/// TMA's swizzled panels (the layout reserves the slack).
template <bool TMA>
__device__ __forceinline__ elem_t* align_ring(elem_t* after) {
  if constexpr (TMA) {
    const u32 a = smem_addr(after);
    const u32 pad = (u32)(nsa_layout::kTmaAlign - (int)(a % nsa_layout::kTmaAlign)) % nsa_layout::kTmaAlign;
    return reinterpret_cast<elem_t*>(reinterpret_cast<unsigned char*>(after) + pad);
  } else {
    return after;
  }
}

/// Fetches K's and V's tensor maps into the TMA unit ahead of the first copy (the copying thread
/// calls it at kernel start, while the CTA builds its first row list or union).
__device__ __forceinline__ void tma_prefetch_maps(const TmaDescriptor* k_map, const TmaDescriptor* v_map) {
  tma_prefetch_descriptor(k_map);
  tma_prefetch_descriptor(v_map);
}

/// The D / 64 panels of one operand (K or V, D elements a key) of keys [key0, key0 + BLK) of KV
/// group g of batch b into the ring slot at shared address `slot` (each [BLK][64] elements,
/// 128-byte swizzled: attention_core.cuh's "Swizzled rings"), completing on `full`, whose byte
/// count the caller has announced. The maps view K and V as {D, H_kv, T_kv, B} with boxes of
/// {64, 1, BLK, 1} (jit_kernels/driver.cpp encodes them); keys at or past T_kv arrive as zeros.
template <int D>
__device__ __forceinline__ void tma_load_panels(u32 slot, const TmaDescriptor* map, int g, int key0, int b, u32 full) {
#pragma unroll
  for (int c = 0; c < D / 64; ++c) tma_load_4d(slot + (u32)(c * BLK * 128), map, c * 64, g, key0, b, full);
}

/// One whole block into a ring slot through the tensor memory accelerator, by one thread: K into
/// the panels at `k_slot`, V into those at `v_slot`, arriving on `full` with the slot's byte count
/// first (tma_load_panels).
__device__ __forceinline__ void tma_copy_block(u32 k_slot, u32 v_slot, const TmaDescriptor* k_map,
                                               const TmaDescriptor* v_map, int g, int key0, int b, u32 full) {
  mbar_arrive_expect_tx(full, (u32)(BLK * (DQK + DV) * 2));
  tma_load_panels<DQK>(k_slot, k_map, g, key0, b, full);
  tma_load_panels<DV>(v_slot, v_map, g, key0, b, full);
}

/// One operand of a block, arriving on its own `full` with the operand's byte count first:
/// tma_copy_block for rings whose K and V have barriers of their own (prefill_group).
template <int D>
__device__ __forceinline__ void tma_copy_operand(u32 slot, const TmaDescriptor* map, int g, int key0, int b, u32 full) {
  mbar_arrive_expect_tx(full, (u32)(BLK * D * 2));
  tma_load_panels<D>(slot, map, g, key0, b, full);
}

/// Issues producer lane `pt`'s share, of LANES lanes, of the 16-byte cp.async copies of one
/// operand (K or V) of a block: BLK rows of CH chunks from `src` (row r at src + r * stride
/// elements) into `dst` (row stride STR elements). Rows at or past `vis` (>= 1) are copied from
/// row 0: finite data that the consumers mask, and never an address past the block's visible keys
/// (so never past T_kv). Joins the lane's pending cp.async copies (the caller arrives on the
/// stage's mbarrier after both operands).
///
/// The lanes walk the block's (row, chunk) pairs LANES apart with no division per copy. When they
/// divide into the chunks of a row (LANES % CH == 0: D = 64, 128 or 256 with 32-128 lanes) each
/// lane keeps one chunk column and steps its rows by a fixed pointer increment, and a wholly
/// visible block (all but one per row or tile) needs no per-row test: about 3 instructions a copy
/// in SASS, against ~25 for a loop that divides the copy index by CH (measured in decode_stream's
/// SASS on sm_90). Otherwise (D = 192) the lane steps its (row, chunk) pair by (LANES / CH,
/// LANES % CH) with one carry.
template <int CH, int STR, int LANES>
__device__ __forceinline__ void copy_block_operand(elem_t* dst, const elem_t* src, long long stride, int vis, int pt) {
  if constexpr (LANES % CH == 0 && BLK % (LANES / CH) == 0) {
    constexpr int RSTEP = LANES / CH;  // rows per pass of all lanes
    const int ch = pt % CH, r0 = pt / CH;
    const elem_t* from = src + r0 * stride + ch * 8;
    const u32 to = smem_addr(dst + r0 * STR + ch * 8);
    const long long step = RSTEP * stride;
    if (vis >= BLK) {
#pragma unroll 4
      for (int k = 0; k < BLK / RSTEP; ++k) cp_async_16(to + k * RSTEP * STR * 2, from + k * step, true);
    } else {
#pragma unroll 4
      for (int k = 0; k < BLK / RSTEP; ++k) {
        const int r = r0 + k * RSTEP;
        cp_async_16(to + k * RSTEP * STR * 2, r < vis ? from + k * step : src + ch * 8, true);
      }
    }
  } else {
    constexpr int DR = LANES / CH, DC = LANES % CH;
    int r = pt / CH, ch = pt % CH;
#pragma unroll 4
    for (int i = pt; i < BLK * CH; i += LANES) {
      cp_async_16(smem_addr(dst + r * STR + ch * 8), src + (r < vis ? r : 0) * stride + ch * 8, true);
      r += DR;
      ch += DC;
      if (ch >= CH) {
        ch -= CH;
        ++r;
      }
    }
  }
}

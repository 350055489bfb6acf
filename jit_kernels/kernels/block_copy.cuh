// The ring of whole blocks of the streaming designs (prefill_stream, decode_stream): its
// barriers, and the producer warps' copy of one selected block into a stage.
#pragma once

#include "common.cuh"

/// Initialises the ring's 2 * stages mbarriers (8 bytes each, full[s] at full0 + 8 s, empty[s] at
/// empty0 + 8 s): full[s] completes when `copiers` producer lanes have arrived (each through
/// cp.async.mbarrier.arrive, once its copies of the stage's block have landed), empty[s] when
/// `consumers` consumer warps are past the block. Called by one thread; the CTA must synchronise
/// before any other thread uses a barrier.
__device__ __forceinline__ void init_ring(u32 full0, u32 empty0, int stages, u32 copiers, u32 consumers) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(full0 + 8u * s, copiers);
    mbar_init(empty0 + 8u * s, consumers);
  }
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

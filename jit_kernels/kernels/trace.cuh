// Timelines of one launch, for nsa-kernel-trace (bench/kernels/trace.cpp): where a CTA's time
// goes between the points a design names (decode_stream, prefill_stream, prefill_group). Compiled in only with NSA_TRACE, which the catalog's
// compiles never define: a traced kernel is a measuring instrument, not a variant.
//
// With NSA_TRACE each CTA owns a row of NSA_TRACE_SLOTS 64-bit slots, at blockIdx.x, in the
// buffer that the harness passes as SelectionParams::lse (a traced kernel writes no LSE). A
// design writes two kinds of slot, by the point's name:
//   stamps   clock64 when one thread of the CTA passes the point (the SM's cycle counter: the
//            same clock for every warp of the CTA, so intervals within a CTA are exact);
//   *_cyc    clock64 cycles summed over a loop by one thread, e.g. the cycles a consumer spends
//            waiting for its blocks; printed per CTA (and per block where the design counts them
//            in `blocks`).
// The last two slots hold %globaltimer (ns) at the CTA's first and last stamp (NSA_TRACE_ENTRY,
// NSA_TRACE_EXIT): the harness places each CTA on the launch's time line with them and converts
// its cycles to time with the clock rate they give. A CTA that runs several work items keeps its
// last item's stamps and every item's sums.
//
// The points of each traced design are an X-macro list, shared with the harness so that it
// prints their names; host code includes this header for the lists alone. A list's first point
// is stamped with NSA_TRACE_ENTRY and its last stamp with NSA_TRACE_EXIT.
#pragma once

#define NSA_TRACE_SLOTS 24
#define NSA_TRACE_GT_ENTRY 22  // %globaltimer at the CTA's entry stamp
#define NSA_TRACE_GT_EXIT 23   // and at its exit stamp

// decode_stream: entry (thread 0), the row's block list built, the producer's first and last
// copies issued, consumer 0's first block landed, the row's last block landed and computed (by
// the consumer that owns it), every consumer done, their states stashed for the merge, thread 0's
// share of the merge done, the row stored (after the cluster merge with split > 1); and the
// cycles consumer 0 spends waiting for blocks and computing them.
#define NSA_DECODE_STREAM_TRACE(X)                                                                        \
  X(entry) X(row_built) X(first_issued) X(first_landed) X(last_issued) X(last_landed) X(last_computed) \
      X(consumed) X(stashed) X(merged) X(stored) X(wait_cyc) X(compute_cyc)

// prefill_group (one group per CTA): entry, the union built, the group's Q landed, the first
// K landed, the last block's P V retired, the rows stored; per block of the group's loop (warp
// 0, lane 0), cycles summed over the tile: waiting for K and V, issuing S and P V up to S
// retired, the softmax, waiting for the P V, packing P and rescaling O; and per tile, the cycles
// of the tile's first block and last P V (outside that loop: the first K and Q waited for, no
// overlap) and, with persist = 1, between two tiles (the store, the next union waited for, the
// next Q issued), of which the store and the wait for the next union; and the builder warp's
// cycles waiting for a union buffer to be freed and building unions.
#define NSA_PREFILL_GROUP_TRACE(X)                                                                           \
  X(entry) X(union_built) X(q_landed) X(first_k) X(last_pv) X(stored) X(ring_wait_cyc) X(s_cyc) X(softmax_cyc) \
      X(pv_wait_cyc) X(pack_cyc) X(blocks) X(edge_cyc) X(between_cyc) X(store_cyc) X(ready_cyc) X(freed_cyc)  \
          X(build_cyc)

// prefill_stream: entry, the union built, consumer 0's first own block landed and its last
// computed, the rows stored; and consumer 0's cycles summed over the tile: waiting for the ring
// (every block, its own or passed), computing its own blocks, and how many it computed.
#define NSA_PREFILL_STREAM_TRACE(X) \
  X(entry) X(union_built) X(first_own) X(last_own) X(stored) X(wait_cyc) X(compute_cyc) X(blocks)

#define NSA_TRACE_ENUM(name) nsa_trace_##name,
#define NSA_TRACE_COUNT(name) +1
static_assert(0 NSA_DECODE_STREAM_TRACE(NSA_TRACE_COUNT) <= NSA_TRACE_GT_ENTRY, "decode_stream's trace points fit a row");
static_assert(0 NSA_PREFILL_GROUP_TRACE(NSA_TRACE_COUNT) <= NSA_TRACE_GT_ENTRY, "prefill_group's trace points fit a row");
static_assert(0 NSA_PREFILL_STREAM_TRACE(NSA_TRACE_COUNT) <= NSA_TRACE_GT_ENTRY, "prefill_stream's trace points fit a row");

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#ifdef NSA_TRACE
__device__ __forceinline__ unsigned long long nsa_globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned long long* nsa_trace_row(unsigned long long buf) {
  return reinterpret_cast<unsigned long long*>(buf) + (unsigned long long)blockIdx.x * NSA_TRACE_SLOTS;
}
// `buf` is SelectionParams::lse (helpers take it as an argument named `trace`).
#define NSA_TRACE_STAMP(buf, cond, point)                                        \
  do {                                                                           \
    if (cond) nsa_trace_row(buf)[nsa_trace_##point] = (unsigned long long)clock64(); \
  } while (0)
/// Adds `v` to sum `point` of this CTA's row (one thread a CTA: no atomics).
#define NSA_TRACE_ADD(buf, cond, point, v)                    \
  do {                                                        \
    if (cond) nsa_trace_row(buf)[nsa_trace_##point] += (v);   \
  } while (0)
/// The first and the last stamp of a CTA, with the global time beside each.
#define NSA_TRACE_ENTRY(buf, cond, point)                                   \
  do {                                                                      \
    if (cond) {                                                             \
      nsa_trace_row(buf)[NSA_TRACE_GT_ENTRY] = nsa_globaltimer();          \
      nsa_trace_row(buf)[nsa_trace_##point] = (unsigned long long)clock64(); \
    }                                                                       \
  } while (0)
#define NSA_TRACE_EXIT(buf, cond, point)                                    \
  do {                                                                      \
    if (cond) {                                                             \
      nsa_trace_row(buf)[nsa_trace_##point] = (unsigned long long)clock64(); \
      nsa_trace_row(buf)[NSA_TRACE_GT_EXIT] = nsa_globaltimer();           \
    }                                                                       \
  } while (0)
#define NSA_TRACE_CLOCK() clock64()
/// The LSE a traced kernel writes: none (SelectionParams::lse is the trace buffer).
#define NSA_LSE_OUT(params) static_cast<float*>(nullptr)
#else
#define NSA_TRACE_STAMP(buf, cond, point) \
  do {                                    \
  } while (0)
#define NSA_TRACE_ADD(buf, cond, point, v) \
  do {                                     \
  } while (0)
#define NSA_TRACE_ENTRY(buf, cond, point) NSA_TRACE_STAMP(buf, cond, point)
#define NSA_TRACE_EXIT(buf, cond, point) NSA_TRACE_STAMP(buf, cond, point)
#define NSA_TRACE_CLOCK() 0ll
#define NSA_LSE_OUT(params) reinterpret_cast<float*>((params).lse)
#endif
#endif

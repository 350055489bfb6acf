// prefill_stream: prefill selection attention in which producer warps stream the union of a query
// tile's selected blocks through a shared-memory ring, and every query has a consumer warp of its
// own that computes only the blocks its query selected.
//
// Why. With random selection, QTILE neighbouring queries share few blocks besides the forced
// ones (block 0 and the two most recent), but a larger tile shares more: at T = 32768 a block
// of the union of 4 queries' selections serves 1.3 of them, of 8 queries 1.6, of 16 queries 2.0
// (at T = 8192: 1.7, 2.5, 4.0). Every block loaded once for the tile instead of once per query
// divides the L2 -> SM traffic, which bounds the row-wise designs, by that factor. But in
// prefill_shared, whose warps march through the union in lock step (a CTA barrier per tile), a
// block one query selected costs the whole CTA a step: the larger the tile, the more of them. Here
// no CTA barrier stands between tiles: the producer fills ring stage j % STAGES with union block j
// as soon as every consumer is past block j - STAGES, and a consumer computes only the blocks of
// its own query; passing the others costs it one wait on a block that has usually landed.
//
// Roles. Of the CTA's WARPS warps, 0 .. QTILE-1 are consumers (warp q: query t0 + q, its h <= 16
// heads as the 16 rows of one MMA tile, a one-warp AttentionCore) and the last PRODUCERS load
// (QTILE = WARPS - PRODUCERS). Per ring stage s two mbarriers: full[s] (the block has landed) and
// empty[s] (count QTILE: every consumer is past it).
// Union block j (j counted over the CTA's whole life, so phases run on across work items) uses
// stage s = j % STAGES in its phase j / STAGES:
//   producers:  wait empty[s] for the phase of block j - STAGES (when j >= STAGES); issue their
//               share of block j's copies, completing on full[s];
//   consumer q: for every j: wait full[s] with parity (j / STAGES) & 1; if bit q of umask[j] is
//               set, compute the block in CHUNK-key steps (mma.sync, online softmax in registers);
//               arrive on empty[s].
// A consumer passes every block, computing only its own: a waiter names a phase by its parity
// alone, which is only sound when the barrier is at most one phase away from it. Passing every
// block keeps each consumer exactly there: it waits for full[s] phase j only after phase
// j - STAGES (it waited for that too), and phase j + STAGES cannot complete before its own arrival
// on empty[s] for block j. (A first version let consumers wait only for their own blocks and the
// producer arrive for the others; a consumer could then meet a stage two phases on, take the parity
// as done and leave with copies still in flight: it failed on the H100 from T = 8192 on.) Waiting
// for a block that has landed costs a consumer a few instructions, and the producer still runs up
// to STAGES blocks ahead of the slowest consumer, so a block one query selected no longer stalls
// the others as a CTA barrier per tile did. Consumers and producer take the blocks in the same
// order, so the oldest unreleased block is always computable: no deadlock.
//
// Copies. The producers' lanes issue 16-byte cp.async copies of block j (block_copy.cuh: each
// lane a fixed chunk column, rows a fixed pointer step apart), and each lane's
// cp.async.mbarrier.arrive on full[s] (count: every producer lane) fires when its copies have
// landed. Rows past the tile's largest visible limit are copied from the block's first row:
// finite data that every consumer masks. Measured on the H100 (docs/performance.md, v6 and v7):
// the producers' instruction stream bounded the kernel twice over. With a loop that divided each
// copy index (~25 SASS instructions a copy) one producer warp moved ~2 TB/s of union blocks and
// four were needed; with the lean copy (~3 a copy) the kernel got 1.13-1.25x faster and two
// producers beat four (two more consumers, so two more queries sharing each block). TMA bulk
// copies of each 256-byte K/V row (one cp.async.bulk per row) were 2x slower still, and are not
// offered. With tma = 1 (sm_90) one thread of the one producer warp copies a block as bulk tensor
// copies of its 64-element panels (block_copy.cuh, tma_copy_block) into unpadded 128-byte-swizzled
// slots that the engine reads as "Swizzled rings"; full[s] then counts that thread's arrival with
// the block's byte count. On the H200 that was 1.19-1.26x faster on random prefill
// (docs/performance.md, v8), and it frees the second producer warp for an eleventh consumer.
//
// Numerics are those of the other designs: scores scaled into the log2 domain, online softmax in
// fp32, P rounded to the input dtype for P V, O normalised once at the end; a query that sees no
// key writes O = 0 and LSE = -inf. Masking: a consumer computes only blocks its query selected;
// within one, the query's visible prefix (its causal limit) masks the rest, and CHUNK steps past
// that prefix are skipped.
//
// Knobs: NSA_KNOB_TMA (1: TMA copies, K's and V's tensor maps are kernel arguments after p; 0:
// cp.async), NSA_KNOB_WARPS (4, 8, 12, 16: the register class, see layout.cuh's register plan),
// NSA_KNOB_PRODUCERS (1, 2, 4: loading warps; the rest are consumers, one query each),
// NSA_KNOB_STAGES (2..5: ring depth in whole blocks), NSA_KNOB_PERSIST (the launch's grid, below).
// Needs h <= 16. Launch: grid.x = min(B * H_kv * ceil(T_q / QTILE), 2^31-1), or with persist = 1
// the SMs times the CTAs one SM holds (CTAs loop over the rest), block = 32 * warps, dynamic
// shared memory = nsa_layout::prefill_stream_smem(...). No workspace.
// prefill_group.cu compiles this file with NSA_PREFILL_GROUP 1: the same producer, ring, union
// and persistent loop, with consumers in warpgroups of four (attention_wgmma.cuh) instead of
// one-warp mma.sync engines; the few places that differ say so.
#ifndef NSA_PREFILL_GROUP
#define NSA_PREFILL_GROUP 0
#endif

#include "attention_core.cuh"
#if NSA_PREFILL_GROUP
#include "attention_wgmma.cuh"
#endif
#include "block_copy.cuh"
#include "query_tile_union.cuh"
#include "trace.cuh"

#if !defined(NSA_KNOB_WARPS) || !defined(NSA_KNOB_PRODUCERS) || !defined(NSA_KNOB_STAGES) || \
    !defined(NSA_KNOB_TMA) || !defined(NSA_KNOB_PERSIST)
#error "prefill_stream.cu needs the knobs tma, warps, producers, stages and persist (jit_kernels/catalog.cpp)"
#endif
// persist (tma = 1 only) changes only the launch: with 1 the plan sizes the grid to the CTAs the
// SMs hold, so that each CTA loops over many tiles and the loop below overlaps them; with 0 the
// grid has a CTA per tile and each CTA runs one (the same code, no next tile to build).

constexpr int WARPS = NSA_KNOB_WARPS;
constexpr int PRODUCERS = NSA_KNOB_PRODUCERS;
constexpr int QTILE = WARPS - PRODUCERS;  // consumer warps: queries per CTA
constexpr int STAGES = NSA_KNOB_STAGES;
constexpr bool TMA = NSA_KNOB_TMA != 0;
#if NSA_PREFILL_GROUP && NSA_KNOB_PERSIST
// prefill_group with persist = 1 has a builder warp after the producer (see the persistent loop).
constexpr int BUILDERS = 1;
#else
constexpr int BUILDERS = 0;
#endif
constexpr int THREADS = (WARPS + BUILDERS) * 32;
constexpr int CHUNK = nsa_layout::stream_chunk(WARPS, BLK);  // keys per compute step
static_assert(H <= 16, "prefill_stream gives each query one warp of 16 MMA rows: h must be at most 16");
static_assert(STAGES >= 2 && STAGES <= 8, "stages must be in [2, 8]");
static_assert(QTILE >= 1 && PRODUCERS >= 1, "prefill_stream needs a consumer and a producer warp");
static_assert(!TMA || PRODUCERS == 1, "with tma = 1 one thread issues every copy: one producer warp");
#if NSA_KNOB_TMA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "prefill_stream with tma = 1 needs sm_90 or newer (the tensor memory accelerator)"
#endif

#if NSA_PREFILL_GROUP
static_assert(TMA && QTILE % 4 == 0, "prefill_group reads TMA rings with consumer warpgroups: warps = 4 k + 1");
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "prefill_group needs wgmma: compile for sm_90a (the catalog's compile target for sm_90)"
#endif
// One group's descriptors are made warp-uniform (consume, and the addresses in the kernel).
using Core = GroupCore<QTILE == 4>;
// One warpgroup (5 warps) runs two CTAs per SM (the catalog offers only settings where two fit):
// 168 registers a thread, three warps to a scheduler.
constexpr int MIN_CTAS = nsa_layout::prefill_group_ctas_per_sm(WARPS);
#else
// Registers (layout.cuh, "prefill_stream's register plan"): up to 8 warps Q stays in registers;
// beyond, it is re-read from shared memory for every step and the steps are shorter.
using Core = AttentionCore<1, 1, CHUNK, 2, false, (nsa_layout::stream_q_in_registers(WARPS) ? 192 : 0), TMA>;
constexpr int MIN_CTAS = 1;
#endif
using Union = QueryTileUnion<QTILE, THREADS>;
#if NSA_PREFILL_GROUP
enum { NSA_PREFILL_GROUP_TRACE(NSA_TRACE_ENUM) };  // the slots of a traced build (trace.cuh)
#else
enum { NSA_PREFILL_STREAM_TRACE(NSA_TRACE_ENUM) };
#endif

namespace {

#if NSA_PREFILL_GROUP
constexpr int K_SLOT = BLK * DQK, V_SLOT = BLK * DV;  // the TMA's panels
// A slot's K and V are handed over apart (K is released once S is computed, V once P V is),
// with barriers of their own, laid out as
// [full K x STAGES | empty K x STAGES | ready x 2 | full V x STAGES | empty V x STAGES]:
// V's full and empty barriers are K's, V_BARRIERS bytes on.
constexpr u32 V_BARRIERS = 8u * (2u * STAGES + 2u);
// Then freed[0], freed[1]: every reader of union buffer u (the consumers, the producer) is done
// with its item (the builder's licence to build the next one into it).
constexpr u32 FREED_BARRIERS = 8u * (4u * STAGES + 2u);
// Q tiles per group: two where the persistent loop copies the next tile's Q during this one.
constexpr int Q_TILES = nsa_layout::prefill_group_q_tiles(DQK, DV, NSEL, BLK, WARPS, STAGES, NSA_KNOB_PERSIST);
constexpr int NGROUPS = QTILE / 4;
#else
constexpr int KSTR = Core::KSTR, VSTR = Core::VSTR;
// Elements of one ring slot's K and V (padded rows, or the TMA's panels).
constexpr int K_SLOT = TMA ? BLK * DQK : BLK * KSTR;
constexpr int V_SLOT = TMA ? BLK * DV : BLK * VSTR;
constexpr u32 V_BARRIERS = 0;  // a slot's K and V share its barriers
#endif

#if !NSA_KNOB_TMA
/// The producers: stream union blocks [0, nu) into the ring; `seq` numbers the CTA's union blocks
/// across work items (block j of this item is the CTA's block seq + j). `pt` is this thread's
/// index among the producers' PRODUCERS * 32 lanes.
__device__ __forceinline__ void produce(const Union& un, unsigned seq, int pt, u32 full0, u32 empty0, elem_t* k_ring,
                                        elem_t* v_ring, const elem_t* k_bg, const elem_t* v_bg, long long k_stride,
                                        long long v_stride, long long lim_max) {
  constexpr int LANES = PRODUCERS * 32;
  for (int j = 0; j < un.nu; ++j) {
    const unsigned n = seq + (unsigned)j;
    const int s = (int)(n % STAGES);
    const u32 full = full0 + 8u * s;
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + 8u * s, (n / STAGES - 1u) & 1u);
    const long long key0 = (long long)un.ulist[j] * BLK;
    // Rows at or past the tile's largest limit are copied from row 0 (the union holds visible
    // blocks only, so at least row 0 is visible).
    const int vis = lim_max - key0 >= BLK ? BLK : (int)(lim_max - key0);
    copy_block_operand<DQK / 8, KSTR, LANES>(k_ring + s * K_SLOT, k_bg + key0 * k_stride, k_stride, vis, pt);
    copy_block_operand<DV / 8, VSTR, LANES>(v_ring + s * V_SLOT, v_bg + key0 * v_stride, v_stride, vis, pt);
    cp_async_mbar_arrive(full);
  }
}

#else
/// produce() for tma = 1, run by one thread: union block j of (b, g) goes to its stage as the
/// TMA's panels (tma_copy_block); rows past T_kv arrive as zeros and rows past a query's limit
/// are real keys, both masked by the consumers. prefill_group's copies a block's K and V apart,
/// each once its own half of the slot is released. (Copying K one block ahead of V, or a third
/// V slot, measured no faster on the H200: docs/performance.md, v12.)
__device__ __forceinline__ void produce_tma(const Union& un, int from, int to, unsigned seq, u32 full0, u32 empty0,
                                            u32 k_ring, u32 v_ring, const TmaDescriptor* k_map,
                                            const TmaDescriptor* v_map, int g, int b) {
#if NSA_PREFILL_GROUP
  for (int j = from; j < to; ++j) {
    const unsigned n = seq + (unsigned)j;
    const int s = (int)(n % STAGES);
    const int key0 = un.ulist[j] * BLK;
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + 8u * s, (n / STAGES - 1u) & 1u);
    tma_copy_operand<DQK>(k_ring + (u32)(s * K_SLOT * 2), k_map, g, key0, b, full0 + 8u * s);
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + V_BARRIERS + 8u * s, (n / STAGES - 1u) & 1u);
    tma_copy_operand<DV>(v_ring + (u32)(s * V_SLOT * 2), v_map, g, key0, b, full0 + V_BARRIERS + 8u * s);
  }
#else
  for (int j = from; j < to; ++j) {
    const unsigned n = seq + (unsigned)j;
    const int s = (int)(n % STAGES);
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + 8u * s, (n / STAGES - 1u) & 1u);
    tma_copy_block(k_ring + (u32)(s * K_SLOT * 2), v_ring + (u32)(s * V_SLOT * 2), k_map, v_map, g,
                   un.ulist[j] * BLK, b, full0 + 8u * s);
  }
#endif
}

#endif

/// consume()'s default `on_q`: nothing to do once Q has landed.
struct NoOp {
  __device__ __forceinline__ void operator()() const {}
};

#if NSA_PREFILL_GROUP
/// The 128 threads of consumer warpgroup `grp` meet (named barrier 1 + grp; 0 is __syncthreads).
__device__ __forceinline__ void group_sync(int grp) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + grp) : "memory");
}

/// consume() for prefill_group: consumer warp q is warp q % 4 of group q / 4, which computes
/// every union block that any of its four queries selected (all four warps together, the
/// decision taken from the union's mask, so uniform across the group) and passes the others.
/// Warp q's rows see the block's first visible_in_block(block, lim_q) keys if its query
/// selected it, none otherwise. With `q_pending` the group's Q copies may still be in flight:
/// every warp waits for its own and the group meets before the first wgmma reads the tile.
/// A slot's K is released as soon as S is computed, its V once P V is.
///
/// With one group per CTA (warps = 5) every union block is the group's, and the group works one
/// block ahead of itself: for block j it issues j's S, then block j - 1's P V, retires S only,
/// releases j's K and runs j's softmax while that P V is on the tensor cores, then retires the
/// P V, releases j - 1's V and rescales O. No wgmma is in flight across a loop iteration or a
/// branch ptxas cannot prove uniform (that makes it serialize every wgmma: C7518). Held through
/// the softmax are j - 1's and j's V only; with K and V in one slot (v11, commit cc88c4a) both
/// slots of a two-stage ring were, and block j + 1's copy waited for the softmax.
/// `trace`: the trace buffer of a traced build (trace.cuh), unused otherwise. `on_q()` runs once
/// the pending Q has landed (the persistent loop then copies the next tile's Q).
template <class OnQ = NoOp>
__device__ __forceinline__ void consume(Core& core, const Union& un, unsigned seq, u32 full0, u32 empty0, int q,
                                        long long lim_q, float scale_log2, bool q_pending,
                                        [[maybe_unused]] unsigned long long trace, OnQ on_q = {}) {
  const int lane = core.lane;
  const int grp = q >> 2;
  core.reset();
  // One group: the ring position and the Q tile's descriptor as the warp's own (uniform)
  // values, once a tile, so that every block's stage, and with it its wgmma descriptors, is
  // uniform arithmetic (with the loop count below), not per-lane values moved over before each
  // HGMMA. (Two groups' runs end where a group's blocks do, a per-lane condition: there the
  // descriptors stay per lane, and the REDUXes only cost, 9 loop instructions in the SASS.)
  if constexpr (QTILE == 4) {
    seq = warp_uniform(seq);
    core.q_desc = warp_uniform(core.q_desc);
  }
  auto stage_of = [&](int j) { return (int)((seq + (unsigned)j) % STAGES); };
  auto parity_of = [&](int j) { return ((seq + (unsigned)j) / STAGES) & 1u; };
  auto vis_of = [&](int j) {
    return ((un.umask[j] >> q) & 1u) != 0u ? visible_in_block(un.ulist[j], lim_q) : 0;
  };
  auto k_landed = [&](int j) { mbar_wait(full0 + 8u * stage_of(j), parity_of(j)); };
  auto v_landed = [&](int j) { mbar_wait(full0 + V_BARRIERS + 8u * stage_of(j), parity_of(j)); };
  auto release_k = [&](int j) {
    if (lane == 0) mbar_arrive(empty0 + 8u * stage_of(j));
  };
  auto release_v = [&](int j) {
    if (lane == 0) mbar_arrive(empty0 + V_BARRIERS + 8u * stage_of(j));
  };
  Core::Scores s;
  Core::PFrag pa;
  float alpha[2];
  if constexpr (QTILE == 4) {
    if (un.nu == 0) return;
    [[maybe_unused]] const bool tracer = q == 0 && lane == 0;  // the thread that keeps the trace
    [[maybe_unused]] const long long e0 = NSA_TRACE_CLOCK();
    k_landed(0);
    NSA_TRACE_STAMP(trace, tracer, first_k);
    if (q_pending) {
      core.q_landed();
      group_sync(grp);
      on_q();
    }
    NSA_TRACE_STAMP(trace, tracer, q_landed);
    [[maybe_unused]] long long ring_cyc = 0, s_cyc = 0, softmax_cyc = 0, pv_cyc = 0, pack_cyc = 0;
    int vis = vis_of(0);
    core.issue_s(s, stage_of(0));
    wgmma_wait<0>();
    release_k(0);
    core.softmax(s, vis, scale_log2, alpha);
    core.pack_p(s, alpha, vis > 0, pa);
    [[maybe_unused]] long long edge_cyc = NSA_TRACE_CLOCK() - e0;
    const int nu = (int)warp_uniform((u32)un.nu);  // a uniform trip count keeps j uniform
    for (int j = 1; j < nu; ++j) {
      [[maybe_unused]] const long long t0 = NSA_TRACE_CLOCK();
      k_landed(j);
      v_landed(j - 1);
      [[maybe_unused]] const long long t1 = NSA_TRACE_CLOCK();
      vis = vis_of(j);
      core.issue_s(s, stage_of(j));
      core.issue_pv(pa, stage_of(j - 1));
      wgmma_wait<1>();  // j's S (committed first) is done; j - 1's P V may still run
      release_k(j);
      [[maybe_unused]] const long long t2 = NSA_TRACE_CLOCK();
      core.softmax(s, vis, scale_log2, alpha);
      [[maybe_unused]] const long long t3 = NSA_TRACE_CLOCK();
      wgmma_wait<0>();
      core.o_settled();
      [[maybe_unused]] const long long t4 = NSA_TRACE_CLOCK();
      release_v(j - 1);
      core.pack_p(s, alpha, vis > 0, pa);
      pack_cyc += NSA_TRACE_CLOCK() - t4;
      ring_cyc += t1 - t0;
      s_cyc += t2 - t1;
      softmax_cyc += t3 - t2;
      pv_cyc += t4 - t3;
    }
    [[maybe_unused]] const long long e1 = NSA_TRACE_CLOCK();
    v_landed(un.nu - 1);
    core.issue_pv(pa, stage_of(un.nu - 1));
    wgmma_wait<0>();
    core.o_settled();
    release_v(un.nu - 1);
    NSA_TRACE_STAMP(trace, tracer, last_pv);
    edge_cyc += NSA_TRACE_CLOCK() - e1;
    NSA_TRACE_ADD(trace, tracer, edge_cyc, edge_cyc);
    NSA_TRACE_ADD(trace, tracer, ring_wait_cyc, ring_cyc);
    NSA_TRACE_ADD(trace, tracer, s_cyc, s_cyc);
    NSA_TRACE_ADD(trace, tracer, softmax_cyc, softmax_cyc);
    NSA_TRACE_ADD(trace, tracer, pv_wait_cyc, pv_cyc);
    NSA_TRACE_ADD(trace, tracer, pack_cyc, pack_cyc);
    NSA_TRACE_ADD(trace, tracer, blocks, un.nu - 1);
  } else {
    // Two groups (warps = 9): a group owns the blocks any of its four queries selected and
    // computes each run of consecutive blocks it owns overlapped as above (its next block's S
    // and softmax beside the previous block's P V); a block it does not own ends the run, whose
    // last P V is finished first, and is passed. (Passing waits for the block's K and V: with a
    // V still held, that wait could be for the very copy the held slot keeps out.)
    auto own = [&](int j) { return ((un.umask[j] >> (4 * grp)) & 0xfu) != 0u; };
    int j = 0;
    while (j < un.nu) {
      if (!own(j)) {
        k_landed(j);
        release_k(j);
        v_landed(j);
        release_v(j);
        ++j;
        continue;
      }
      k_landed(j);
      if (q_pending) {
        core.q_landed();
        group_sync(grp);
        on_q();
        q_pending = false;
      }
      int vis = vis_of(j);
      core.issue_s(s, stage_of(j));
      wgmma_wait<0>();
      release_k(j);
      core.softmax(s, vis, scale_log2, alpha);
      core.pack_p(s, alpha, vis > 0, pa);
      int prev = j;
      for (++j; j < un.nu && own(j); ++j) {
        k_landed(j);
        v_landed(prev);
        vis = vis_of(j);
        core.issue_s(s, stage_of(j));
        core.issue_pv(pa, stage_of(prev));
        wgmma_wait<1>();  // j's S (committed first) is done; prev's P V may still run
        release_k(j);
        core.softmax(s, vis, scale_log2, alpha);
        wgmma_wait<0>();
        core.o_settled();
        release_v(prev);
        core.pack_p(s, alpha, vis > 0, pa);
        prev = j;
      }
      v_landed(prev);
      core.issue_pv(pa, stage_of(prev));
      wgmma_wait<0>();
      core.o_settled();
      release_v(prev);
    }
  }
}
#else
/// Consumer warp q passes every union block and computes those its query t0 + q selected. With
/// `q_pending` its Q copies may still be in flight: it waits for them before its first block of its
/// own (the pipelined loop issues them as it starts the tile, and passing others' blocks needs no Q).
/// `trace`: the trace buffer of a traced build (trace.cuh), unused otherwise.
__device__ __forceinline__ void consume(Core& core, const Union& un, unsigned seq, u32 full0, u32 empty0, int q,
                                        long long lim_q, float scale_log2, bool q_pending,
                                        [[maybe_unused]] unsigned long long trace) {
  const int lane = core.lane;
  if (!q_pending) core.load_q_fragments();
  core.reset();
  [[maybe_unused]] const bool tracer = q == 0 && lane == 0;  // the thread that keeps the trace
  [[maybe_unused]] long long wait_cyc = 0, compute_cyc = 0, own = 0;
  for (int j = 0; j < un.nu; ++j) {
    const unsigned n = seq + (unsigned)j;
    const int s = (int)(n % STAGES);
    [[maybe_unused]] const long long t0 = NSA_TRACE_CLOCK();
    mbar_wait(full0 + 8u * s, (n / STAGES) & 1u);
    [[maybe_unused]] const long long t1 = NSA_TRACE_CLOCK();
    wait_cyc += t1 - t0;
    if (((un.umask[j] >> q) & 1u) == 0u) {  // not this query's block
      if (lane == 0) mbar_arrive(empty0 + 8u * s);
      continue;
    }
    NSA_TRACE_STAMP(trace, tracer && own == 0, first_own);
    if (q_pending) {
      cp_async_wait<0>();
      __syncwarp();
      core.load_q_fragments();
      q_pending = false;
    }
    // vis >= 1: the union holds visible blocks only.
    core.compute_block_prefix<BLK>(s, visible_in_block(un.ulist[j], lim_q), scale_log2);
    __syncwarp();  // every lane's reads of the stage are done (their values fed the MMAs above)
    compute_cyc += NSA_TRACE_CLOCK() - t1;
    ++own;
    if (lane == 0) mbar_arrive(empty0 + 8u * s);
  }
  NSA_TRACE_STAMP(trace, tracer, last_own);
  NSA_TRACE_ADD(trace, tracer, wait_cyc, wait_cyc);
  NSA_TRACE_ADD(trace, tracer, compute_cyc, compute_cyc);
  NSA_TRACE_ADD(trace, tracer, blocks, own);
}
#endif

/// Writes a consumer's h output rows (and LSE): the warp holds all columns of its rows, so its
/// state is final: O = acc / l, LSE = (m + log2 l) ln 2 (O = 0, LSE = -inf for a query that saw no
/// key).
__device__ __forceinline__ void store_rows_direct(const Core& core, elem_t* o_rows, float* lse_rows,
                                                  long long lse_stride) {
  const int lane = core.lane;
  const int g = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(core.l_run[0][hf]);
    const int row = g + hf * 8;
    if (row >= H) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    elem_t* dst = o_rows + (long long)row * DV + c2;
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt)
      *reinterpret_cast<u32*>(dst + dt * 8) = pack2(core.o[0][dt][2 * hf] * inv, core.o[0][dt][2 * hf + 1] * inv);
    if (lse_rows != nullptr && (lane & 3) == 0)
      lse_rows[row * lse_stride] = l > 0.f ? (core.m_run[0][hf] + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
  }
}

/// store_rows_direct's rows, for prefill_group's persistent loop with a builder warp and one Q
/// tile a group (the paper config's D_qk = 192), through the warp's own 16 rows of that Q tile,
/// which no wgmma reads once the tile's last P V is retired (its last S was retired before):
/// each lane writes its accumulator fragments there (row r's 16-byte chunk c at chunk c ^ (r % 8)
/// of the r-th 128-byte row of panel c / 8, the tile's own swizzle, so neither pass has bank
/// conflicts), then the warp reads its rows back as 16-byte chunks and stores them as such: a
/// warp's rows are contiguous in global memory (the group's heads of one query), so with D_v =
/// 128 a lane makes 8 coalesced 16-byte stores instead of 32 scattered 4-byte ones. There the
/// next tile's Q is copied into the same tile once the store is done, so the store is on the
/// tiles' chain: 1.03x at T = 32768 clustered on the H200. With two Q tiles (D_qk = 128) the
/// next Q is already there and the staged store was 1% slower; so was it without the builder
/// (docs/performance.md, v14). The caller copies a Q into this tile only after a group barrier
/// that follows every warp's store.
__device__ __forceinline__ void store_rows(const Core& core, elem_t* o_rows, float* lse_rows, long long lse_stride) {
#if NSA_PREFILL_GROUP
  if constexpr (DQK >= DV && BUILDERS == 1 && Q_TILES == 1) {
    constexpr int CH = DV / 8;          // 16-byte chunks of an O row
    constexpr int ROWS_A_PASS = 32 / CH;
    const int lane = core.lane;
    const int g = lane >> 2, c2 = (lane & 3) * 2;
    const u32 rows = core.q_group + (u32)(core.wq * 16 * Core::PANEL_ROWS_BYTES);
    auto chunk_at = [&](int r, int c) {
      return rows + (u32)((c >> 3) * Core::Q_PANEL + r * Core::PANEL_ROWS_BYTES + (((c & 7) ^ (r & 7)) << 4));
    };
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float l = quad_sum(core.l_run[0][hf]);
      const int row = g + hf * 8;
      const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
      for (int dt = 0; dt < CH; ++dt)
        st_shared_u32(chunk_at(row, dt) + (u32)(c2 * 2),
                      pack2(core.o[0][dt][2 * hf] * inv, core.o[0][dt][2 * hf + 1] * inv));
      if (row < H && lse_rows != nullptr && (lane & 3) == 0)
        lse_rows[row * lse_stride] = l > 0.f ? (core.m_run[0][hf] + log2f(l)) * NSA_LN2 : NSA_NEG_INF;
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 16 / ROWS_A_PASS; ++i) {
      const int row = i * ROWS_A_PASS + lane / CH, c = lane % CH;
      const uint4 v = ld_shared_u32x4(chunk_at(row, c));
      if (row < H) st_global_v4(o_rows + (long long)row * DV + c * 8, v);
    }
    __syncwarp();  // every lane's reads of the tile are done before any lane copies a Q into it
    return;
  }
#endif
  store_rows_direct(core, o_rows, lse_rows, lse_stride);
}

}  // namespace

#if NSA_PREFILL_GROUP
#define NSA_PREFILL_ENTRY nsa_prefill_group
#else
#define NSA_PREFILL_ENTRY nsa_prefill_stream
#endif

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS) NSA_PREFILL_ENTRY(NSA_STREAM_PARAMS) {
  NSA_TRACE_ENTRY(p.lse, threadIdx.x == 0, entry);
#if NSA_PREFILL_GROUP
  require_smem(nsa_layout::prefill_group_smem(DQK, DV, NSEL, BLK, WARPS, STAGES, NSA_KNOB_PERSIST));
#else
  require_smem(nsa_layout::prefill_stream_smem(DQK, DV, NSEL, BLK, WARPS, PRODUCERS, STAGES, TMA));
#endif
  unsigned char* smem = dynamic_smem();
  constexpr long long UNION_BYTES = nsa_layout::union_bytes(QTILE, NSEL);
  unsigned char* after_union = smem + (TMA ? 2 : 1) * UNION_BYTES;
  const u32 full0 = smem_addr(after_union), empty0 = full0 + 8u * STAGES;
  const u32 ready0 = empty0 + 8u * STAGES;  // tma = 1: union buffer u is built (ready0 + 8 u)
#if NSA_PREFILL_GROUP
  unsigned char* after_barriers = after_union + nsa_layout::prefill_group_barrier_bytes(STAGES);
#else
  unsigned char* after_barriers = after_union + nsa_layout::prefill_stream_barrier_bytes(STAGES, TMA);
#endif
  const int warp = threadIdx.x >> 5;
#if NSA_PREFILL_GROUP
  // [two unions | barriers | ring | the groups' Q tiles]: the ring's slots are whole multiples
  // of 1024 bytes, so the Q tiles after it are aligned as the swizzle needs.
  elem_t* k_ring = align_ring<true>(reinterpret_cast<elem_t*>(after_barriers));
  elem_t* v_ring = k_ring + STAGES * K_SLOT;
  // With one group, the same shared addresses for the consumers computed from the
  // dynamic-shared symbol's, which ptxas knows (align_ring's rounding, in 32-bit arithmetic), so
  // that their wgmma descriptors are constants plus uniform offsets; smem_addr(k_ring), built
  // through generic pointers, reaches ptxas as a per-lane value (docs/performance.md v16). Two
  // groups keep that (their descriptors stay per lane: consume).
  u32 k_ring_addr = smem_addr(k_ring), v_ring_addr = smem_addr(v_ring);
  u32 q_tiles = smem_addr(v_ring + STAGES * V_SLOT);
  if constexpr (NGROUPS == 1) {
    constexpr u32 AFTER_BARRIERS =
        (u32)((TMA ? 2 : 1) * UNION_BYTES + nsa_layout::prefill_group_barrier_bytes(STAGES));
    constexpr u32 ALIGN = (u32)nsa_layout::kTmaAlign;
    k_ring_addr = (smem_addr(dynamic_smem()) + AFTER_BARRIERS + ALIGN - 1u) & ~(ALIGN - 1u);
    v_ring_addr = k_ring_addr + (u32)(STAGES * K_SLOT * 2);
    q_tiles = v_ring_addr + (u32)(STAGES * V_SLOT * 2);
  }
#else
  // [union (a second one with tma = 1) | barriers | Q rows per consumer | ring]
  elem_t* q_all = reinterpret_cast<elem_t*>(after_barriers);
  elem_t* k_ring = align_ring<TMA>(q_all + QTILE * 16 * Core::QSTR);
  elem_t* v_ring = k_ring + STAGES * K_SLOT;
#endif

  // full[s] counts the producer lanes' cp.async arrivals, or the one TMA thread's arrival with
  // its byte count.
  if (threadIdx.x == 0) {
    init_ring(full0, empty0, STAGES, TMA ? 1u : (u32)PRODUCERS * 32u, (u32)QTILE, TMA);
#if NSA_PREFILL_GROUP
    init_ring(full0 + V_BARRIERS, empty0 + V_BARRIERS, STAGES, 1u, (u32)QTILE, true);
    if constexpr (BUILDERS > 0) {
      mbar_init(full0 + FREED_BARRIERS, (u32)QTILE + 1u);  // every consumer warp and the producer warp
      mbar_init(full0 + FREED_BARRIERS + 8u, (u32)QTILE + 1u);
    }
#endif
    if constexpr (TMA) {
      mbar_init(ready0, 32u);  // the lanes of the warp that built the union (producer, or builder)
      mbar_init(ready0 + 8u, 32u);
      fence_mbarrier_init();
    }
  }
#if NSA_KNOB_TMA
  if (threadIdx.x == QTILE * 32) tma_prefetch_maps(&k_map, &v_map);  // the copying thread, during the union build
#endif
  // (The union build below synchronises the CTA before any barrier is used.)

  Core core;
#if NSA_PREFILL_GROUP
  if (warp < QTILE) core.init(q_tiles + (u32)((NGROUPS > 1 ? (warp >> 2) : 0) * Core::Q_GROUP_BYTES), k_ring_addr, v_ring_addr);
#else
  if (warp < QTILE) core.init_warp(q_all + warp * 16 * Core::QSTR, k_ring, v_ring);
#endif

  const long long qtiles = (p.t_q + QTILE - 1) / QTILE;
  const long long items = p.batch * p.h_kv * qtiles;
  const long long h_q = p.h_kv * H;
  const float scale_log2 = p.scale * NSA_LOG2E;
  float* LSE = NSA_LSE_OUT(p);
  // Consumer `warp`'s Q rows of the tile, as cp.async: into its engine's Q, or (prefill_group's
  // persistent loop) into the Q tile at shared address `at...`.
  auto issue_q = [&](const QueryTile& tile, auto... at) {
    const elem_t* q_rows = ptr_elem(p.q) + ((tile.b * p.t_q + tile.t0 + warp) * h_q + tile.g * H) * DQK;
    core.load_q_async([&](int r) -> const elem_t* { return r < H ? q_rows + (long long)r * DQK : nullptr; }, at...);
    cp_async_commit();
  };
  auto store = [&](const QueryTile& tile) {  // consumer `warp`'s output rows of the tile
    const long long t = tile.t0 + warp;
    store_rows(core, ptr_elem_mut(p.o) + ((tile.b * p.t_q + t) * h_q + tile.g * H) * DV,
               LSE != nullptr ? LSE + (tile.b * h_q + tile.g * H) * p.t_q + t : nullptr, p.t_q);
  };
  // Union blocks this CTA has streamed before the current item. It never wraps: a CTA takes
  // ceil(items / grid.x) items, each of at most qtile * n blocks.
  unsigned seq = 0;

#if NSA_KNOB_TMA
  // Persistent and pipelined (grid.x <= items; persist = 1 sizes it to the SMs): the k-th
  // item of this CTA (blockIdx.x + k * grid.x) uses union buffer k % 2. No CTA barrier stands
  // between items: the producer warp issues the first STAGES blocks of item k, then builds item
  // k + 1's union into the other buffer (the ring keeps the consumers busy meanwhile) and arrives
  // on ready[(k + 1) % 2], then issues the rest of item k. A consumer finishing item k stores its
  // rows, waits for ready[(k + 1) % 2] (phase k / 2), starts its next Q copies and passes item
  // k + 1's blocks, waiting for its Q only at its first own block; the ring never drains between
  // items. The producer overwrites a buffer only once every consumer is past the item that used
  // it: item k - 1's last block shares a stage with one of item k's first STAGES blocks, whose
  // empty barrier the copying thread waited for before issuing it (or, when item k has fewer
  // blocks, it waits for that barrier explicitly).
#if NSA_PREFILL_GROUP && NSA_KNOB_PERSIST
  // prefill_group with persist = 1: the same pipeline with the union build taken off the
  // producer. The builder warp (warp QTILE + 1) builds item k + 1's union into buffer (k + 1) % 2
  // while the producer streams item k, once every reader of that buffer's previous item, k - 1,
  // has arrived on freed[(k + 1) % 2] (the consumers after storing it, the producer after issuing
  // it), and arrives on ready[(k + 1) % 2]; the producer, like the consumers, waits for ready
  // before item k + 1 and then issues all its blocks without a pause. (With the build on the
  // producer, a two-stage ring ran dry during every build: the consumers waited 664 cycles a
  // block for the ring against 238 with persist = 0, nsa-kernel-trace on the H200,
  // docs/performance.md v13.) With two Q tiles (Q_TILES) a consumer copies the next item's Q
  // into the other tile as soon as this item's Q has landed, so an item starts on a Q that is
  // there; with one, after this item is done, as persist = 0 does.
  if (blockIdx.x < items) {
    QueryTile tile = query_tile<QTILE>(blockIdx.x, qtiles, p);
    const int lane = threadIdx.x & 31;
    auto q_tile_of = [&](long long kk) {  // the group's Q tile of this CTA's kk-th item
      return q_tiles + (u32)((((int)(kk % Q_TILES)) * NGROUPS + (NGROUPS > 1 ? (warp >> 2) : 0)) * Core::Q_GROUP_BYTES);
    };
    if (warp < tile.nq) issue_q(tile);
    {
      Union first;
      first.carve(smem);
      first.build(tile.sel, tile.nq, tile.lim0);  // synchronises the CTA: the barriers are initialised too
#if NSA_PREFILL_GROUP
      if constexpr (NGROUPS == 2) {
        if (warp == 0) first.order_for_two_groups();
        __syncthreads();
      }
#endif
    }
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, union_built);
    bool next_q_issued = false;  // the next item's Q copies are in flight into the other tile
    [[maybe_unused]] long long between0 = 0;  // a traced build: when this consumer's tile was done
    long long k = 0;
    for (long long item = blockIdx.x; item < items; item += gridDim.x, ++k) {
      Union cur, next;
      cur.carve(smem + (k & 1) * UNION_BYTES);
      next.carve(smem + ((k + 1) & 1) * UNION_BYTES);
      const long long next_item = item + gridDim.x;
      if (warp == QTILE + 1) {  // the builder
        if (next_item < items) {
          [[maybe_unused]] const long long b0 = NSA_TRACE_CLOCK();
          if (lane == 0 && k > 0) mbar_wait(full0 + FREED_BARRIERS + 8u * (u32)((k + 1) & 1), (u32)(((k - 1) >> 1) & 1));
          __syncwarp();
          [[maybe_unused]] const long long b1 = NSA_TRACE_CLOCK();
          const QueryTile nt = query_tile<QTILE>(next_item, qtiles, p);
          next.build_warp(nt.sel, nt.nq, nt.lim0);
          if constexpr (NGROUPS == 2) next.order_for_two_groups();
          mbar_arrive(ready0 + 8u * (u32)((k + 1) & 1));
          NSA_TRACE_ADD(p.lse, lane == 0, freed_cyc, b1 - b0);
          NSA_TRACE_ADD(p.lse, lane == 0, build_cyc, NSA_TRACE_CLOCK() - b1);
        }
        continue;
      }
      cur.read_counts();  // built by the CTA (k = 0) or the builder, and waited for
      if (warp == QTILE) {  // the producer
        if (lane == 0)
          produce_tma(cur, 0, cur.nu, seq, full0, empty0, smem_addr(k_ring), smem_addr(v_ring), &k_map, &v_map,
                      (int)tile.g, (int)tile.b);
        __syncwarp();
      } else {
        const QueryTile nt = next_item < items ? query_tile<QTILE>(next_item, qtiles, p) : tile;
        consume(core, cur, seq, full0, empty0, warp, tile.lim0 + warp, scale_log2, true, p.lse, [&] {
          if (Q_TILES == 2 && next_item < items) {
            if (warp < nt.nq) issue_q(nt, q_tile_of(k + 1));
            next_q_issued = true;
          }
        });
        between0 = NSA_TRACE_CLOCK();
        cp_async_wait<0>();  // this item's Q copies (a query with no block of its own did not wait)
        if (warp < tile.nq) store(tile);
        NSA_TRACE_EXIT(p.lse, threadIdx.x == 0, stored);
        NSA_TRACE_ADD(p.lse, threadIdx.x == 0, store_cyc, NSA_TRACE_CLOCK() - between0);
      }
      if (lane == 0) mbar_arrive(full0 + FREED_BARRIERS + 8u * (u32)(k & 1));
      seq += (unsigned)cur.nu;
      if (next_item < items) {
        tile = query_tile<QTILE>(next_item, qtiles, p);
        [[maybe_unused]] const long long r0 = NSA_TRACE_CLOCK();
        mbar_wait(ready0 + 8u * (u32)((k + 1) & 1), (u32)((k >> 1) & 1));  // build k of buffer (k + 1) % 2
        NSA_TRACE_ADD(p.lse, threadIdx.x == 0, ready_cyc, NSA_TRACE_CLOCK() - r0);
        if (warp < QTILE) {
          group_sync(warp >> 2);  // with one Q tile: the group's last wgmma has read it before any warp rewrites it
          core.use_q_tile(q_tile_of(k + 1));
          if (!next_q_issued && warp < tile.nq) issue_q(tile);
          next_q_issued = false;
          NSA_TRACE_ADD(p.lse, threadIdx.x == 0, between_cyc, NSA_TRACE_CLOCK() - between0);
        }
      }
    }
  }
#else
  if (blockIdx.x < items) {
    QueryTile tile = query_tile<QTILE>(blockIdx.x, qtiles, p);
    if (warp < tile.nq) issue_q(tile);
    {
      Union first;
      first.carve(smem);
      first.build(tile.sel, tile.nq, tile.lim0);  // synchronises the CTA: the barriers are initialised too
#if NSA_PREFILL_GROUP
      if constexpr (NGROUPS == 2) {
        if (warp == 0) first.order_for_two_groups();
        __syncthreads();
      }
#endif
    }
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, union_built);
    bool q_pending = true;
    long long k = 0;
    for (long long item = blockIdx.x; item < items; item += gridDim.x, ++k) {
      // The buffers are addressed by k's parity at run time (an array of two Unions indexed so
      // would live in local memory).
      Union cur, next;
      cur.carve(smem + (k & 1) * UNION_BYTES);
      cur.read_counts();  // built by the CTA (k = 0) or the producer warp, and waited for
      next.carve(smem + ((k + 1) & 1) * UNION_BYTES);
      const long long next_item = item + gridDim.x;
      if (warp >= QTILE) {
        const int lane = threadIdx.x & 31;
        const int head = cur.nu < STAGES ? cur.nu : STAGES;
        if (lane == 0)
          produce_tma(cur, 0, head, seq, full0, empty0, smem_addr(k_ring), smem_addr(v_ring), &k_map, &v_map,
                      (int)tile.g, (int)tile.b);
        if (next_item < items) {
          // Every consumer is past item k - 1 (whose buffer `next` is): item k - 1's last block is
          // block seq - 1, in the stage one of the head blocks waited for, or waited for here.
          // (prefill_group: its V, which is released last.)
          if (lane == 0 && cur.nu < STAGES && seq > 0) {
            const unsigned last = seq - 1u;
            mbar_wait(empty0 + V_BARRIERS + 8u * (last % STAGES), (last / STAGES) & 1u);
          }
          __syncwarp();
          const QueryTile nt = query_tile<QTILE>(next_item, qtiles, p);
          next.build_warp(nt.sel, nt.nq, nt.lim0);
#if NSA_PREFILL_GROUP
          if constexpr (NGROUPS == 2) next.order_for_two_groups();
#endif
          mbar_arrive(ready0 + 8u * (u32)((k + 1) & 1));
        }
        if (lane == 0)
          produce_tma(cur, head, cur.nu, seq, full0, empty0, smem_addr(k_ring), smem_addr(v_ring), &k_map, &v_map,
                      (int)tile.g, (int)tile.b);
        __syncwarp();
      } else {
        // One past the tile's last query (nq < QTILE) has no bit in umask and computes nothing.
        consume(core, cur, seq, full0, empty0, warp, tile.lim0 + warp, scale_log2, q_pending, p.lse);
        if (q_pending) cp_async_wait<0>();  // a query with no block of its own: its copies land before reuse
        if (warp < tile.nq) store(tile);
        NSA_TRACE_EXIT(p.lse, threadIdx.x == 0, stored);
      }
      seq += (unsigned)cur.nu;
      if (next_item < items) {
        tile = query_tile<QTILE>(next_item, qtiles, p);
        if (warp < QTILE) {
          mbar_wait(ready0 + 8u * (u32)((k + 1) & 1), (u32)((k >> 1) & 1));  // build k of buffer (k + 1) % 2
#if NSA_PREFILL_GROUP
          group_sync(warp >> 2);  // the group's last wgmma has read its Q tile before any warp rewrites it
#endif
          if (warp < tile.nq) issue_q(tile);
          q_pending = true;
        }
      }
    }
  }
#endif  // the persistent loop with or without a builder warp
#else
  for (long long item = blockIdx.x; item < items; item += gridDim.x) {
    const QueryTile tile = query_tile<QTILE>(item, qtiles, p);
    Union un;
    un.carve(smem);
    // Consumers start their Q copies before the union is built; they land while it is.
    if (warp < tile.nq) issue_q(tile);
    un.build(tile.sel, tile.nq, tile.lim0);
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, union_built);

    if (warp >= QTILE) {
      const elem_t* k_bg = ptr_elem(p.k) + (tile.b * p.t_kv * p.h_kv + tile.g) * DQK;
      const elem_t* v_bg = ptr_elem(p.v) + (tile.b * p.t_kv * p.h_kv + tile.g) * DV;
      produce(un, seq, (int)threadIdx.x - QTILE * 32, full0, empty0, k_ring, v_ring, k_bg, v_bg, p.h_kv * DQK,
              p.h_kv * DV, tile.lim0 + tile.nq - 1);
    } else {
      // Every consumer passes every block (see "Roles"); one past the tile's last query (nq <
      // QTILE) has no bit in umask and computes nothing.
      cp_async_wait<0>();
      __syncwarp();
      consume(core, un, seq, full0, empty0, warp, tile.lim0 + warp, scale_log2, false, p.lse);
      if (warp < tile.nq) store(tile);
      NSA_TRACE_EXIT(p.lse, threadIdx.x == 0, stored);
    }
    seq += (unsigned)un.nu;
    __syncthreads();  // the union is rebuilt for the next item only when every warp is done with it
  }
#endif
}

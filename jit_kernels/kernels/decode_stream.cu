// decode_stream: row-wise selection attention for decode, in which producer warps stream a row's
// selected blocks through a shared-memory ring and consumer warps each compute whole blocks.
//
// Why. At small batch the row-wise designs (query_outer, split_kv) run one CTA per SM whose warps
// share every tile: each warp owns 16-32 keys of it, a CTA barrier separates tiles, and the next
// tile's copies are issued by the same warps between two tiles' math. On the H100 at B=16 (ncu,
// docs/performance.md v7) such a CTA spent ~60% of its cycles issuing or waiting on its own
// instructions, one warp per scheduler, 37% of them issuing copies. Here the copies have their own
// warps, each consumer warp takes whole blocks (a 64-key block is one compute step: 673 SASS
// instructions, against 664 per warp per 16 keys in split_kv) and consumers work on different
// blocks at once, with no CTA barrier between blocks. What it bought, measured: at B=16 the same
// time as split_kv (20.4 vs 20.5 us) with half the CTAs, because the stream then already runs at
// the copy rate and the rest is fixed (launch, the dependent block-id read, the last blocks and
// the merge: a %globaltimer timeline in v7); it is the fastest setting at B=16 (both configs) and
// for the paper config at B=128, and within 2% elsewhere in decode.
//
// Work. A row (b, g, t) is split into SPLIT shares of its visible blocks (the compacted list of
// selected_row.cuh: wholly visible blocks, then the one cut by the causal limit or T_kv); share s
// is blocks [s * nb / SPLIT, (s + 1) * nb / SPLIT) of the row's nb, and one CTA takes it. The
// SPLIT CTAs of a row form a thread-block cluster (sm_90) and merge their partials through
// distributed shared memory (cluster_merge.cuh); with SPLIT = 1 the CTA writes the row itself.
//
// Roles. Warps 0 .. CONSUMERS-1 are consumers, the last PRODUCERS warps load. Block j of the share
// (j counted across the CTA's work items, as `seq` + j) goes to ring stage j % STAGES in that
// stage's phase j / STAGES and is computed by team j % TEAMS: the consumers form TEAMS =
// CONSUMERS / SHARE teams of SHARE warps, and each warp of a team computes BLK / SHARE of the
// block's keys (share = 1: a consumer computes whole blocks). The hand-over is
// prefill_stream's (see its "Roles" for why it is sound): full[s] completes when every producer
// lane's copies of the block have landed (cp.async.mbarrier.arrive, count PRODUCERS * 32);
// empty[s] when every consumer is past it (count CONSUMERS). Every consumer passes every block in
// order (wait full, arrive empty), computing only its own: the parity waits stay within one phase
// of their barrier, and a consumer passing a block it does not own costs one wait on a block that
// has usually landed.
//
// Each consumer keeps its own online-softmax state (m, l, O for the row's h <= 16 heads, a
// one-warp AttentionCore with Q fragments in registers). At the end the consumers' states are
// merged through shared memory (overlaying the ring), as the engine merges its column groups.
//
// Numerics are those of the other designs: scores scaled into the log2 domain, online softmax in
// fp32, P rounded to the input dtype for P V, O normalised once at the end; a row that sees no key
// writes O = 0 and LSE = -inf. Rows of a block past the row's visible limit are copied from the
// block's first row (finite data, never past T_kv) and masked.
//
// Knobs: NSA_KNOB_TMA (1: one producer thread copies each block with the tensor memory
// accelerator into 128-byte-swizzled slots, as prefill_stream's; K's and V's tensor maps are
// kernel arguments after p), NSA_KNOB_SPLIT (1..8; > 1 needs sm_90 clusters), NSA_KNOB_CONSUMERS,
// NSA_KNOB_PRODUCERS (consumers + producers <= 8 warps, so a thread may use 255 registers:
// layout.cuh's stream register plan), NSA_KNOB_STAGES (2..8: ring depth in whole blocks),
// NSA_KNOB_SHARE (consumers per block, dividing consumers, block / share a multiple of 16). The
// catalog offers split {1, 4, 2}, consumers {4, 2, 6}, producers {2} (1 with tma = 1), stages
// {4, 3, 2, 5}: the values that won somewhere among 84 settings measured on the H100; tma = 1 was
// the fastest in every decode case on the H200 (docs/performance.md, v8). share {1, 4}: four
// warps on one block cut its math after it lands to about a quarter, which wins where a row
// has few blocks (B = 16, n = 1 on the H200: 8.8 against 9.2 us) and loses where it has many,
// a 16-key step costing a warp nearly as long as a 64-key one (n = 16: 17.9 against 16.7 us;
// docs/performance.md, v12).
// Needs h <= 16. Launch: grid.x = min(rows * SPLIT, the largest multiple of SPLIT <= 2^31-1) (CTAs
// loop over the rest), block = 32 * (consumers + producers), dynamic shared memory =
// nsa_layout::decode_stream_smem(...). No workspace.
#include "block_copy.cuh"
#include "cluster_merge.cuh"  // the cluster merge is compiled only where split > 1 calls it
#include "selected_row.cuh"
#include "trace.cuh"

#if !defined(NSA_KNOB_SPLIT) || !defined(NSA_KNOB_CONSUMERS) || !defined(NSA_KNOB_PRODUCERS) || \
    !defined(NSA_KNOB_STAGES) || !defined(NSA_KNOB_TMA) || !defined(NSA_KNOB_SHARE)
#error "decode_stream.cu needs the knobs tma, split, consumers, producers, stages and share (jit_kernels/catalog.cpp)"
#endif

constexpr int SPLIT = NSA_KNOB_SPLIT;
constexpr int CONSUMERS = NSA_KNOB_CONSUMERS;
constexpr int PRODUCERS = NSA_KNOB_PRODUCERS;
constexpr int STAGES = NSA_KNOB_STAGES;
constexpr bool TMA = NSA_KNOB_TMA != 0;
constexpr int SHARE = NSA_KNOB_SHARE;      // consumers computing one block together
constexpr int TEAMS = CONSUMERS / SHARE;   // blocks in computation at once
constexpr int PART = BLK / SHARE;          // keys of a block each of its consumers computes
static_assert(!TMA || PRODUCERS == 1, "with tma = 1 one thread issues every copy: one producer warp");
#if NSA_KNOB_TMA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "decode_stream with tma = 1 needs sm_90 or newer (the tensor memory accelerator)"
#endif
constexpr int WARPS = CONSUMERS + PRODUCERS;
constexpr int THREADS = WARPS * 32;
constexpr int CHUNK = nsa_layout::decode_stream_step(WARPS, BLK, SHARE);  // keys per compute step
static_assert(CONSUMERS % SHARE == 0, "share must divide consumers: the consumers form teams of share warps");
static_assert(PART % 16 == 0 && PART % CHUNK == 0, "a consumer's part of a block is whole 16-key steps");
static_assert(H <= 16, "decode_stream computes a row's heads as the 16 rows of one MMA tile: h must be at most 16");
static_assert(WARPS <= 8, "decode_stream keeps Q in registers: at most 8 warps (255 registers a thread)");
static_assert(STAGES >= 2 && STAGES <= 8, "stages must be in [2, 8]");
static_assert(SPLIT >= 1 && SPLIT <= 8, "split must be in [1, 8] (a row's CTAs are one portable cluster)");

#if NSA_KNOB_SPLIT > 1
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define NSA_DECODE_CLUSTER_DIMS __cluster_dims__(SPLIT, 1, 1)
#else
#error "decode_stream with split > 1 needs sm_90 or newer (thread-block clusters)"
#endif
#else
#define NSA_DECODE_CLUSTER_DIMS
#endif

using Core = AttentionCore<1, 1, CHUNK, 2, false, 192, TMA>;
enum { NSA_DECODE_STREAM_TRACE(NSA_TRACE_ENUM) };  // the slots of a traced build (trace.cuh)
static_assert(Core::Q_IN_REGS, "decode_stream's consumers keep Q in registers");

namespace {

constexpr int KSTR = Core::KSTR, VSTR = Core::VSTR;
// Elements of one ring slot's K and V (padded rows, or the TMA's panels).
constexpr int K_SLOT = TMA ? BLK * DQK : BLK * KSTR;
constexpr int V_SLOT = TMA ? BLK * DV : BLK * VSTR;
constexpr int OSTR = DV + nsa_layout::kPad;  // merge buffer row stride, in floats

/// The producers: stream blocks [first, last) of the row list into the ring. `seq` numbers the
/// CTA's blocks across work items; `pt` is this thread's index among the PRODUCERS * 32 lanes.
__device__ __forceinline__ void produce(const SelectedRow& row, long long first, long long last, unsigned seq,
                                        int pt, u32 full0, u32 empty0, elem_t* k_ring, elem_t* v_ring,
                                        const elem_t* k_bg, const elem_t* v_bg, long long k_stride,
                                        long long v_stride) {
  for (long long j = first; j < last; ++j) {
    const unsigned n = seq + (unsigned)(j - first);
    const int s = (int)(n % STAGES);
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + 8u * s, (n / STAGES - 1u) & 1u);
    // Visible rows of the block: all but in the cut block (the list's last when npos is not a
    // multiple of BLK).
    const long long left = row.npos - j * BLK;
    const int vis = left >= BLK ? BLK : (int)left;
    const long long key0 = (long long)row.list[j] * BLK;
    copy_block_operand<DQK / 8, KSTR, PRODUCERS * 32>(k_ring + s * K_SLOT, k_bg + key0 * k_stride, k_stride, vis,
                                                      pt);
    copy_block_operand<DV / 8, VSTR, PRODUCERS * 32>(v_ring + s * V_SLOT, v_bg + key0 * v_stride, v_stride, vis,
                                                     pt);
    cp_async_mbar_arrive(full0 + 8u * s);
  }
}

/// produce() for tma = 1, run by one thread: block j of (b, g) goes to its stage as the TMA's
/// panels (tma_copy_block); keys past T_kv arrive as zeros and keys past the row's limit are real
/// keys, both masked by the consumers.
__device__ __forceinline__ void produce_tma(const SelectedRow& row, long long first, long long last, unsigned seq,
                                            u32 full0, u32 empty0, u32 k_ring, u32 v_ring, const TmaDescriptor* k_map,
                                            const TmaDescriptor* v_map, int g, int b) {
  for (long long j = first; j < last; ++j) {
    const unsigned n = seq + (unsigned)(j - first);
    const int s = (int)(n % STAGES);
    if (n >= (unsigned)STAGES) mbar_wait(empty0 + 8u * s, (n / STAGES - 1u) & 1u);
    tma_copy_block(k_ring + (u32)(s * K_SLOT * 2), v_ring + (u32)(s * V_SLOT * 2), k_map, v_map, g,
                   row.list[j] * BLK, b, full0 + 8u * s);
  }
}

/// Consumer warp c passes blocks [first, last) and computes its part of those its team owns:
/// team c / SHARE owns block j when (j - first) % TEAMS is it, and consumer c computes the
/// block's keys [(c % SHARE) * PART, + PART), into its engine's running state. `trace`: the
/// trace buffer of a traced build (trace.cuh), unused otherwise.
__device__ __forceinline__ void consume(Core& core, const SelectedRow& row, long long first, long long last,
                                        unsigned seq, u32 full0, u32 empty0, int c, float scale_log2,
                                        [[maybe_unused]] unsigned long long trace) {
  const int lane = core.lane;
  const int team = c / SHARE, key0 = (c % SHARE) * PART;
  [[maybe_unused]] long long wait_cyc = 0, compute_cyc = 0;
  for (long long j = first; j < last; ++j) {
    const unsigned n = seq + (unsigned)(j - first);
    const int s = (int)(n % STAGES);
    [[maybe_unused]] const long long t0 = NSA_TRACE_CLOCK();
    mbar_wait(full0 + 8u * s, (n / STAGES) & 1u);
    [[maybe_unused]] const long long t1 = NSA_TRACE_CLOCK();
    wait_cyc += t1 - t0;
    NSA_TRACE_STAMP(trace, c == 0 && lane == 0 && j == first, first_landed);
    if ((int)((j - first) % TEAMS) == team) {
      NSA_TRACE_STAMP(trace, lane == 0 && c % SHARE == 0 && j == last - 1, last_landed);
      const long long left = row.npos - j * BLK;  // >= 1: the list holds visible blocks only
      core.compute_block_part<BLK, PART>(s, key0, left >= BLK ? BLK : (int)left, scale_log2);
      __syncwarp();  // every lane's reads of the stage are done (their values fed the MMAs above)
      compute_cyc += NSA_TRACE_CLOCK() - t1;
      NSA_TRACE_STAMP(trace, lane == 0 && c % SHARE == 0 && j == last - 1, last_computed);
    }
    if (lane == 0) mbar_arrive(empty0 + 8u * s);
  }
  NSA_TRACE_ADD(trace, c == 0 && lane == 0, wait_cyc, wait_cyc);
  NSA_TRACE_ADD(trace, c == 0 && lane == 0, compute_cyc, compute_cyc);
}

/// Consumer warp c writes its state to the merge buffer: O rows [c][16][OSTR] (fp32), then (m, l)
/// per row at ml[(c * 16 + row) * 2]. l is summed over the quad first (each lane holds the sum
/// over its own columns). A lane's two columns of an 8-wide tile go as one 8-byte store: a
/// half-warp's 16 of them then fill 32 distinct banks (rows g, g + 1 are OSTR = 8 mod 32 words
/// apart), where two 4-byte stores each were 2-way conflicted.
__device__ __forceinline__ void stash_state(const Core& core, float* merge_o, float* merge_ml, int c) {
  const int lane = core.lane;
  const int g = lane >> 2, c2 = (lane & 3) * 2;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(core.l_run[0][hf]);
    const int r = g + hf * 8;
    float* dst = merge_o + (c * 16 + r) * OSTR;
#pragma unroll
    for (int dt = 0; dt < DV / 8; ++dt)
      *reinterpret_cast<float2*>(dst + dt * 8 + c2) = make_float2(core.o[0][dt][2 * hf], core.o[0][dt][2 * hf + 1]);
    if ((lane & 3) == 0) {
      merge_ml[(c * 16 + r) * 2] = core.m_run[0][hf];
      merge_ml[(c * 16 + r) * 2 + 1] = l;
    }
  }
}

}  // namespace

extern "C" __global__ void NSA_DECODE_CLUSTER_DIMS __launch_bounds__(THREADS, 1)
    nsa_decode_stream(NSA_STREAM_PARAMS) {
  require_smem(nsa_layout::decode_stream_smem(DQK, DV, H, NSEL, BLK, CONSUMERS, STAGES, SPLIT, TMA));
  NSA_TRACE_ENTRY(p.lse, threadIdx.x == 0, entry);
  unsigned char* smem = dynamic_smem();
  // [row list | barriers | partial (split > 1) | Q | ring (the merge buffer overlays it)]
  unsigned char* at = smem + nsa_layout::row_list_bytes(NSEL);
  const u32 full0 = smem_addr(at), empty0 = full0 + 8u * STAGES;
  at += nsa_layout::stream_barrier_bytes(STAGES);
  float* part = reinterpret_cast<float*>(at);
  at += SPLIT > 1 ? nsa_layout::split_partial_bytes(H, DV) : 0;
  elem_t* q_s = reinterpret_cast<elem_t*>(at);
  elem_t* k_ring = align_ring<TMA>(q_s + 16 * Core::QSTR);
  elem_t* v_ring = k_ring + STAGES * K_SLOT;
  float* merge_o = reinterpret_cast<float*>(k_ring);
  float* merge_ml = merge_o + CONSUMERS * 16 * OSTR;
  const int warp = threadIdx.x >> 5;

  // full[s] counts the producer lanes' cp.async arrivals, or the one TMA thread's arrival with
  // its byte count.
  if (threadIdx.x == 0) init_ring(full0, empty0, STAGES, TMA ? 1u : (u32)PRODUCERS * 32u, (u32)CONSUMERS, TMA);
#if NSA_KNOB_TMA
  if (threadIdx.x == CONSUMERS * 32) tma_prefetch_maps(&k_map, &v_map);  // the copying thread, during the row build
#endif
  // (The row build below synchronises the CTA before any barrier is used.)

  Core core;
  if (warp < CONSUMERS) core.init_warp(q_s, k_ring, v_ring);

  const long long rows = p.batch * p.h_kv * p.t_q;
  const long long h_q = p.h_kv * H;
  const float scale_log2 = p.scale * NSA_LOG2E;
  SelectedRow row;
  // Blocks this CTA has streamed before the current item (it never wraps: a CTA takes
  // ceil(rows * SPLIT / grid.x) items of at most n blocks).
  unsigned seq = 0;
  for (long long item = blockIdx.x; item < rows * SPLIT; item += gridDim.x) {
    const long long rid = item / SPLIT;
    const int share = (int)(item % SPLIT);
    const RowId r = split_row(rid, p);
    const elem_t* q_rows = ptr_elem(p.q) + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DQK;

    // Consumers start the Q copies (one 16-row tile, padding heads zero-filled) before the row
    // list is built; they land while it is.
    if (warp < CONSUMERS) {
      for (int i = threadIdx.x; i < 16 * (DQK / 8); i += CONSUMERS * 32) {
        const int hr = i / (DQK / 8), ch = i % (DQK / 8);
        cp_async_16(smem_addr(q_s + hr * Core::QSTR + ch * 8), hr < H ? q_rows + (long long)hr * DQK + ch * 8 : q_rows,
                    hr < H);
      }
      cp_async_commit();
    }
    row.build(reinterpret_cast<int*>(smem), p, r);  // synchronises the CTA
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, row_built);
    const long long nb = (row.npos + BLK - 1) / BLK;
    const long long first = share * nb / SPLIT, last = (share + 1) * nb / SPLIT;

    if (warp >= CONSUMERS) {
#if NSA_KNOB_TMA
      if (threadIdx.x == CONSUMERS * 32) {
        NSA_TRACE_STAMP(p.lse, true, first_issued);
        produce_tma(row, first, last, seq, full0, empty0, smem_addr(k_ring), smem_addr(v_ring), &k_map, &v_map,
                    (int)r.g, (int)r.b);
        NSA_TRACE_STAMP(p.lse, true, last_issued);
      }
#else
      const elem_t* k_bg = ptr_elem(p.k) + (r.b * p.t_kv * p.h_kv + r.g) * DQK;
      const elem_t* v_bg = ptr_elem(p.v) + (r.b * p.t_kv * p.h_kv + r.g) * DV;
      produce(row, first, last, seq, (int)threadIdx.x - CONSUMERS * 32, full0, empty0, k_ring, v_ring, k_bg, v_bg,
              p.h_kv * DQK, p.h_kv * DV);
#endif
    } else {
      cp_async_wait<0>();
      // Every consumer's Q copies have landed before any consumer reads the tile.
      asm volatile("bar.sync 1, %0;\n" ::"r"(CONSUMERS * 32) : "memory");
      core.load_q_fragments();
      core.reset();
      consume(core, row, first, last, seq, full0, empty0, warp, scale_log2, p.lse);
    }
    seq += (unsigned)(last - first);
    __syncthreads();  // every block has been computed: the merge buffer may overlay the ring
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, consumed);
    if (warp < CONSUMERS) stash_state(core, merge_o, merge_ml, warp);
    __syncthreads();
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, stashed);

    // Merge the consumers' states per (head, 8-wide chunk of D_v): into this CTA's partial for
    // the cluster merge (split > 1), or straight into O and LSE.
    elem_t* o_rows = ptr_elem_mut(p.o) + ((r.b * p.t_q + r.t) * h_q + r.g * H) * DV;
    float* LSE = NSA_LSE_OUT(p);
    float* lse_rows = LSE != nullptr ? LSE + (r.b * h_q + r.g * H) * p.t_q + r.t : nullptr;
    // Item (i, k) is 16 columns of head i, its quads (4 columns) k + j * GROUPS for j < 4: one
    // item a thread for h = 16, D_v = 128 (128 items, 160 threads), the row's (m, l) weighed once
    // for 16 columns, and 8 consecutive threads reading 128 consecutive bytes of a partial.
    constexpr int GROUPS = DV / 16;
    static_assert(DV % 16 == 0, "the merge takes 16 columns an item (families have D_v a multiple of 16)");
    for (int it = threadIdx.x; it < H * GROUPS; it += THREADS) {
      const int i = it / GROUPS, k = it % GROUPS;
      auto column_quad = [&](int j) { return k + j * GROUPS; };
      // A consumer that computed nothing has m = -inf, l = 0 and O = 0: it weighs nothing.
      float acc[16], m, l;
      merge_partial_quads<CONSUMERS, 4>(
          [&](int c) { return merge_ml + (c * 16 + i) * 2; },
          [&](int c, int j) { return reinterpret_cast<const float4*>(merge_o + (c * 16 + i) * OSTR) + column_quad(j); },
          acc, m, l);
      if constexpr (SPLIT > 1) {
        store_partial_quads<4>(part, i, column_quad, acc, m, l, k == 0);
      } else {
        store_output_quads<4>(o_rows + (long long)i * DV,
                              lse_rows != nullptr && k == 0 ? lse_rows + (long long)i * p.t_q : nullptr, column_quad,
                              acc, m, l);
      }
    }
    NSA_TRACE_STAMP(p.lse, threadIdx.x == 0, merged);
#if NSA_KNOB_SPLIT > 1
    cluster_sync();  // every CTA's partial is written and visible cluster-wide
    merge_in_cluster<SPLIT, THREADS>(part, p, r);
    cluster_sync();  // no CTA leaves or rebuilds its partial while a peer may still read it
#endif
    if constexpr (TMA) fence_proxy_async_shared();  // the merge buffer's bytes are the next item's TMA ring
    __syncthreads();  // the row list, Q and the merge buffer are reused by the next item
    NSA_TRACE_EXIT(p.lse, threadIdx.x == 0, stored);
  }
}

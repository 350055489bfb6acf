// Hardware primitives of the selection kernels, in inline PTX: NVRTC compiles the kernels with no
// include path, so there is no <cuda_bf16.h>, <cuda_fp16.h> or <cuda/pipeline>; everything the
// kernels need from the hardware beyond plain C++ and CUDA built-ins is here, in one file, so it
// can be reviewed against the PTX ISA in one sitting.
//
// Targets sm_80 and later: mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate), ldmatrix, and
// cp.async with zero-fill. Elements travel as raw 16-bit patterns (`elem_t`); the dtype is chosen
// by the prelude's NSA_DTYPE_BF16 / NSA_DTYPE_FP16.
//
// Fragment layouts used throughout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4:
//   A (16x16, row-major): reg0 = (row g,   k 2c..2c+1)   reg1 = (row g+8, k 2c..2c+1)
//                         reg2 = (row g,   k 2c+8..+9)   reg3 = (row g+8, k 2c+8..+9)
//   B (16x8, "col"):      reg0 = (k 2c..2c+1, col g)     reg1 = (k 2c+8..+9, col g)
//   C/D (16x8, fp32):     d0,d1 = (row g, cols 2c, 2c+1)  d2,d3 = (row g+8, cols 2c, 2c+1)
// The lower half of a 32-bit register always holds the lower column / k index.
#pragma once

#if defined(NSA_DTYPE_BF16) == defined(NSA_DTYPE_FP16)
#error "define exactly one of NSA_DTYPE_BF16 and NSA_DTYPE_FP16 (the variant prelude does)"
#endif

typedef unsigned short elem_t;  // one bf16 or fp16 value, as bits
typedef unsigned int u32;

/// The CTA's dynamic shared memory (16-byte aligned) and its size as launched.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char nsa_dynamic_smem[];
  return nsa_dynamic_smem;
}
__device__ __forceinline__ u32 dynamic_smem_size() {
  u32 bytes;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
  return bytes;
}
/// 32-bit shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// ---- asynchronous copies (sm_80) -------------------------------------------------------------

/// Copies 16 bytes from global `src` to shared `dst` asynchronously, or writes 16 zero bytes
/// when `valid` is false (src-size 0: nothing is read, so `src` may be any pointer). This is how
/// rows past T_kv, unselected positions and padding rows stay in bounds and finite.
__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
/// An L2 eviction policy that marks the lines it touches first to go ("evict_first", for the
/// whole access: fraction 1.0). Decode reads every selected K/V byte exactly once; marking those
/// lines evict-first keeps them from displacing what is reused (block_idx, Q, the split
/// partials, and in mixed traffic other kernels' working sets).
__device__ __forceinline__ unsigned long long l2_evict_first_policy() {
  unsigned long long policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
/// cp_async_16 with an L2 cache policy from l2_evict_first_policy() (a hint: the data and the
/// zero-fill are exactly those of cp_async_16).
__device__ __forceinline__ void cp_async_16_hint(u32 dst, const void* src, bool valid, unsigned long long policy) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes), "l"(policy)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- ldmatrix ----------------------------------------------------------------------------------

/// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and each lane gets
/// (row lane/4, elements 2(lane%4), +1) of matrix i in r[i].
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
/// The same, transposed: each lane gets (rows 2(lane%4), +1; column lane/4) of matrix i.
__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ---- tensor cores ------------------------------------------------------------------------------

/// d += A (16x16) * B (16x8), fp32 accumulate, inputs of the family's dtype.
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if defined(NSA_DTYPE_BF16)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ---- warpgroup MMA (sm_90a) --------------------------------------------------------------------
//
// wgmma.mma_async: the four warps of a warpgroup (128 consecutive threads, the first a multiple of
// 128) compute one M = 64 product together, B (and optionally A) read straight from shared memory
// through a matrix descriptor, asynchronously: the accumulators are not to be touched between
// the instruction and the wgmma_wait that retires it. Compiled only for sm_90a (the arch-specific
// target; the catalog offers the designs that use it there only). Register fragments, PTX ISA
// "Register Fragments and Shared Memory Matrix Layouts" for .m64nNk16: warp w of the warpgroup
// holds rows 16 w .. 16 w + 15, in exactly the mma.m16n8k16 layouts above (the accumulator as
// N / 8 C/D tiles of 16x8, d[j][0..3]; A as one A fragment per k16 step), so the softmax code of
// the mma.sync engine applies to each warp's rows unchanged.
//
// Shared-memory operands here are always 128-byte swizzled, as the TMA writes them (panels of
// rows of 64 elements, 1024-byte aligned; attention_core.cuh, "Swizzled rings").

#if defined(NSA_DTYPE_BF16)
#define NSA_WGMMA_TYPES ".f32.bf16.bf16"
#else
#define NSA_WGMMA_TYPES ".f32.f16.f16"
#endif
#define NSA_WG_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])

/// The matrix descriptor of a 128-byte-swizzled operand at shared address `addr`: start address
/// (bits 0-13, in 16-byte units), leading byte offset `lbo` (16-29) and stride byte offset `sbo`
/// (32-45), both in bytes here, base offset 0 (49-51: panels are 1024-byte aligned) and swizzle
/// mode 1 = 128 bytes (62-63).
///   K-major (rows of the reduction dim, 64 elements each: Q, and K for S = Q K^T): sbo = 1024,
///   the step between 8-row core-matrix groups; lbo unused (1). A k16 step within a 64-element
///   panel starts 32 bytes further along the row (the swizzle is applied to the address bits).
///   MN-major (rows of the reduction dim whose elements run along N: V for O = P V): sbo = 1024
///   between groups of 8 reduction rows, lbo = the step between 64-wide panels along N.
/// The descriptor is built from its low word (address and lbo) and high word (sbo and the
/// swizzle mode): an engine stepping through a tile adds (byte offset / 16) to the low word, a
/// constant per step, since a shared address below 256 KiB never carries out of the 14-bit
/// address field.
__device__ __forceinline__ u32 wgmma_desc_lo(u32 addr, u32 lbo) {
  return ((addr & 0x3ffffu) >> 4) | ((lbo >> 4) << 16);
}
constexpr u32 wgmma_desc_hi(u32 sbo) { return (sbo >> 4) | (1u << 30); }
/// `v`, which every lane of the warp holds, as a value ptxas knows is the warp's: redux.sync
/// writes a uniform register. What is computed from it and from constants then stays in the
/// uniform datapath, where an HGMMA reads its descriptors, instead of being computed per lane
/// and moved over with an R2UR at every HGMMA (docs/performance.md v16). All 32 lanes must be
/// active. It costs a REDUX and its latency: call it once per tile, not per block (per block it
/// was 3% slower, v16).
__device__ __forceinline__ u32 warp_uniform(u32 v) {
  u32 r;
  asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;\n" : "=r"(r) : "r"(v));
  return r;
}
__device__ __forceinline__ unsigned long long wgmma_desc_of(u32 lo, u32 hi) {
  return ((unsigned long long)hi << 32) | lo;
}

/// Orders this warpgroup's register writes (accumulators, A fragments) before the wgmma that
/// reads them; required before the first wgmma after such writes.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
/// Closes the group of wgmmas issued since the last commit.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Keeps the compiler from moving reads or writes of `r` across the (volatile) wgmma_wait before
/// it: the register's value is produced asynchronously, which the asm of the wgmma cannot say.
__device__ __forceinline__ void wgmma_fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }

/// d (64 x 64, fp32; this thread's 8 tiles of its warp's 16 rows) = (accumulate ? d : 0) +
/// A (64 x 16, K-major, descriptor) * B (16 x 64 with N rows of K, K-major, descriptor).
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], unsigned long long a_desc,
                                                   unsigned long long b_desc, int accumulate) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16" NSA_WGMMA_TYPES " {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : NSA_WG_D4(0), NSA_WG_D4(1), NSA_WG_D4(2), NSA_WG_D4(3), NSA_WG_D4(4), NSA_WG_D4(5), NSA_WG_D4(6), NSA_WG_D4(7)
      : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

/// d (64 x N, fp32) += A (64 x 16 from registers: this warp's mma.m16n8k16 A fragment) *
/// B (16 x N, MN-major: each reduction row holds N consecutive elements, descriptor), for N = 64
/// and 128. (scale-d is the predicate `p`, always true here.)
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[8][4], const u32 (&a)[4], unsigned long long b_desc) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16" NSA_WGMMA_TYPES " {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
      "}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : NSA_WG_D4(0), NSA_WG_D4(1), NSA_WG_D4(2), NSA_WG_D4(3), NSA_WG_D4(4), NSA_WG_D4(5), NSA_WG_D4(6), NSA_WG_D4(7)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(1));
}
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[16][4], const u32 (&a)[4], unsigned long long b_desc) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16" NSA_WGMMA_TYPES " {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
      "}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : NSA_WG_D4(0), NSA_WG_D4(1), NSA_WG_D4(2), NSA_WG_D4(3), NSA_WG_D4(4), NSA_WG_D4(5), NSA_WG_D4(6), NSA_WG_D4(7),
        NSA_WG_D4(8), NSA_WG_D4(9), NSA_WG_D4(10), NSA_WG_D4(11), NSA_WG_D4(12), NSA_WG_D4(13), NSA_WG_D4(14), NSA_WG_D4(15)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(1));
}
#undef NSA_WG_D4

// ---- vector stores to global memory ------------------------------------------------------------

// 16 and 8 bytes in one instruction. A plain `*reinterpret_cast<uint4*>(p) = v` of the output rows
// left NVVM's PTX with four st.global.u32 in every design (seen in nsa-kernel-inspect's cubins and
// NVRTC's PTX; a small kernel of the same statement does get st.global.v4), so the stores of
// results say what they are. `p` must be a global address aligned to the store's size.
__device__ __forceinline__ void st_global_v4(void* p, uint4 v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void st_global_v2(void* p, uint2 v) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}

// ---- shared memory by address ------------------------------------------------------------------

__device__ __forceinline__ void st_shared_u32(u32 addr, u32 v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 ld_shared_u32x4(u32 addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

// ---- conversions -------------------------------------------------------------------------------

/// Two floats rounded to nearest-even into one register: `lo` in bits 0-15, `hi` in 16-31.
/// (cvt.rn.*x2.f32 d, a, b puts a in the upper half.)
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
#if defined(NSA_DTYPE_BF16)
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}
/// Exact widening of one element.
__device__ __forceinline__ float to_float(elem_t x) {
#if defined(NSA_DTYPE_BF16)
  return __uint_as_float(((u32)x) << 16);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(x));
  return f;
#endif
}
/// One float rounded to nearest-even.
__device__ __forceinline__ elem_t from_float(float f) { return (elem_t)(pack2(f, 0.f) & 0xffffu); }

// ---- fast math ---------------------------------------------------------------------------------

/// 2^x with the MUFU unit; 2^-inf = +0, which the online softmax relies on for masked scores.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- atomics with memory-model semantics -------------------------------------------------------

/// 64-bit fetch-and-add at GPU scope with acquire-release semantics: stores that precede it in
/// causality order (the CTA's, when the caller passed a __syncthreads first) are visible to any
/// thread that acquires the value it wrote, and its caller sees everything released before the
/// values it reads. Lighter than __threadfence() (membar.gl, a sequentially consistent fence).
__device__ __forceinline__ unsigned long long atom_add_acq_rel_gpu(unsigned long long* addr, unsigned long long v) {
  unsigned long long old;
  asm volatile("atom.acq_rel.gpu.global.add.u64 %0, [%1], %2;\n" : "=l"(old) : "l"(addr), "l"(v) : "memory");
  return old;
}
/// 64-bit compare-and-swap at GPU scope, acquire-release: returns the old value; `desired` was
/// written iff it equals `expected`.
__device__ __forceinline__ unsigned long long atom_cas_acq_rel_gpu(unsigned long long* addr, unsigned long long expected,
                                                                  unsigned long long desired) {
  unsigned long long old;
  asm volatile("atom.acq_rel.gpu.global.cas.b64 %0, [%1], %2, %3;\n"
               : "=l"(old)
               : "l"(addr), "l"(expected), "l"(desired)
               : "memory");
  return old;
}
/// Relaxed 64-bit store at GPU scope (a counter reset that later launches read).
__device__ __forceinline__ void st_relaxed_gpu(unsigned long long* addr, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;\n" ::"l"(addr), "l"(v) : "memory");
}

// ---- thread-block clusters (sm_90) -----------------------------------------------------------
// Only the cluster variants of split_kv use these; the catalog offers those on sm_90 and newer
// only, and the kernel compiles this code only when NSA_KNOB_CLUSTER is 1.

/// This CTA's rank in its cluster (PTX %cluster_ctarank).
__device__ __forceinline__ u32 cluster_cta_rank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
/// A barrier over every thread of every CTA in the cluster: what each thread wrote to shared (or
/// global) memory before arriving is visible to every thread of the cluster after it waits
/// (arrive has release, wait has acquire semantics at cluster scope). Every thread must call it,
/// warp-uniformly (.aligned).
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
/// The shared::cluster address of the word at shared address `local` in CTA `rank` of the cluster.
__device__ __forceinline__ u32 cluster_map(u32 local, u32 rank) {
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
/// Loads from another CTA's shared memory (distributed shared memory) at a cluster_map address.
__device__ __forceinline__ float ld_cluster_f32(u32 addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ float4 ld_cluster_f32x4(u32 addr) {
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

// ---- mbarriers (sm_80; try_wait sm_90) -----------------------------------------------------------
// prefill_stream's producer and consumer warps hand ring stages to each other through shared-
// memory mbarriers instead of CTA barriers. A phase completes when its expected arrivals (the
// init count) have arrived; a waiter names the phase by its parity (phase k of a barrier has
// parity k & 1), which is only sound while the barrier is at most one phase away from it.

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/// One arrival (release semantics at CTA scope: this thread's earlier shared-memory reads and
/// writes happen before the phase completes).
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
/// Waits until the phase of parity `parity` has completed (acquire: what the arrivals released,
/// and the data of the cp.async copies that arrived on it, is visible afterwards).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  u32 done;
  do {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
#else
    asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
#endif
  } while (done == 0u);
}
/// Makes the arrival of this thread on `bar` wait for all of its earlier cp.async copies, and
/// count as one of the phase's expected arrivals (.noinc): init the barrier with one arrival per
/// copying thread.
__device__ __forceinline__ void cp_async_mbar_arrive(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}

// ---- the tensor memory accelerator (sm_90) -----------------------------------------------------
// The TMA variants of the streaming designs (knob tma = 1) fill their ring with one bulk tensor
// copy per 64-element panel of a block instead of thousands of 16-byte cp.async. The host
// encodes a tensor map (CUtensorMap) per operand for every launch (jit_kernels/driver.cpp) and
// passes it by value after SelectionParams; the kernel names it by the generic address of that
// __grid_constant__ parameter.

/// A CUtensorMap as the kernel sees it: 128 opaque bytes, 64-byte aligned.
struct __align__(64) TmaDescriptor {
  unsigned long long opaque[16];
};

/// Makes the mbarrier inits of this thread visible to the async proxy (the TMA unit completes
/// transactions on them) and to the cluster; the CTA must still synchronise before other
/// threads use the barriers.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/// Orders this thread's earlier generic-proxy accesses of shared memory before later async-proxy
/// ones (TMA copies into the same bytes): decode_stream's merge buffer overlays its ring.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
/// One arrival that also announces `bytes` of transactions to come on this phase: the phase
/// completes when its arrivals are in and that many bytes have landed (complete_tx).
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
/// Fetches the tensor map into the TMA unit's cache ahead of its first use.
__device__ __forceinline__ void tma_prefetch_descriptor(const TmaDescriptor* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}
/// Copies the box at coordinates (c0, c1, c2, c3) (innermost first) of the 4-D tensor `map`
/// into shared memory at `dst` (aligned as the map's swizzle needs: 1024 bytes for 128-byte
/// swizzle), completing `box bytes` of transactions on `bar`. Elements outside the tensor are
/// written as zeros.
__device__ __forceinline__ void tma_load_4d(u32 dst, const TmaDescriptor* map, int c0, int c1, int c2, int c3,
                                            u32 bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// ---- grid identity -----------------------------------------------------------------------------

/// The temporal launch number of this grid in its context (PTX %gridid): the same for every CTA
/// of one launch, different for the launches around it. split_kv tags its arrival counters with
/// it so that a counter left in any state (poisoned, uninitialised, or by an aborted launch) is
/// never mistaken for arrivals of the current launch.
__device__ __forceinline__ unsigned long long grid_launch_id() {
  unsigned long long id;
  asm volatile("mov.u64 %0, %%gridid;\n" : "=l"(id));
  return id;
}

// The worker's own kernels: fresh random inputs made on the device, and the error of an output
// against the reference reduced on the device. Neither is a selection kernel; they exist so
// that a tuning point costs milliseconds of setup instead of seconds of host work:
//   - a decode point with B=64, T_kv=32768, H_kv=4, D_qk=192 has 5 GB of K and V per input
//     copy; drawing that many normals on the host and uploading them would take longer than
//     timing every variant of the point;
//   - comparing a 64 MB prefill output on the host after each of ~60 variants would too.
//
// Launch convention: the driver layer launches every kernel with one SelectionParams argument
// (selection_params.cuh), so these kernels take one too and read their arguments from its
// fields, as listed above each entry. 256 threads per CTA, grid-stride loops, 64-bit counts.
//
// Random numbers are counter-based (splitmix64 of seed and element index, then Box-Muller), so
// a tensor is a pure function of its seed: a worker that restarts after a crash rebuilds the
// very same inputs, and the numerics of variants measured by different worker processes are
// compared on the same data.
#include "selection_params.cuh"

namespace {

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A standard normal, from the element index and the tensor's seed.
__device__ __forceinline__ float normal_at(unsigned long long seed, unsigned long long i) {
  const unsigned long long r = splitmix64(seed ^ splitmix64(i));
  // u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1).
  const float u1 = ((float)(r >> 40) + 1.0f) * (1.0f / 16777216.0f);
  const float u2 = (float)((r >> 8) & 0xFFFFFFull) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
  unsigned int u = __float_as_uint(f);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (inputs are finite)
  return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float bf16_to_f32(unsigned short b) { return __uint_as_float((unsigned int)b << 16); }

__device__ __forceinline__ unsigned short f32_to_fp16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ float fp16_to_f32(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ bool finite(float x) { return fabsf(x) <= 3.402823466e38f; }

template <bool kBf16>
__device__ void fill_normal(const SelectionParams& p) {
  unsigned short* out = reinterpret_cast<unsigned short*>(p.o);
  const long long count = p.batch;
  const unsigned long long seed = (unsigned long long)p.t_kv;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count;
       i += (long long)gridDim.x * blockDim.x) {
    const float x = normal_at(seed, (unsigned long long)i);
    out[i] = kBf16 ? f32_to_bf16(x) : f32_to_fp16(x);
  }
}

/// Per CTA, into partials[blockIdx.x * 5 + k]: sum (x-r)^2, sum r^2, sum |x-r|, max |x-r| over
/// the elements where x is finite, and the number of elements where x is not.
template <bool kBf16>
__device__ void error_partials(const SelectionParams& p) {
  const unsigned short* got = reinterpret_cast<const unsigned short*>(p.q);
  const unsigned short* ref = reinterpret_cast<const unsigned short*>(p.k);
  double* partials = reinterpret_cast<double*>(p.workspace);
  const long long count = p.batch;
  double d2 = 0, r2 = 0, ad = 0, md = 0, bad = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count;
       i += (long long)gridDim.x * blockDim.x) {
    const float x = kBf16 ? bf16_to_f32(got[i]) : fp16_to_f32(got[i]);
    const float r = kBf16 ? bf16_to_f32(ref[i]) : fp16_to_f32(ref[i]);
    if (!finite(x)) {
      bad += 1;
      continue;
    }
    const double d = (double)x - (double)r;
    d2 += d * d;
    r2 += (double)r * r;
    ad += fabs(d);
    md = fmax(md, fabs(d));
  }
  __shared__ double slots[5][8];
  for (int o = 16; o > 0; o >>= 1) {
    d2 += __shfl_xor_sync(0xffffffffu, d2, o);
    r2 += __shfl_xor_sync(0xffffffffu, r2, o);
    ad += __shfl_xor_sync(0xffffffffu, ad, o);
    md = fmax(md, __shfl_xor_sync(0xffffffffu, md, o));
    bad += __shfl_xor_sync(0xffffffffu, bad, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    slots[0][warp] = d2;
    slots[1][warp] = r2;
    slots[2][warp] = ad;
    slots[3][warp] = md;
    slots[4][warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int warps = blockDim.x / 32;
    for (int w = 1; w < warps; ++w) {
      slots[0][0] += slots[0][w];
      slots[1][0] += slots[1][w];
      slots[2][0] += slots[2][w];
      slots[3][0] = fmax(slots[3][0], slots[3][w]);
      slots[4][0] += slots[4][w];
    }
    for (int k = 0; k < 5; ++k) partials[blockIdx.x * 5 + k] = slots[k][0];
  }
}

}  // namespace

// Fill: p.o = destination (16-bit elements), p.batch = element count, p.t_kv = seed (bits).
extern "C" __global__ void __launch_bounds__(256) nsa_worker_fill_normal_bf16(const SelectionParams p) {
  fill_normal<true>(p);
}
extern "C" __global__ void __launch_bounds__(256) nsa_worker_fill_normal_fp16(const SelectionParams p) {
  fill_normal<false>(p);
}

// Error: p.q = result, p.k = reference (16-bit elements), p.batch = element count,
// p.workspace = partials (double[gridDim.x * 5]). Launch with blockDim.x = 256.
extern "C" __global__ void __launch_bounds__(256) nsa_worker_error_bf16(const SelectionParams p) {
  error_partials<true>(p);
}
extern "C" __global__ void __launch_bounds__(256) nsa_worker_error_fp16(const SelectionParams p) {
  error_partials<false>(p);
}

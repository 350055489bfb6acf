// The stand-alone program behind docs/performance.md v14's decode floors (docs/evidence/
// issue5-runs-2026-12-04-h200-session10.md, call 2). Not part of the build: it uses the CUDA runtime
// and nvcc, which the project does not (its kernels are NVRTC-compiled). Built and run by hand:
//   nvcc -O2 -std=c++17 -arch=sm_90 -o floor issue5-decode-floors-2026-12-04.cu && ./floor
// nsa-bench-kernels' 'launch us' column (bench_support.hpp: measure_launch_floor_us) measures
// the first of these floors for every variant's own launch.
//
// Floors of the decode B=16 case on this card, event-timed one launch per pair as nsa-bench-kernels does:
// an empty launch of decode_stream's shape, one dependent read of a row's 16 block ids, and the
// pure movement of the case's bytes (64 rows x 16 blocks x 32 KB from random block positions)
// by bulk copies into a shared-memory ring of S stages, no math.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <random>
#include <cuda_runtime.h>
struct Params { unsigned long long a[100]; };
__global__ void empty_k(Params p) { if (p.a[0] == 12345 && threadIdx.x == 999) p.a[1] = 0; }
__global__ void ids_k(const int* ids, int* out) {
  int v = ids[blockIdx.x * 16 + (threadIdx.x & 15)];
  __syncthreads();
  if (threadIdx.x == 0 && v == -7) out[0] = v;
}
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
template <int S>
__global__ void stream_k(const char* kv, const int* ids, int nb, int* out) {
  extern __shared__ __align__(128) unsigned char sm[];
  unsigned long long* bar = (unsigned long long*)sm;
  unsigned char* ring = sm + 128;
  const int row = blockIdx.x;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) asm volatile("mbarrier.init.shared.b64 [%0], 1;" :: "r"(smem_u32(bar + s)));
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int blocks[16];
    for (int j = 0; j < nb; ++j) blocks[j] = ids[row * 16 + j];
    unsigned acc = 0;
    for (int j = 0; j < nb + S; ++j) {
      if (j >= S) {  // wait block j - S, "consume" it
        int s = (j - S) % S; unsigned par = ((j - S) / S) & 1;
        unsigned done = 0;
        while (!done) asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0,1,0,p; }" : "=r"(done) : "r"(smem_u32(bar + s)), "r"(par));
        acc += ring[s * 32768 + (j & 127)];
      }
      if (j < nb) {
        int s = j % S;
        const char* src = kv + (long long)blocks[j] * 32768;
        unsigned b = smem_u32(bar + s);
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" :: "r"(b), "r"(32768));
        for (int h = 0; h < 2; ++h)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                       :: "r"(smem_u32(ring + s * 32768 + h * 16384)), "l"(src + h * 16384), "r"(16384), "r"(b) : "memory");
      }
    }
    if (acc == 0xdeadbeef) out[0] = acc;
  }
}
template <class F> float time_it(F f, int runs = 200) {
  std::vector<cudaEvent_t> a(runs), b(runs);
  for (int i = 0; i < runs; ++i) { cudaEventCreate(&a[i]); cudaEventCreate(&b[i]); }
  for (int i = 0; i < 20; ++i) f(i);
  for (int i = 0; i < runs; ++i) { cudaEventRecord(a[i]); f(i); cudaEventRecord(b[i]); }
  cudaDeviceSynchronize();
  std::vector<float> t(runs);
  for (int i = 0; i < runs; ++i) { cudaEventElapsedTime(&t[i], a[i], b[i]); t[i] *= 1000.f; }
  std::sort(t.begin(), t.end());
  return t[runs / 2];
}
int main() {
  const long long kv_bytes = 4LL << 30;  // 4 GiB of blocks: 131072 blocks of 32 KB, rotated over copies
  char* kv; cudaMalloc(&kv, kv_bytes); cudaMemset(kv, 1, kv_bytes);
  const int nblk = (int)(kv_bytes / 32768), copies = 8;
  int* ids; cudaMalloc(&ids, sizeof(int) * 16 * 1024 * copies);
  std::mt19937 rng(1);
  std::vector<int> h(16 * 1024 * copies);
  for (auto& x : h) x = rng() % nblk;
  cudaMemcpy(ids, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  int* out; cudaMalloc(&out, 64);
  Params p{}; 
  for (int smem : {0, 180 * 1024}) {
    cudaFuncSetAttribute(empty_k, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
    printf("empty launch, grid 64, block 160, %d KB smem, 800 B params: %.2f us\n", smem / 1024,
           time_it([&](int) { empty_k<<<64, 160, smem>>>(p); }));
  }
  printf("one dependent read of 16 block ids, grid 64: %.2f us\n",
         time_it([&](int i) { ids_k<<<64, 160>>>(ids + (i % copies) * 16 * 1024, out); }));
  auto run = [&](auto kern, int S, int grid, int nb) {
    cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, 128 + S * 32768);
    float us = time_it([&](int i) { kern<<<grid, 32, 128 + S * 32768>>>(kv, ids + (i % copies) * 16 * 1024, nb, out); });
    double mb = grid * (double)nb * 32768 / 1e6;
    printf("bulk-copy stream, %d stages, grid %d, %d blocks a CTA (%.1f MB): %.2f us (%.0f GB/s)\n", S, grid, nb, mb, us, mb * 1e3 / us);
  };
  for (int grid : {64, 128}) {
    int nb = grid == 64 ? 16 : 8;
    run(stream_k<2>, 2, grid, nb); run(stream_k<4>, 4, grid, nb); run(stream_k<5>, 5, grid, nb); run(stream_k<6>, 6, grid, nb);
  }
  run(stream_k<6>, 6, 64, 1); run(stream_k<6>, 6, 64, 4); run(stream_k<6>, 6, 64, 8);
  cudaError_t e = cudaDeviceSynchronize();
  printf("status: %s\n", cudaGetErrorString(e));
}

// The one parameter block every selection kernel takes, shared by host C++ and device code.
// Plain C layout: pointers travel as 64-bit device addresses so the host side needs no CUDA
// headers to fill it. Layouts are the spec's (../shared/spec/selection-attention.md), rows
// contiguous; all element offsets are computed in 64 bits (tensors may exceed 2^31 elements).
#pragma once

#ifdef __CUDACC_RTC__
typedef unsigned long long nsa_u64;
typedef long long nsa_i64;
#else
#include <cstdint>
typedef std::uint64_t nsa_u64;
typedef std::int64_t nsa_i64;
#endif

struct SelectionParams {
  nsa_u64 q;          // [B, T_q, H_q, D_qk]   bf16/fp16
  nsa_u64 k;          // [B, T_kv, H_kv, D_qk]
  nsa_u64 v;          // [B, T_kv, H_kv, D_v]
  nsa_u64 block_idx;  // [B, H_kv, T_q, n]      int32, -1 = empty slot, unsorted
  nsa_u64 o;          // [B, T_q, H_q, D_v]     same dtype as q
  nsa_u64 lse;        // [B, H_q, T_q]          fp32, natural log; 0 = not requested
  nsa_u64 workspace;  // scratch sized by the variant's launch plan; 0 if it needs none
  nsa_i64 batch;
  nsa_i64 t_q;
  nsa_i64 t_kv;
  nsa_i64 h_kv;
  float scale;        // softmax scale, 1/sqrt(D_qk) unless the caller overrides it
  int pad0;
};

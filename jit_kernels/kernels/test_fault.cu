// TEST ONLY: a "variant" that misbehaves on purpose, so that a GPU run can show the tuner's
// containment (docs/tuning.md, "Test fault switch"). It is compiled only when the daemon runs
// with NSA_TUNE_TEST_FAULT set, and is never a dispatch answer: its measurement is always a
// failure status, so no verdict can pick it.
//
// The prelude defines exactly one of:
//   NSA_TEST_FAULT_ILLEGAL_ADDRESS  store through an unmapped address: CUDA_ERROR_ILLEGAL_ADDRESS,
//                                   a sticky error that poisons the worker's context
//   NSA_TEST_FAULT_HANG             spin forever: only the supervisor's watchdog ends it
//   NSA_TEST_FAULT_ABORT            execute `trap`: CUDA_ERROR_LAUNCH_FAILED, also sticky
// One CTA of 32 threads is enough for each; the parameter block is the usual one so that the
// worker launches it like every other variant.
#include "selection_params.cuh"

extern "C" __global__ void nsa_test_fault(const SelectionParams p) {
#if defined(NSA_TEST_FAULT_ILLEGAL_ADDRESS)
  // Page 0 is never mapped; `volatile` keeps the store from being optimised away.
  volatile float* nowhere = reinterpret_cast<volatile float*>(static_cast<unsigned long long>(threadIdx.x) * 4 + 16);
  *nowhere = 1.0f;
#elif defined(NSA_TEST_FAULT_HANG)
  // p.t_q is never negative, but the compiler cannot know that: the loop stays.
  while (p.t_q >= 0) {
    __nanosleep(1000000);
  }
#elif defined(NSA_TEST_FAULT_ABORT)
  asm volatile("trap;");
#else
#error "test_fault.cu needs NSA_TEST_FAULT_ILLEGAL_ADDRESS, NSA_TEST_FAULT_HANG or NSA_TEST_FAULT_ABORT"
#endif
}

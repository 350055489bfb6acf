// NVRTC compilation: errors as data, exact targets, embedded headers only, ptxas resources.

#include "nsa/jit/nvrtc.hpp"

#include <gtest/gtest.h>

namespace {

using namespace nsa::jit;

constexpr const char* kSmallKernel = R"(
#include "selection_params.cuh"
extern "C" __global__ void copy_scaled(SelectionParams p) {
  __shared__ float stage[256];
  stage[threadIdx.x] = p.scale * ((const float*)p.q)[threadIdx.x];
  __syncthreads();
  ((float*)p.o)[threadIdx.x] = stage[255 - threadIdx.x];
}
extern "C" __global__ void second_entry(SelectionParams p) { ((float*)p.o)[0] = p.scale; }
)";

bool is_elf(const std::vector<std::uint8_t>& image) {
  return image.size() > 4 && image[0] == 0x7f && image[1] == 'E' && image[2] == 'L' && image[3] == 'F';
}

}  // namespace

TEST(NvrtcCompile, SyntaxErrorReturnsLogAndOptions) {
  auto r = compile_source_to_cubin("extern \"C\" __global__ void f() { int x = ; }\n", "broken.cu", "sm_90",
                                   "sel_fwd.test.broken");
  ASSERT_FALSE(r);
  const auto& e = r.error();
  EXPECT_EQ(e.code, NVRTC_ERROR_COMPILATION);
  EXPECT_NE(e.log.find("broken.cu(1)"), std::string::npos) << e.log;
  EXPECT_NE(e.log.find("error"), std::string::npos) << e.log;
  EXPECT_EQ(e.options, options_string("sm_90"));
  EXPECT_NE(e.options.find("--gpu-architecture=sm_90"), std::string::npos);
  EXPECT_EQ(e.variant_key, "sel_fwd.test.broken");
  EXPECT_NE(e.message().find("sel_fwd.test.broken"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("expected an expression"), std::string::npos) << e.message();
}

TEST(NvrtcCompile, EveryRequiredTargetGivesACubin) {
  for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"}) {
    auto r = compile_source_to_cubin(kSmallKernel, "small.cu", arch, "small");
    ASSERT_TRUE(r) << arch << ": " << r.error().message() << "\n" << r.error().log;
    EXPECT_TRUE(is_elf(r->image)) << arch << ": a cubin is an ELF image, PTX is not";
    EXPECT_NE(r->log.find(std::string("for '") + arch + "'"), std::string::npos) << r->log;
  }
}

TEST(NvrtcCompile, UnknownTargetIsRejectedWithTheSupportedList) {
  for (const char* arch : {"sm_91", "sm90", "compute_90", "sm_80a", ""}) {
    EXPECT_FALSE(arch_supported(arch)) << arch;
    auto r = compile_source_to_cubin(kSmallKernel, "small.cu", arch, "small");
    ASSERT_FALSE(r) << arch;
    EXPECT_EQ(r.error().code, NVRTC_ERROR_INVALID_OPTION);
    EXPECT_NE(r.error().log.find("supported: "), std::string::npos) << r.error().log;
    EXPECT_NE(r.error().log.find("sm_90"), std::string::npos) << r.error().log;
  }
  EXPECT_TRUE(arch_supported("sm_90a"));
  EXPECT_TRUE(arch_supported("sm_80"));
}

TEST(NvrtcCompile, ToolkitHeadersAreNotOnTheIncludePath) {
  // Kernels must compile on a host with NVRTC but no CUDA headers, so none are offered here.
  auto r = compile_source_to_cubin("#include <cuda_fp16.h>\n__global__ void f() {}\n", "uses_toolkit.cu", "sm_90", "t");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, NVRTC_ERROR_COMPILATION);
  EXPECT_NE(r.error().log.find("cuda_fp16.h"), std::string::npos) << r.error().log;
}

TEST(NvrtcCompile, ResourcesOfEveryEntryAreReported) {
  auto r = compile_source_to_cubin(kSmallKernel, "small.cu", "sm_90", "small");
  ASSERT_TRUE(r) << r.error().log;
  ASSERT_EQ(r->kernels.size(), 2u) << r->log;
  const KernelResources* copy = nullptr;
  for (const auto& k : r->kernels)
    if (k.entry == "copy_scaled") copy = &k;
  ASSERT_NE(copy, nullptr) << r->log;
  EXPECT_EQ(copy->shared_bytes, 1024);  // float[256]
  EXPECT_GT(copy->registers, 0);
  EXPECT_EQ(copy->spill_bytes, 0);
  EXPECT_EQ(r->shared_bytes, 1024);
  EXPECT_GE(r->registers, copy->registers);
}

TEST(PtxasLog, SpillsSharedMemoryAndNonEntryFunctionsAreParsed) {
  const char* log =
      "ptxas info    : 0 bytes gmem\n"
      "ptxas info    : Function properties for helper_noinline\n"
      "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
      "ptxas info    : Compiling entry function 'sel_fwd_a' for 'sm_90'\n"
      "ptxas info    : Function properties for sel_fwd_a\n"
      "ptxas         .     40 bytes stack frame, 36 bytes spill stores, 28 bytes spill loads\n"
      "ptxas info    : Used 255 registers, used 1 barriers, 32768 bytes smem, 448 bytes cmem[0]\n"
      "ptxas info    : Compiling entry function 'sel_fwd_b' for 'sm_90'\n"
      "ptxas info    : Function properties for sel_fwd_b\n"
      "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
      "ptxas info    : Used 64 registers, used 0 barriers\n";
  auto k = parse_ptxas_resources(log);
  ASSERT_EQ(k.size(), 2u);
  EXPECT_EQ(k[0].entry, "sel_fwd_a");
  EXPECT_EQ(k[0].registers, 255);
  EXPECT_EQ(k[0].shared_bytes, 32768);
  EXPECT_EQ(k[0].spill_bytes, 64);
  EXPECT_EQ(k[0].stack_bytes, 40);
  EXPECT_EQ(k[1].entry, "sel_fwd_b");
  EXPECT_EQ(k[1].registers, 64);
  EXPECT_EQ(k[1].shared_bytes, 0);
  EXPECT_EQ(k[1].spill_bytes, 0);
}

// Finding the driver on a host that may have none: a clear problem line, never a crash, and
// driver objects that fail with the same reason.
//
// Which library is loaded is decided once per process, so the cases that point NSA_LIBCUDA
// elsewhere run this binary again as a child process (the hook below answers before GoogleTest
// starts) and read its one-line answer.

#include "nsa/jit/device.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "nsa/jit/driver.hpp"

using namespace nsa::jit;

namespace {

// Child mode: print the probe's problem and exit before GoogleTest runs.
const bool kChildHook = [] {
  if (std::getenv("NSA_PROBE_CHILD")) {
    auto p = probe_devices();
    std::printf("available=%d problem=%s\n", p.available() ? 1 : 0, p.problem.c_str());
    std::fflush(stdout);
    std::_Exit(0);
  }
  return true;
}();

/// Runs this test binary as a child with NSA_LIBCUDA=`lib` and returns what it printed.
std::string probe_in_child(const std::string& lib) {
  const auto self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string cmd = "NSA_PROBE_CHILD=1 NSA_LIBCUDA='" + lib + "' '" + self + "'";
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return "popen failed";
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe)) out += buf.data();
  const int status = pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child crashed: " << out;
  return out;
}

}  // namespace

TEST(DriverProbe, HostWithoutDriverGetsOneClearLineAndNoCrash) {
  auto p = probe_devices();
  if (p.available()) GTEST_SKIP() << "this host has a GPU: " << p.devices[0].name;
  EXPECT_FALSE(p.problem.empty());
  EXPECT_EQ(p.problem.find('\n'), std::string::npos) << "one line";
  EXPECT_NE(p.problem.find("every answer will be the SDPA fallback"), std::string::npos) << p.problem;
  EXPECT_TRUE(p.devices.empty());
}

TEST(DriverProbe, MissingLibraryIsNamed) {
  auto out = probe_in_child("/nonexistent/libcuda.so.1");
  EXPECT_NE(out.find("available=0"), std::string::npos) << out;
  EXPECT_NE(out.find("/nonexistent/libcuda.so.1 not found (no NVIDIA driver on this host"), std::string::npos) << out;
}

TEST(DriverProbe, ToolkitStubIsRecognisedAsNotADriver) {
  const std::filesystem::path stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (!std::filesystem::exists(stub)) GTEST_SKIP() << "no toolkit stub at " << stub;
  auto out = probe_in_child(stub.string());
  EXPECT_NE(out.find("cuInit failed: CUDA_ERROR_STUB_LIBRARY"), std::string::npos) << out;
  EXPECT_NE(out.find("stub, not a driver"), std::string::npos) << out;
}

TEST(DriverProbe, DevicesAreDescribedCompletely) {
  auto p = probe_devices();
  if (!p.available()) GTEST_SKIP() << p.problem;
  EXPECT_GT(p.driver_version, 0);
  const std::regex uuid("GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");
  for (const auto& d : p.devices) {
    EXPECT_TRUE(std::regex_match(d.uuid, uuid)) << d.uuid;
    EXPECT_EQ(d.arch, "sm_" + std::to_string(d.cc_major) + std::to_string(d.cc_minor));
    EXPECT_GT(d.sm_count, 0);
    EXPECT_GT(d.memory_bytes, 0u);
    EXPECT_GT(d.l2_bytes, 0u);
    EXPECT_GE(d.max_shared_per_block_optin, 48 * 1024);
    EXPECT_FALSE(d.name.empty());
  }
}

TEST(DriverLayer, ObjectsFailWithTheProbesReasonWithoutADriver) {
  auto p = probe_devices();
  if (p.available()) GTEST_SKIP() << "this host has a GPU";
  auto ctx = Context::retain_primary(0);
  ASSERT_FALSE(ctx);
  EXPECT_NE(ctx.error().message().find(p.problem), std::string::npos) << ctx.error().message();
  auto buf = DeviceBuffer::allocate(1024, "K");
  ASSERT_FALSE(buf);
  EXPECT_FALSE(buf.error().sticky);
  auto stream = Stream::create();
  EXPECT_FALSE(stream);
}

TEST(DriverLayer, ErrorMessageNamesCallVariantResultAndStickiness) {
  DriverError e{"cuLaunchKernel", CUDA_ERROR_ILLEGAL_ADDRESS, result_name(CUDA_ERROR_ILLEGAL_ADDRESS),
                "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_tile64_stages2.sm90",
                is_sticky(CUDA_ERROR_ILLEGAL_ADDRESS), ""};
  EXPECT_EQ(e.message(),
            "cuLaunchKernel failed for sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_tile64_stages2.sm90: "
            "CUDA_ERROR_ILLEGAL_ADDRESS (sticky: the context is unusable; restart the process)");
  for (CUresult r : {CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_LAUNCH_FAILED, CUDA_ERROR_ILLEGAL_INSTRUCTION,
                     CUDA_ERROR_MISALIGNED_ADDRESS, CUDA_ERROR_HARDWARE_STACK_ERROR})
    EXPECT_TRUE(is_sticky(r)) << r;
  for (CUresult r : {CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                     CUDA_ERROR_NOT_FOUND})
    EXPECT_FALSE(is_sticky(r)) << r;
}

TEST(DriverProbe, NvrtcVersionIsMajorDotMinor) {
  EXPECT_TRUE(std::regex_match(nvrtc_version(), std::regex(R"(\d+\.\d+)"))) << nvrtc_version();
}

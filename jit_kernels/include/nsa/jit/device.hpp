#pragma once
// What the local CUDA driver reports, found without linking libcuda: the driver library is
// dlopen'd, so the same binaries run on a host with no NVIDIA driver and say so.

#include <cstdint>
#include <string>
#include <vector>

namespace nsa::jit {

struct DeviceInfo {
  int ordinal = 0;
  std::string uuid;           // "GPU-xxxxxxxx-xxxx-..."
  std::string name;
  int cc_major = 0, cc_minor = 0;
  std::string arch;           // "sm_90"
  int sm_count = 0;
  std::uint64_t memory_bytes = 0;
  std::uint64_t l2_bytes = 0;
  int max_shared_per_block_optin = 0;
};

/// Result of looking for GPUs. `available()` is false with a one-line `problem` when the
/// driver library is missing, cuInit fails, or there are no devices.
struct DriverProbe {
  bool driver_loaded = false;
  int driver_version = 0;           // 13000 for CUDA 13.0
  std::vector<DeviceInfo> devices;
  std::string problem;              // "libcuda.so.1 not found: no NVIDIA driver on this host"
  bool available() const { return driver_loaded && !devices.empty(); }
};

/// Loads the driver (once per process) and enumerates devices. Never throws.
DriverProbe probe_devices();

/// "13.0": the NVRTC this binary uses (nvrtcVersion).
std::string nvrtc_version();

/// A stable hash (hex) of every embedded kernel source: part of what makes verdicts and
/// compiled kernels stale.
std::string kernel_source_hash();

}  // namespace nsa::jit

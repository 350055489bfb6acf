// Finding the driver and the GPUs without linking libcuda.
//
// The binaries are carried to hosts that may have no NVIDIA driver at all, so libcuda.so.1 is
// dlopen'd on first use (once per process) and every entry point after cuInit is resolved with
// cuGetProcAddress for the CUDA version these headers describe (see driver_api.hpp for why not
// dlsym). Each way this can fail becomes one line in DriverProbe::problem that says what is
// missing and what it means for the service; nothing here throws or aborts.

#include "nsa/jit/device.hpp"

#include <dlfcn.h>
#include <nvrtc.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "driver_api.hpp"
#include "nsa/jit/sources.hpp"

namespace nsa::jit {
namespace detail {

std::string fallback_result_name(CUresult r) {
  // For when cuGetErrorName is unavailable (no driver, or the toolkit's stub library, whose
  // entry points all fail): the results the probe can meet before a working driver exists, and the
  // sticky ones, so that a message stays readable whatever state the driver is in.
  switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_STUB_LIBRARY: return "CUDA_ERROR_STUB_LIBRARY";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: return "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH";
    case CUDA_ERROR_OPERATING_SYSTEM: return "CUDA_ERROR_OPERATING_SYSTEM";
    case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_ILLEGAL_INSTRUCTION: return "CUDA_ERROR_ILLEGAL_INSTRUCTION";
    case CUDA_ERROR_MISALIGNED_ADDRESS: return "CUDA_ERROR_MISALIGNED_ADDRESS";
    case CUDA_ERROR_HARDWARE_STACK_ERROR: return "CUDA_ERROR_HARDWARE_STACK_ERROR";
    default: return "CUresult " + std::to_string(static_cast<int>(r));
  }
}

std::string error_name_with(decltype(&::cuGetErrorName) get_name, CUresult r) {
  const char* s = nullptr;
  if (get_name && get_name(r, &s) == CUDA_SUCCESS && s) return s;
  return fallback_result_name(r);
}

namespace {

constexpr const char* kFallbackConsequence = "every answer will be the SDPA fallback";

/// Owns the dlopen handle of the driver library.
class DriverLibrary {
 public:
  explicit DriverLibrary(void* handle) : m_handle(handle) {}
  DriverLibrary(const DriverLibrary&) = delete;
  DriverLibrary& operator=(const DriverLibrary&) = delete;
  ~DriverLibrary() {
    if (m_handle) dlclose(m_handle);
  }
  void* symbol(const char* name) const { return dlsym(m_handle, name); }

 private:
  void* m_handle;
};

LoadedDriver load() {
  LoadedDriver out;
  // NSA_LIBCUDA lets an operator point at a driver outside the loader's path (and lets tests
  // point at the toolkit's stub library); the default is the driver's soname.
  const char* env = std::getenv("NSA_LIBCUDA");
  const std::string path = (env && *env) ? env : "libcuda.so.1";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    out.problem = path + " not found (no NVIDIA driver on this host" +
                  (why ? std::string("; dlopen: ") + why : std::string()) + "): " + kFallbackConsequence;
    return out;
  }
  // The library stays loaded for the life of the process: the driver registers its own exit
  // handlers, which must find it mapped, so the owner is deliberately never destroyed.
  static DriverLibrary* library = new DriverLibrary(handle);
  out.library_loaded = true;

  // Never-versioned entry points, safe to dlsym by their literal names.
  auto get_name = reinterpret_cast<decltype(&::cuGetErrorName)>(library->symbol("cuGetErrorName"));
  auto init = reinterpret_cast<decltype(&::cuInit)>(library->symbol("cuInit"));
  auto get_version = reinterpret_cast<decltype(&::cuDriverGetVersion)>(library->symbol("cuDriverGetVersion"));
  using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
  auto get_proc = reinterpret_cast<GetProcAddress>(library->symbol("cuGetProcAddress_v2"));
  if (!init || !get_version) {
    out.problem = path + " is not a CUDA driver library (cuInit missing): " + kFallbackConsequence;
    return out;
  }
  if (get_version(&out.driver_version) != CUDA_SUCCESS) out.driver_version = 0;
  if (CUresult r = init(0); r != CUDA_SUCCESS) {
    std::string why = error_name_with(get_name, r);
    if (r == CUDA_ERROR_STUB_LIBRARY) why += " (" + path + " is the toolkit's stub, not a driver)";
    else if (r == CUDA_ERROR_NO_DEVICE) why += " (the driver sees no GPU)";
    else if (r == CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)
      why += " (libcuda and the kernel module are of different versions: reinstall the driver or reboot)";
    out.problem = "cuInit failed: " + why + ": " + kFallbackConsequence;
    return out;
  }
  if (!get_proc) {
    out.problem = "the NVIDIA driver (version " + std::to_string(out.driver_version) +
                  ") has no cuGetProcAddress_v2; a CUDA 12 or newer driver is needed: " + kFallbackConsequence;
    return out;
  }

  static DriverApi api;
  std::string missing;
  // An optional entry point left null is never counted as missing (see DriverApi).
  auto resolve = [&](const char* name, auto& slot, int version = CUDA_VERSION, bool optional = false) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult r = get_proc(name, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !fn) {
      if (optional) return;
      if (!missing.empty()) missing += ", ";
      missing += name;
      return;
    }
    slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(fn);
  };
  // Base names, written out: cuGetProcAddress maps them to the versioned symbol for CUDA_VERSION.
  resolve("cuGetErrorName", api.get_error_name);
  resolve("cuGetErrorString", api.get_error_string);
  resolve("cuInit", api.init);
  resolve("cuDriverGetVersion", api.driver_get_version);
  resolve("cuDeviceGetCount", api.device_get_count);
  resolve("cuDeviceGet", api.device_get);
  resolve("cuDeviceGetName", api.device_get_name);
  resolve("cuDeviceGetUuid", api.device_get_uuid);
  resolve("cuDeviceGetAttribute", api.device_get_attribute);
  resolve("cuDeviceTotalMem", api.device_total_mem);
  resolve("cuDevicePrimaryCtxRetain", api.primary_ctx_retain);
  resolve("cuDevicePrimaryCtxRelease", api.primary_ctx_release);
  resolve("cuCtxSetCurrent", api.ctx_set_current);
  // cuCtxSynchronize and cuCtxGetDevice are no macros, but CUDA 13 added cuCtxSynchronize_v2(ctx)
  // and cuCtxGetDevice_v2(device, ctx): asked for CUDA_VERSION 13000 the driver returns those,
  // whose ABI is not the type of the plain declarations. Asked for 12.0, it returns the plain ones.
  resolve("cuCtxSynchronize", api.ctx_synchronize, 12000);
  resolve("cuCtxGetDevice", api.ctx_get_device, 12000);
  resolve("cuMemGetInfo", api.mem_get_info);
  resolve("cuModuleLoadData", api.module_load_data);
  resolve("cuModuleUnload", api.module_unload);
  resolve("cuModuleGetFunction", api.module_get_function);
  resolve("cuFuncSetAttribute", api.func_set_attribute);
  resolve("cuFuncGetAttribute", api.func_get_attribute, CUDA_VERSION, /*optional=*/true);
  resolve("cuLaunchKernel", api.launch_kernel);
  resolve("cuMemAlloc", api.mem_alloc);
  resolve("cuMemFree", api.mem_free);
  resolve("cuMemcpyHtoD", api.memcpy_htod);
  resolve("cuMemcpyDtoH", api.memcpy_dtoh);
  resolve("cuMemcpyDtoDAsync", api.memcpy_dtod_async);
  resolve("cuMemsetD16", api.memset_d16);
  resolve("cuMemsetD32", api.memset_d32);
  resolve("cuStreamCreate", api.stream_create);
  resolve("cuStreamDestroy", api.stream_destroy);
  resolve("cuStreamSynchronize", api.stream_synchronize);
  resolve("cuEventCreate", api.event_create);
  resolve("cuEventDestroy", api.event_destroy);
  resolve("cuEventRecord", api.event_record);
  resolve("cuEventSynchronize", api.event_synchronize);
  resolve("cuEventElapsedTime", api.event_elapsed_time);
  resolve("cuTensorMapEncodeTiled", api.tensor_map_encode_tiled, CUDA_VERSION, /*optional=*/true);
  if (!missing.empty()) {
    out.problem = "the NVIDIA driver (version " + std::to_string(out.driver_version) +
                  ") lacks entry points this build needs (" + missing + "); update the driver to CUDA " +
                  std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION % 1000 / 10) +
                  " or newer: " + kFallbackConsequence;
    return out;
  }
  out.api = &api;
  return out;
}

}  // namespace

const LoadedDriver& loaded_driver() {
  static const LoadedDriver driver = load();  // thread-safe one-time initialisation
  return driver;
}

}  // namespace detail

namespace {

std::string format_uuid(const CUuuid& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  char s[64];
  std::snprintf(s, sizeof s, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return s;
}

}  // namespace

DriverProbe probe_devices() {
  DriverProbe probe;
  const auto& driver = detail::loaded_driver();
  probe.driver_version = driver.driver_version;
  if (!driver.api) {
    probe.problem = driver.problem;
    return probe;
  }
  probe.driver_loaded = true;
  const auto& api = *driver.api;
  auto name_of = [&](CUresult r) { return detail::error_name_with(api.get_error_name, r); };

  int count = 0;
  if (CUresult r = api.device_get_count(&count); r != CUDA_SUCCESS) {
    probe.problem = "cuDeviceGetCount failed: " + name_of(r) + ": every answer will be the SDPA fallback";
    return probe;
  }
  if (count == 0) {
    probe.problem = "the NVIDIA driver (version " + std::to_string(driver.driver_version) +
                    ") reports no GPU: every answer will be the SDPA fallback";
    return probe;
  }
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    CUdevice dev = 0;
    DeviceInfo info;
    info.ordinal = ordinal;
    auto fail = [&](const char* call, CUresult r) {
      if (!probe.problem.empty()) probe.problem += "; ";
      probe.problem += std::string(call) + " failed for device " + std::to_string(ordinal) + ": " + name_of(r) +
                       " (device skipped)";
    };
    if (CUresult r = api.device_get(&dev, ordinal); r != CUDA_SUCCESS) { fail("cuDeviceGet", r); continue; }
    char name[256] = {};
    if (CUresult r = api.device_get_name(name, sizeof name - 1, dev); r != CUDA_SUCCESS) {
      fail("cuDeviceGetName", r);
      continue;
    }
    info.name = name;
    CUuuid uuid{};
    if (CUresult r = api.device_get_uuid(&uuid, dev); r != CUDA_SUCCESS) { fail("cuDeviceGetUuid", r); continue; }
    info.uuid = format_uuid(uuid);
    auto attr = [&](CUdevice_attribute a, int& out, const char* what) {
      CUresult r = api.device_get_attribute(&out, a, dev);
      if (r != CUDA_SUCCESS) fail(what, r);
      return r == CUDA_SUCCESS;
    };
    int l2 = 0;
    if (!attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, info.cc_major, "cuDeviceGetAttribute(cc major)") ||
        !attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, info.cc_minor, "cuDeviceGetAttribute(cc minor)") ||
        !attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, info.sm_count, "cuDeviceGetAttribute(SM count)") ||
        !attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, l2, "cuDeviceGetAttribute(L2 size)") ||
        !attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, info.max_shared_per_block_optin,
              "cuDeviceGetAttribute(opt-in shared memory)"))
      continue;
    info.l2_bytes = static_cast<std::uint64_t>(l2);
    info.arch = "sm_" + std::to_string(info.cc_major) + std::to_string(info.cc_minor);
    std::size_t total = 0;
    if (CUresult r = api.device_total_mem(&total, dev); r != CUDA_SUCCESS) { fail("cuDeviceTotalMem", r); continue; }
    info.memory_bytes = total;
    probe.devices.push_back(std::move(info));
  }
  if (probe.devices.empty() && probe.problem.empty())
    probe.problem = "no usable GPU: every answer will be the SDPA fallback";
  return probe;
}

std::string nvrtc_version() {
  int major = 0, minor = 0;
  if (nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return "unknown";
  return std::to_string(major) + "." + std::to_string(minor);
}

std::string kernel_source_hash() {
  // Every embedded file in name order, each as name NUL text NUL, so renaming a file or moving
  // text between files changes the hash as well as editing it.
  static const std::string hash = [] {
    std::string all;
    for (const auto& src : embedded_sources()) {
      all.append(src.name).push_back('\0');
      all.append(src.text).push_back('\0');
    }
    return source_text_hash(all);
  }();
  return hash;
}

}  // namespace nsa::jit

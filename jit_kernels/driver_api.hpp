#pragma once
// Private to jit_kernels/: the table of Driver API entry points, resolved once per process from
// the dlopen'd libcuda.so.1 through cuGetProcAddress.
//
// Why cuGetProcAddress and not dlsym: cuda.h #defines many API names to versioned symbols
// (cuMemAlloc -> cuMemAlloc_v2, cuEventElapsedTime -> cuEventElapsedTime_v2), and the ABI of a
// name depends on the CUDA version it is requested for. cuGetProcAddress takes the *base* name
// ("cuMemAlloc", written out as a literal here, never a stringified macro) and the CUDA version
// these headers describe (CUDA_VERSION), and returns the matching versioned entry point. The
// function-pointer types come from decltype of the same macros, so pointer type and resolved
// symbol always agree.

#include <cuda.h>

#include <string>

namespace nsa::jit::detail {

struct DriverApi {
  decltype(&::cuGetErrorName) get_error_name = nullptr;
  decltype(&::cuGetErrorString) get_error_string = nullptr;
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuDriverGetVersion) driver_get_version = nullptr;
  decltype(&::cuDeviceGetCount) device_get_count = nullptr;
  decltype(&::cuDeviceGet) device_get = nullptr;
  decltype(&::cuDeviceGetName) device_get_name = nullptr;
  decltype(&::cuDeviceGetUuid) device_get_uuid = nullptr;
  decltype(&::cuDeviceGetAttribute) device_get_attribute = nullptr;
  decltype(&::cuDeviceTotalMem) device_total_mem = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) primary_ctx_retain = nullptr;
  decltype(&::cuDevicePrimaryCtxRelease) primary_ctx_release = nullptr;
  decltype(&::cuCtxSetCurrent) ctx_set_current = nullptr;
  decltype(&::cuCtxSynchronize) ctx_synchronize = nullptr;  // resolved as of CUDA 12.0 (device.cpp says why)
  decltype(&::cuCtxGetDevice) ctx_get_device = nullptr;  // resolved as of CUDA 12.0 (device.cpp says why)
  decltype(&::cuMemGetInfo) mem_get_info = nullptr;
  decltype(&::cuModuleLoadData) module_load_data = nullptr;
  decltype(&::cuModuleUnload) module_unload = nullptr;
  decltype(&::cuModuleGetFunction) module_get_function = nullptr;
  decltype(&::cuFuncSetAttribute) func_set_attribute = nullptr;
  // Optional: only the reported register count needs it (PreparedPlan::registers, 0 without).
  decltype(&::cuFuncGetAttribute) func_get_attribute = nullptr;
  decltype(&::cuLaunchKernel) launch_kernel = nullptr;
  decltype(&::cuMemAlloc) mem_alloc = nullptr;
  decltype(&::cuMemFree) mem_free = nullptr;
  decltype(&::cuMemcpyHtoD) memcpy_htod = nullptr;
  decltype(&::cuMemcpyDtoH) memcpy_dtoh = nullptr;
  decltype(&::cuMemcpyDtoDAsync) memcpy_dtod_async = nullptr;
  decltype(&::cuMemsetD16) memset_d16 = nullptr;
  decltype(&::cuMemsetD32) memset_d32 = nullptr;
  decltype(&::cuStreamCreate) stream_create = nullptr;
  decltype(&::cuStreamDestroy) stream_destroy = nullptr;
  decltype(&::cuStreamSynchronize) stream_synchronize = nullptr;
  decltype(&::cuEventCreate) event_create = nullptr;
  decltype(&::cuEventDestroy) event_destroy = nullptr;
  decltype(&::cuEventRecord) event_record = nullptr;
  decltype(&::cuEventSynchronize) event_synchronize = nullptr;
  decltype(&::cuEventElapsedTime) event_elapsed_time = nullptr;
  // Optional (null when the driver lacks it): only launches of TMA variants need it, and they
  // fail with a clear error without it.
  decltype(&::cuTensorMapEncodeTiled) tensor_map_encode_tiled = nullptr;
};

/// The loaded, initialised driver: `api` is fully resolved and cuInit(0) succeeded, or
/// `problem` says why not (the library is missing, too old, an entry point is missing, cuInit
/// failed). Computed once; thread-safe.
struct LoadedDriver {
  const DriverApi* api = nullptr;  // null when problem is set
  int driver_version = 0;          // set whenever cuDriverGetVersion could run
  bool library_loaded = false;
  std::string problem;
};
const LoadedDriver& loaded_driver();

/// The name of `r` through `get_name` (cuGetErrorName) when it works, else from a built-in
/// table of the results met before a driver works, else "CUresult <number>".
std::string error_name_with(decltype(&::cuGetErrorName) get_name, CUresult r);

}  // namespace nsa::jit::detail

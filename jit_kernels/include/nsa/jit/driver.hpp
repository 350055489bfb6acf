#pragma once
// The CUDA Driver API, reached through the dlopen'd libcuda (see device.hpp), with one owner per
// handle: the retained primary context, modules, device memory, streams and events are each a
// move-only object that releases its handle in its destructor.
//
// Every failure is a DriverError naming the call, the CUresult and its name, and the variant
// involved. Errors that poison the context (an illegal address, a trap, ...) are flagged
// `sticky`: after one, every later call in this process fails too, so callers must not retry
// but report and restart the process (the tuner runs candidates in a child process for this).
//
// Threads: the Driver API binds a context to the calling thread. Context::retain_primary makes
// it current on the thread that retains it; other threads call make_current() first.

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <cuda.h>

#include "nsa/jit/kernel_variant.hpp"
#include "selection_params.cuh"

namespace nsa::jit {

struct DriverError {
  std::string call;          // "cuLaunchKernel", "cuModuleLoadData", "dlopen", ...
  CUresult result = CUDA_SUCCESS;
  std::string result_name;   // "CUDA_ERROR_ILLEGAL_ADDRESS"
  std::string variant;       // variant key, "" when no variant is involved
  bool sticky = false;       // the context is unusable; restart the process
  std::string detail;        // extra context ("entry sel_fwd_query_outer not in module", ...)
  /// "cuLaunchKernel failed for sel_fwd...: CUDA_ERROR_ILLEGAL_ADDRESS (sticky: the context is
  /// unusable; restart the process)".
  std::string message() const;
};

template <class T>
using DriverResult = std::expected<T, DriverError>;

/// True for results after which the context is corrupt (illegal address, launch failed,
/// illegal instruction, misaligned address, hardware stack error, assert, ...).
bool is_sticky(CUresult);
/// "CUDA_ERROR_ILLEGAL_ADDRESS" (from cuGetErrorName when the driver is loaded, else "CUresult 700").
std::string result_name(CUresult);

/// Loads the driver and runs cuInit once per process. The error says why there is no driver
/// ("libcuda.so.1 not found (no NVIDIA driver on this host) ...").
DriverResult<void> ensure_driver();

/// The retained primary context of one device, current on the thread that retained it.
class Context {
 public:
  static DriverResult<Context> retain_primary(int ordinal);
  Context(Context&& other) noexcept;
  Context& operator=(Context&& other) noexcept;
  ~Context();

  /// Binds the context to the calling thread.
  DriverResult<void> make_current() const;
  /// Waits for all work of the context; reports asynchronous (often sticky) errors.
  DriverResult<void> synchronize() const;
  /// Free and total device memory in bytes.
  DriverResult<std::pair<std::size_t, std::size_t>> memory_info() const;

  CUcontext handle() const { return m_context; }
  CUdevice device() const { return m_device; }
  int ordinal() const { return m_ordinal; }

 private:
  Context(CUcontext c, CUdevice d, int ordinal) : m_context(c), m_device(d), m_ordinal(ordinal) {}
  CUcontext m_context = nullptr;
  CUdevice m_device = 0;
  int m_ordinal = -1;
};

/// A loaded cubin (cuModuleLoadData); unloaded in the destructor.
class Module {
 public:
  /// `variant` names the variant in errors. The image is copied by the driver.
  static DriverResult<Module> load(std::span<const std::uint8_t> image, std::string variant);
  Module(Module&& other) noexcept;
  Module& operator=(Module&& other) noexcept;
  ~Module();

  /// The __global__ function `entry` (borrowed: valid while the module lives).
  DriverResult<CUfunction> function(const std::string& entry) const;
  CUmodule handle() const { return m_module; }
  const std::string& variant() const { return m_variant; }

 private:
  Module(CUmodule m, std::string variant) : m_module(m), m_variant(std::move(variant)) {}
  CUmodule m_module = nullptr;
  std::string m_variant;
};

class Stream;

/// Device memory from cuMemAlloc; freed in the destructor. A zero-byte buffer holds no
/// allocation and ptr() == 0.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// `what` ("K", "workspace") names the buffer in errors.
  static DriverResult<DeviceBuffer> allocate(std::size_t bytes, std::string what = {});
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  ~DeviceBuffer();

  CUdeviceptr ptr() const { return m_ptr; }
  std::size_t size() const { return m_bytes; }

  /// Synchronous copies; `offset + bytes` must lie within the buffer (else an error with
  /// CUDA_ERROR_INVALID_VALUE and a detail, without calling the driver).
  DriverResult<void> upload(const void* host, std::size_t bytes, std::size_t offset = 0);
  DriverResult<void> download(void* host, std::size_t bytes, std::size_t offset = 0) const;
  /// Fills the whole buffer with a 16-bit or 32-bit pattern (bytes must be a multiple of the
  /// pattern size), e.g. 0x7FC0 (bf16 NaN), 0x7E00 (fp16 NaN), 0x7FC00000 (fp32 NaN).
  DriverResult<void> fill_u16(std::uint16_t pattern);
  DriverResult<void> fill_u32(std::uint32_t pattern);
  /// Asynchronous device-to-device copy of `bytes` from `src` on `stream`.
  DriverResult<void> copy_from(const DeviceBuffer& src, std::size_t bytes, const Stream& stream);

 private:
  DeviceBuffer(CUdeviceptr p, std::size_t bytes, std::string what)
      : m_ptr(p), m_bytes(bytes), m_what(std::move(what)) {}
  CUdeviceptr m_ptr = 0;
  std::size_t m_bytes = 0;
  std::string m_what;
};

/// A stream, destroyed in the destructor. Created blocking (CU_STREAM_DEFAULT) on purpose: the
/// uploads, downloads and fills of DeviceBuffer run on the legacy default stream, and a blocking
/// stream is ordered with it, so poisoning an output and then launching on this stream cannot race.
class Stream {
 public:
  static DriverResult<Stream> create();
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  ~Stream();
  DriverResult<void> synchronize() const;
  CUstream handle() const { return m_stream; }

 private:
  explicit Stream(CUstream s) : m_stream(s) {}
  CUstream m_stream = nullptr;
};

/// A timing event; destroyed in the destructor.
class Event {
 public:
  static DriverResult<Event> create();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  ~Event();
  DriverResult<void> record(const Stream& stream);
  DriverResult<void> synchronize() const;
  /// Milliseconds between two recorded, completed events.
  static DriverResult<float> elapsed_ms(const Event& start, const Event& end);
  CUevent handle() const { return m_event; }

 private:
  explicit Event(CUevent e) : m_event(e) {}
  CUevent m_event = nullptr;
};

/// Multiprocessors of the device of the calling thread's current context.
DriverResult<int> current_device_sm_count();

/// The tensor map `arg` of a launch, for the tensors of `params` (see TensorMapArg). Errors
/// (CUDA_ERROR_INVALID_VALUE, without calling the driver): a base address not 16-byte aligned,
/// T_kv or B beyond the 2^31 - 1 the kernels' int32 coordinates reach, a driver without
/// cuTensorMapEncodeTiled (CUDA_ERROR_NOT_SUPPORTED); and whatever the driver refuses.
DriverResult<CUtensorMap> encode_tensor_map(const TensorMapArg& arg, const SelectionParams& params,
                                            const std::string& variant = {});

/// A plan whose functions are looked up and whose shared-memory limits are raised once, so
/// repeated launches (benchmarks) cost only cuLaunchKernel and, for a TMA variant, encoding its
/// tensor maps from the launch's parameters (host arithmetic in the driver, no GPU call). Borrows
/// the module.
class PreparedPlan {
 public:
  static DriverResult<PreparedPlan> prepare(const Module& module, const LaunchPlan& plan);
  /// Launches every kernel of the plan in order on `stream`, each with `params` as its first
  /// argument (and its tensor maps, encoded for `params`, after it). Fails before launching
  /// anything when the plan needs a workspace and params.workspace is 0.
  DriverResult<void> launch(const SelectionParams& params, const Stream& stream) const;
  /// Launches only launch `index` of the plan (e.g. one kernel of a two-kernel design, to time
  /// it alone); the same workspace check. Error (without launching) for an index out of range.
  DriverResult<void> launch_one(std::size_t index, const SelectionParams& params, const Stream& stream) const;
  const LaunchPlan& plan() const { return m_plan; }
  /// The most registers a thread of the plan's kernels uses, as the driver loaded them
  /// (CU_FUNC_ATTRIBUTE_NUM_REGS): the count that runs, whatever the compile log said; 0 when
  /// the driver could not say.
  int registers() const { return m_registers; }
  /// The thread-block cluster width launch `index` runs with (compiled in with
  /// __cluster_dims__: CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH), 0 for none or when the driver
  /// could not say.
  int cluster_width(std::size_t index) const { return index < m_cluster_widths.size() ? m_cluster_widths[index] : 0; }

 private:
  LaunchPlan m_plan;
  std::vector<CUfunction> m_functions;
  std::vector<int> m_cluster_widths;
  int m_registers = 0;
  std::string m_variant;
};

/// Launches one function with explicit arguments (`args` points at each argument), for kernels
/// that do not take SelectionParams (benchmark helpers). `what` names it in errors.
DriverResult<void> launch_raw(CUfunction function, const Launch& launch, std::vector<void*> args, const Stream& stream,
                              const std::string& what);

/// prepare + launch in one call. Launches needing more than 48 KiB of dynamic shared memory
/// get CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES raised first.
DriverResult<void> launch(const Module& module, const LaunchPlan& plan, const SelectionParams& params,
                          const Stream& stream);

}  // namespace nsa::jit

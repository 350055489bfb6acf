// The Driver API layer: one RAII owner per handle, one DriverError per failure. See driver.hpp.

#include "nsa/jit/driver.hpp"

#include <algorithm>
#include <string>

#include "driver_api.hpp"

namespace nsa::jit {
namespace {

const detail::DriverApi& api() {
  // Only reached through objects that exist, which exist only after ensure_driver() succeeded.
  return *detail::loaded_driver().api;
}

DriverError make_error(std::string call, CUresult r, std::string variant = {}, std::string detail = {}) {
  return DriverError{std::move(call), r, result_name(r), std::move(variant), is_sticky(r), std::move(detail)};
}

std::unexpected<DriverError> fail(std::string call, CUresult r, std::string variant = {}, std::string detail = {}) {
  return std::unexpected(make_error(std::move(call), r, std::move(variant), std::move(detail)));
}

constexpr unsigned kDefaultSharedLimit = 48 * 1024;  // above this a kernel must opt in

}  // namespace

std::string DriverError::message() const {
  std::string m = call + " failed";
  if (!variant.empty()) m += " for " + variant;
  m += ": " + result_name;
  if (!detail.empty()) m += " (" + detail + ")";
  if (sticky) m += " (sticky: the context is unusable; restart the process)";
  return m;
}

bool is_sticky(CUresult r) {
  switch (r) {
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_FAILED:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_ASSERT:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_ECC_UNCORRECTABLE:
    case CUDA_ERROR_CONTEXT_IS_DESTROYED:
      return true;
    default:
      return false;
  }
}

std::string result_name(CUresult r) {
  const auto& driver = detail::loaded_driver();
  return detail::error_name_with(driver.api ? driver.api->get_error_name : nullptr, r);
}

DriverResult<void> ensure_driver() {
  const auto& driver = detail::loaded_driver();
  if (driver.api) return {};
  DriverError e;
  e.call = driver.library_loaded ? "cuInit" : "dlopen";
  e.result = driver.library_loaded ? CUDA_ERROR_NOT_INITIALIZED : CUDA_ERROR_NOT_FOUND;
  e.result_name = driver.library_loaded ? "CUDA_ERROR_NOT_INITIALIZED" : "CUDA_ERROR_NOT_FOUND";
  e.detail = driver.problem;
  return std::unexpected(std::move(e));
}

// Context --------------------------------------------------------------------------------------

DriverResult<Context> Context::retain_primary(int ordinal) {
  if (auto ok = ensure_driver(); !ok) return std::unexpected(ok.error());
  CUdevice dev = 0;
  if (CUresult r = api().device_get(&dev, ordinal); r != CUDA_SUCCESS)
    return fail("cuDeviceGet", r, {}, "device ordinal " + std::to_string(ordinal));
  CUcontext ctx = nullptr;
  if (CUresult r = api().primary_ctx_retain(&ctx, dev); r != CUDA_SUCCESS)
    return fail("cuDevicePrimaryCtxRetain", r, {}, "device " + std::to_string(ordinal));
  Context c(ctx, dev, ordinal);
  if (auto ok = c.make_current(); !ok) return std::unexpected(ok.error());
  return c;
}

Context::Context(Context&& o) noexcept : m_context(o.m_context), m_device(o.m_device), m_ordinal(o.m_ordinal) {
  o.m_context = nullptr;
}

Context& Context::operator=(Context&& o) noexcept {
  if (this != &o) {
    if (m_context) api().primary_ctx_release(m_device);
    m_context = o.m_context;
    m_device = o.m_device;
    m_ordinal = o.m_ordinal;
    o.m_context = nullptr;
  }
  return *this;
}

Context::~Context() {
  if (m_context) api().primary_ctx_release(m_device);
}

DriverResult<void> Context::make_current() const {
  if (CUresult r = api().ctx_set_current(m_context); r != CUDA_SUCCESS) return fail("cuCtxSetCurrent", r);
  return {};
}

DriverResult<void> Context::synchronize() const {
  if (CUresult r = api().ctx_synchronize(); r != CUDA_SUCCESS) return fail("cuCtxSynchronize", r);
  return {};
}

DriverResult<std::pair<std::size_t, std::size_t>> Context::memory_info() const {
  std::size_t free = 0, total = 0;
  if (CUresult r = api().mem_get_info(&free, &total); r != CUDA_SUCCESS) return fail("cuMemGetInfo", r);
  return std::pair{free, total};
}

// Module -----------------------------------------------------------------------------------------

DriverResult<Module> Module::load(std::span<const std::uint8_t> image, std::string variant) {
  if (auto ok = ensure_driver(); !ok) return std::unexpected(ok.error());
  if (image.empty()) return fail("cuModuleLoadData", CUDA_ERROR_INVALID_IMAGE, variant, "empty cubin");
  CUmodule m = nullptr;
  if (CUresult r = api().module_load_data(&m, image.data()); r != CUDA_SUCCESS) {
    std::string detail;
    if (r == CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUDA_ERROR_INVALID_IMAGE)
      detail = "the cubin was compiled for another arch or a newer toolkit than the driver supports";
    return fail("cuModuleLoadData", r, std::move(variant), std::move(detail));
  }
  return Module(m, std::move(variant));
}

Module::Module(Module&& o) noexcept : m_module(o.m_module), m_variant(std::move(o.m_variant)) { o.m_module = nullptr; }

Module& Module::operator=(Module&& o) noexcept {
  if (this != &o) {
    if (m_module) api().module_unload(m_module);
    m_module = o.m_module;
    m_variant = std::move(o.m_variant);
    o.m_module = nullptr;
  }
  return *this;
}

Module::~Module() {
  if (m_module) api().module_unload(m_module);
}

DriverResult<CUfunction> Module::function(const std::string& entry) const {
  CUfunction f = nullptr;
  if (CUresult r = api().module_get_function(&f, m_module, entry.c_str()); r != CUDA_SUCCESS)
    return fail("cuModuleGetFunction", r, m_variant, "entry '" + entry + "'");
  return f;
}

// DeviceBuffer -------------------------------------------------------------------------------------

DriverResult<DeviceBuffer> DeviceBuffer::allocate(std::size_t bytes, std::string what) {
  if (auto ok = ensure_driver(); !ok) return std::unexpected(ok.error());
  if (bytes == 0) return DeviceBuffer(0, 0, std::move(what));
  CUdeviceptr p = 0;
  if (CUresult r = api().mem_alloc(&p, bytes); r != CUDA_SUCCESS)
    return fail("cuMemAlloc", r, {},
                std::to_string(bytes) + " bytes" + (what.empty() ? std::string() : " for " + what));
  return DeviceBuffer(p, bytes, std::move(what));
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : m_ptr(o.m_ptr), m_bytes(o.m_bytes), m_what(std::move(o.m_what)) {
  o.m_ptr = 0;
  o.m_bytes = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (m_ptr) api().mem_free(m_ptr);
    m_ptr = o.m_ptr;
    m_bytes = o.m_bytes;
    m_what = std::move(o.m_what);
    o.m_ptr = 0;
    o.m_bytes = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (m_ptr) api().mem_free(m_ptr);
}

namespace {
DriverResult<void> check_range(const char* call, std::size_t bytes, std::size_t offset, std::size_t size,
                               const std::string& what) {
  if (offset > size || bytes > size - offset)
    return fail(call, CUDA_ERROR_INVALID_VALUE, {},
                std::to_string(bytes) + " bytes at offset " + std::to_string(offset) + " exceed the " +
                    std::to_string(size) + "-byte buffer" + (what.empty() ? std::string() : " " + what));
  return {};
}
}  // namespace

DriverResult<void> DeviceBuffer::upload(const void* host, std::size_t bytes, std::size_t offset) {
  if (auto ok = check_range("cuMemcpyHtoD", bytes, offset, m_bytes, m_what); !ok) return ok;
  if (bytes == 0) return {};
  if (CUresult r = api().memcpy_htod(m_ptr + offset, host, bytes); r != CUDA_SUCCESS)
    return fail("cuMemcpyHtoD", r, {}, m_what);
  return {};
}

DriverResult<void> DeviceBuffer::download(void* host, std::size_t bytes, std::size_t offset) const {
  if (auto ok = check_range("cuMemcpyDtoH", bytes, offset, m_bytes, m_what); !ok) return ok;
  if (bytes == 0) return {};
  if (CUresult r = api().memcpy_dtoh(host, m_ptr + offset, bytes); r != CUDA_SUCCESS)
    return fail("cuMemcpyDtoH", r, {}, m_what);
  return {};
}

DriverResult<void> DeviceBuffer::fill_u16(std::uint16_t pattern) {
  if (m_bytes % 2) return fail("cuMemsetD16", CUDA_ERROR_INVALID_VALUE, {}, "buffer size is odd");
  if (m_bytes == 0) return {};
  if (CUresult r = api().memset_d16(m_ptr, pattern, m_bytes / 2); r != CUDA_SUCCESS)
    return fail("cuMemsetD16", r, {}, m_what);
  return {};
}

DriverResult<void> DeviceBuffer::fill_u32(std::uint32_t pattern) {
  if (m_bytes % 4) return fail("cuMemsetD32", CUDA_ERROR_INVALID_VALUE, {}, "buffer size is not a multiple of 4");
  if (m_bytes == 0) return {};
  if (CUresult r = api().memset_d32(m_ptr, pattern, m_bytes / 4); r != CUDA_SUCCESS)
    return fail("cuMemsetD32", r, {}, m_what);
  return {};
}

DriverResult<void> DeviceBuffer::copy_from(const DeviceBuffer& src, std::size_t bytes, const Stream& stream) {
  if (bytes > m_bytes || bytes > src.m_bytes)
    return fail("cuMemcpyDtoDAsync", CUDA_ERROR_INVALID_VALUE, {}, "copy larger than a buffer");
  if (bytes == 0) return {};
  if (CUresult r = api().memcpy_dtod_async(m_ptr, src.m_ptr, bytes, stream.handle()); r != CUDA_SUCCESS)
    return fail("cuMemcpyDtoDAsync", r, {}, m_what);
  return {};
}

// Stream and Event ---------------------------------------------------------------------------------

DriverResult<Stream> Stream::create() {
  if (auto ok = ensure_driver(); !ok) return std::unexpected(ok.error());
  CUstream s = nullptr;
  if (CUresult r = api().stream_create(&s, CU_STREAM_DEFAULT); r != CUDA_SUCCESS) return fail("cuStreamCreate", r);
  return Stream(s);
}
Stream::Stream(Stream&& o) noexcept : m_stream(o.m_stream) { o.m_stream = nullptr; }
Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (m_stream) api().stream_destroy(m_stream);
    m_stream = o.m_stream;
    o.m_stream = nullptr;
  }
  return *this;
}
Stream::~Stream() {
  if (m_stream) api().stream_destroy(m_stream);
}
DriverResult<void> Stream::synchronize() const {
  if (CUresult r = api().stream_synchronize(m_stream); r != CUDA_SUCCESS) return fail("cuStreamSynchronize", r);
  return {};
}

DriverResult<Event> Event::create() {
  if (auto ok = ensure_driver(); !ok) return std::unexpected(ok.error());
  CUevent e = nullptr;
  if (CUresult r = api().event_create(&e, CU_EVENT_DEFAULT); r != CUDA_SUCCESS) return fail("cuEventCreate", r);
  return Event(e);
}
Event::Event(Event&& o) noexcept : m_event(o.m_event) { o.m_event = nullptr; }
Event& Event::operator=(Event&& o) noexcept {
  if (this != &o) {
    if (m_event) api().event_destroy(m_event);
    m_event = o.m_event;
    o.m_event = nullptr;
  }
  return *this;
}
Event::~Event() {
  if (m_event) api().event_destroy(m_event);
}
DriverResult<void> Event::record(const Stream& stream) {
  if (CUresult r = api().event_record(m_event, stream.handle()); r != CUDA_SUCCESS) return fail("cuEventRecord", r);
  return {};
}
DriverResult<void> Event::synchronize() const {
  if (CUresult r = api().event_synchronize(m_event); r != CUDA_SUCCESS) return fail("cuEventSynchronize", r);
  return {};
}
DriverResult<float> Event::elapsed_ms(const Event& start, const Event& end) {
  float ms = 0;
  if (CUresult r = api().event_elapsed_time(&ms, start.m_event, end.m_event); r != CUDA_SUCCESS)
    return fail("cuEventElapsedTime", r);
  return ms;
}

// Launching --------------------------------------------------------------------------------------

DriverResult<int> current_device_sm_count() {
  CUdevice device = 0;
  if (CUresult r = api().ctx_get_device(&device); r != CUDA_SUCCESS)
    return fail("cuCtxGetDevice", r, {}, "no current context on this thread (make the context current first)");
  int sms = 0;
  if (CUresult r = api().device_get_attribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device); r != CUDA_SUCCESS)
    return fail("cuDeviceGetAttribute", r, {}, "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT");
  return sms;
}

DriverResult<CUtensorMap> encode_tensor_map(const TensorMapArg& arg, const SelectionParams& params,
                                            const std::string& variant) {
  const bool is_k = arg.operand == TensorMapArg::Operand::k;
  const std::string what = std::string("the tensor map of ") + (is_k ? "K" : "V");
  if (!api().tensor_map_encode_tiled)
    return fail("cuTensorMapEncodeTiled", CUDA_ERROR_NOT_SUPPORTED, variant,
                "this driver has no cuTensorMapEncodeTiled (CUDA 12 or newer): a tma=1 variant cannot run here; use "
                "its tma=0 setting");
  const nsa_u64 base = is_k ? params.k : params.v;
  constexpr std::int64_t kMaxCoord = 2147483647;  // the kernels' coordinates are int32
  if (arg.dim == 0 || arg.dim % 64 != 0 || arg.box_rows == 0 || arg.box_rows > 256)
    return fail("cuTensorMapEncodeTiled", CUDA_ERROR_INVALID_VALUE, variant,
                what + ": D=" + std::to_string(arg.dim) + " and box rows " + std::to_string(arg.box_rows) +
                    " are not a 64-element multiple and a box of 1..256 rows");
  if (base % 16 != 0)
    return fail("cuTensorMapEncodeTiled", CUDA_ERROR_INVALID_VALUE, variant,
                what + ": its base address is not 16-byte aligned (the spec requires it)");
  if (params.t_kv < 1 || params.t_kv > kMaxCoord || params.batch < 1 || params.batch > kMaxCoord ||
      params.h_kv < 1 || params.h_kv > kMaxCoord)
    return fail("cuTensorMapEncodeTiled", CUDA_ERROR_INVALID_VALUE, variant,
                what + ": B=" + std::to_string(params.batch) + ", T_kv=" + std::to_string(params.t_kv) +
                    ", H_kv=" + std::to_string(params.h_kv) +
                    " must each lie in [1, 2^31 - 1] for the TMA's coordinates: use a tma=0 variant");
  const cuuint64_t d = arg.dim;
  const cuuint64_t dims[4] = {d, static_cast<cuuint64_t>(params.h_kv), static_cast<cuuint64_t>(params.t_kv),
                              static_cast<cuuint64_t>(params.batch)};
  const cuuint64_t strides[3] = {2 * d, 2 * d * dims[1], 2 * d * dims[1] * dims[2]};  // bytes, dims 1..3
  const cuuint32_t box[4] = {64, 1, arg.box_rows, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  CUresult r = api().tensor_map_encode_tiled(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 4, reinterpret_cast<void*>(base),
                                             dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return fail("cuTensorMapEncodeTiled", r, variant,
                what + " {" + std::to_string(dims[0]) + ", " + std::to_string(dims[1]) + ", " +
                    std::to_string(dims[2]) + ", " + std::to_string(dims[3]) + "}, box {64, 1, " +
                    std::to_string(arg.box_rows) + ", 1}");
  return map;
}

DriverResult<PreparedPlan> PreparedPlan::prepare(const Module& module, const LaunchPlan& plan) {
  PreparedPlan p;
  p.m_plan = plan;
  p.m_variant = module.variant();
  if (plan.launches.empty())
    return fail("cuLaunchKernel", CUDA_ERROR_INVALID_VALUE, module.variant(), "the launch plan has no launches");
  for (const auto& l : plan.launches) {
    if (!l.grid[0] || !l.grid[1] || !l.grid[2] || !l.block[0] || !l.block[1] || !l.block[2])
      return fail("cuLaunchKernel", CUDA_ERROR_INVALID_VALUE, module.variant(),
                  "launch of '" + l.entry + "' has a zero grid or block dimension");
    auto f = module.function(l.entry);
    if (!f) return std::unexpected(f.error());
    if (l.shared_bytes > kDefaultSharedLimit) {
      CUresult r = api().func_set_attribute(*f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                            static_cast<int>(l.shared_bytes));
      if (r != CUDA_SUCCESS)
        return fail("cuFuncSetAttribute", r, module.variant(),
                    "'" + l.entry + "' asks for " + std::to_string(l.shared_bytes) +
                        " bytes of dynamic shared memory, more than the device allows per block");
    }
    // The register count is reported, never needed to launch: unknown (0) when the driver
    // does not answer.
    int regs = 0;
    if (api().func_get_attribute != nullptr &&
        api().func_get_attribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, *f) == CUDA_SUCCESS)
      p.m_registers = std::max(p.m_registers, regs);
    int cluster = 0;
    if (api().func_get_attribute == nullptr ||
        api().func_get_attribute(&cluster, CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH, *f) != CUDA_SUCCESS)
      cluster = 0;
    p.m_cluster_widths.push_back(cluster);
    p.m_functions.push_back(*f);
  }
  return p;
}

DriverResult<void> PreparedPlan::launch(const SelectionParams& params, const Stream& stream) const {
  for (std::size_t i = 0; i < m_functions.size(); ++i)
    if (auto r = launch_one(i, params, stream); !r) return r;
  return {};
}

DriverResult<void> PreparedPlan::launch_one(std::size_t index, const SelectionParams& params,
                                            const Stream& stream) const {
  if (index >= m_functions.size())
    return fail("cuLaunchKernel", CUDA_ERROR_INVALID_VALUE, m_variant,
                "launch " + std::to_string(index) + " of a plan with " + std::to_string(m_functions.size()) +
                    " launches");
  if (m_plan.workspace_bytes > 0 && params.workspace == 0)
    return fail("cuLaunchKernel", CUDA_ERROR_INVALID_VALUE, m_variant,
                "the plan needs " + std::to_string(m_plan.workspace_bytes) +
                    " bytes of workspace but params.workspace is 0");
  // Every kernel takes the parameter block by value first, then its tensor maps (TMA variants).
  const auto& l = m_plan.launches[index];
  constexpr std::size_t kMaxMaps = 4;
  if (l.tensor_maps.size() > kMaxMaps)
    return fail("cuLaunchKernel", CUDA_ERROR_INVALID_VALUE, m_variant,
                "entry '" + l.entry + "' asks for " + std::to_string(l.tensor_maps.size()) +
                    " tensor maps; a launch takes at most " + std::to_string(kMaxMaps));
  CUtensorMap maps[kMaxMaps];
  void* args[1 + kMaxMaps] = {const_cast<SelectionParams*>(&params)};
  for (std::size_t i = 0; i < l.tensor_maps.size(); ++i) {
    auto m = encode_tensor_map(l.tensor_maps[i], params, m_variant);
    if (!m) return std::unexpected(m.error());
    maps[i] = *m;
    args[1 + i] = &maps[i];
  }
  CUresult r = api().launch_kernel(m_functions[index], l.grid[0], l.grid[1], l.grid[2], l.block[0], l.block[1],
                                   l.block[2], l.shared_bytes, stream.handle(), args, nullptr);
  if (r != CUDA_SUCCESS) return fail("cuLaunchKernel", r, m_variant, "entry '" + l.entry + "'");
  return {};
}

DriverResult<void> launch_raw(CUfunction function, const Launch& l, std::vector<void*> args, const Stream& stream,
                              const std::string& what) {
  CUresult r = api().launch_kernel(function, l.grid[0], l.grid[1], l.grid[2], l.block[0], l.block[1], l.block[2],
                                   l.shared_bytes, stream.handle(), args.data(), nullptr);
  if (r != CUDA_SUCCESS) return fail("cuLaunchKernel", r, what, "entry '" + l.entry + "'");
  return {};
}

DriverResult<void> launch(const Module& module, const LaunchPlan& plan, const SelectionParams& params,
                          const Stream& stream) {
  auto prepared = PreparedPlan::prepare(module, plan);
  if (!prepared) return std::unexpected(prepared.error());
  return prepared->launch(params, stream);
}

}  // namespace nsa::jit

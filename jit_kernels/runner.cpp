// Problems on the host and the device, and loaded variants. See runner.hpp.

#include "nsa/jit/runner.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "nsa/jit/catalog.hpp"

namespace nsa::jit {

namespace {
constexpr std::uint32_t kFloatNan = 0x7fc00000u;

DriverError plan_error(const std::string& variant, const std::string& why) {
  DriverError e;
  e.call = "plan_for";
  e.result = CUDA_ERROR_INVALID_VALUE;
  e.result_name = result_name(CUDA_ERROR_INVALID_VALUE);
  e.variant = variant;
  e.detail = why;
  return e;
}
}  // namespace

HostProblem HostProblem::random(const SelectionShape& shape, ElemType dtype, SelectionPattern pattern,
                                std::mt19937_64& rng, const PatternOptions& options) {
  HostProblem p;
  p.shape = shape;
  p.dtype = dtype;
  auto normal = [&](std::int64_t count) {
    std::vector<float> f(static_cast<std::size_t>(count));
    fill_normal(f, rng);
    return encode(dtype, f);
  };
  p.q = normal(shape.q_elems());
  p.k = normal(shape.k_elems());
  p.v = normal(shape.v_elems());
  p.block_idx = make_block_idx(shape, pattern, rng, options);
  return p;
}

std::expected<ReferenceOutput, std::string> HostProblem::reference(Accumulate accumulate) const {
  return selection_reference(shape, decode(dtype, q), decode(dtype, k), decode(dtype, v), block_idx, accumulate);
}

double HostProblem::reference_cost() const {
  // Multiply-adds of the reference: every visible key of every row, for h heads, over D_qk + D_v.
  const SelectionShape& s = shape;
  if (static_cast<std::int64_t>(block_idx.size()) != s.idx_elems()) return 0;
  double keys = 0;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g)
      for (std::int64_t t = 0; t < s.t_q; ++t) {
        const std::int32_t* row = block_idx.data() + ((b * s.h_kv + g) * s.t_q + t) * s.n;
        for (int slot = 0; slot < s.n; ++slot) {
          if (row[slot] < 0) continue;
          const std::int64_t first = std::int64_t{row[slot]} * s.block;
          const std::int64_t end = std::min<std::int64_t>({first + s.block, s.t_kv, s.position(t) + 1});
          if (end > first) keys += static_cast<double>(end - first);
        }
      }
  return keys * s.h * (s.d_qk + s.d_v);
}

DriverResult<DeviceProblem> DeviceProblem::allocate(const SelectionShape& shape, ElemType dtype) {
  DeviceProblem p;
  p.m_shape = shape;
  p.m_dtype = dtype;
  auto alloc = [](std::int64_t elems, std::size_t elem_bytes, const char* what, DeviceBuffer& out) -> DriverResult<void> {
    auto b = DeviceBuffer::allocate(static_cast<std::size_t>(elems) * elem_bytes, what);
    if (!b) return std::unexpected(b.error());
    out = std::move(*b);
    return {};
  };
  for (auto r : {alloc(shape.q_elems(), 2, "Q", p.m_q), alloc(shape.k_elems(), 2, "K", p.m_k),
                 alloc(shape.v_elems(), 2, "V", p.m_v), alloc(shape.idx_elems(), 4, "block_idx", p.m_idx),
                 alloc(shape.o_elems(), 2, "O", p.m_o), alloc(shape.lse_elems(), 4, "LSE", p.m_lse)})
    if (!r) return std::unexpected(r.error());
  return p;
}

DriverResult<DeviceProblem> DeviceProblem::upload(const HostProblem& host) {
  auto p = allocate(host.shape, host.dtype);
  if (!p) return p;
  for (auto r : {p->m_q.upload(host.q.data(), host.q.size() * 2), p->m_k.upload(host.k.data(), host.k.size() * 2),
                 p->m_v.upload(host.v.data(), host.v.size() * 2),
                 p->m_idx.upload(host.block_idx.data(), host.block_idx.size() * 4)})
    if (!r) return std::unexpected(r.error());
  return p;
}

DriverResult<void> DeviceProblem::poison_outputs() {
  if (auto r = m_o.fill_u16(nan_bits(m_dtype)); !r) return r;
  return m_lse.fill_u32(kFloatNan);
}

SelectionParams DeviceProblem::params(CUdeviceptr workspace, bool with_lse) const {
  SelectionParams p{};
  p.q = m_q.ptr();
  p.k = m_k.ptr();
  p.v = m_v.ptr();
  p.block_idx = m_idx.ptr();
  p.o = m_o.ptr();
  p.lse = with_lse ? m_lse.ptr() : 0;
  p.workspace = workspace;
  p.batch = m_shape.batch;
  p.t_q = m_shape.t_q;
  p.t_kv = m_shape.t_kv;
  p.h_kv = m_shape.h_kv;
  p.scale = m_shape.effective_scale();
  return p;
}

DriverResult<std::vector<float>> DeviceProblem::download_o() const {
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(m_shape.o_elems()));
  if (auto r = m_o.download(bits.data(), bits.size() * 2); !r) return std::unexpected(r.error());
  return decode(m_dtype, bits);
}

DriverResult<std::vector<float>> DeviceProblem::download_lse() const {
  std::vector<float> lse(static_cast<std::size_t>(m_shape.lse_elems()));
  if (auto r = m_lse.download(lse.data(), lse.size() * 4); !r) return std::unexpected(r.error());
  return lse;
}

DriverResult<LoadedVariant> LoadedVariant::load(const KernelVariant& variant, const Cubin& cubin,
                                                const RuntimeShape& shape) {
  RuntimeShape on_device = shape;
  if (on_device.sm_count == 0) {
    auto sms = current_device_sm_count();
    if (!sms) return std::unexpected(sms.error());
    on_device.sm_count = *sms;
  }
  LaunchPlan plan;
  try {
    plan = plan_for(variant, on_device);
  } catch (const std::exception& e) {
    return std::unexpected(plan_error(variant.key(), e.what()));
  }
  auto module = Module::load(cubin.image, variant.key());
  if (!module) return std::unexpected(module.error());
  auto prepared = PreparedPlan::prepare(*module, plan);
  if (!prepared) return std::unexpected(prepared.error());
  auto workspace = DeviceBuffer::allocate(plan.workspace_bytes, "workspace of " + variant.key());
  if (!workspace) return std::unexpected(workspace.error());
  return LoadedVariant(variant, std::move(*module), std::move(*prepared), std::move(*workspace));
}

DriverResult<void> LoadedVariant::launch(const DeviceProblem& problem, const Stream& stream, bool with_lse) const {
  return m_prepared.launch(problem.params(m_workspace.ptr(), with_lse), stream);
}

DriverResult<void> LoadedVariant::launch(SelectionParams params, const Stream& stream) const {
  params.workspace = m_workspace.ptr();
  return m_prepared.launch(params, stream);
}

DriverResult<void> LoadedVariant::launch_one(std::size_t index, SelectionParams params, const Stream& stream) const {
  params.workspace = m_workspace.ptr();
  return m_prepared.launch_one(index, params, stream);
}

DriverResult<void> LoadedVariant::poison_workspace() {
  if (m_workspace.size() == 0) return {};
  if (m_workspace.size() % 4 == 0) return m_workspace.fill_u32(kFloatNan);
  return m_workspace.fill_u16(0x7e00);
}

DriverResult<LoadedVariant::Result> LoadedVariant::run_checked(DeviceProblem& problem, const Stream& stream,
                                                              bool with_lse) {
  if (auto r = problem.poison_outputs(); !r) return std::unexpected(r.error());
  if (auto r = poison_workspace(); !r) return std::unexpected(r.error());
  if (auto r = launch(problem, stream, with_lse); !r) return std::unexpected(r.error());
  if (auto r = stream.synchronize(); !r) {
    auto e = r.error();
    e.variant = m_variant.key();  // an asynchronous kernel fault surfaces here
    return std::unexpected(e);
  }
  Result out;
  auto o = problem.download_o();
  if (!o) return std::unexpected(o.error());
  out.o = std::move(*o);
  if (with_lse) {
    auto l = problem.download_lse();
    if (!l) return std::unexpected(l.error());
    out.lse = std::move(*l);
  }
  return out;
}

}  // namespace nsa::jit

// Names of variants: every key spells out every parameter that changes the generated code, so
// two variants with the same key are the same binary (the compiled-kernel cache relies on it).

#include "nsa/jit/kernel_variant.hpp"

#include <cctype>
#include <string>

namespace nsa::jit {

std::string_view to_string(Design d) {
  switch (d) {
    case Design::reference: return "reference";
    case Design::sdpa_packed: return "sdpa_packed";
    case Design::query_outer: return "query_outer";
    case Design::split_kv: return "split_kv";
    case Design::prefill_shared: return "prefill_shared";
  }
  return "unknown";
}

bool is_sparse(Design d) {
  return d == Design::query_outer || d == Design::split_kv || d == Design::prefill_shared;
}

std::string FamilySpec::key() const {
  return "dqk" + std::to_string(d_qk) + "_dv" + std::to_string(d_v) + "_h" + std::to_string(h) + "_blk" +
         std::to_string(block) + "_n" + std::to_string(n) + (dtype == ElemType::bf16 ? "_bf16" : "_fp16");
}

std::string KernelVariant::key() const {
  std::string k = "sel_fwd.";
  k += to_string(design);
  k += '.';
  k += spec.key();
  k += '.';
  // A variant without knobs still has the segment, so every key has the same five parts.
  if (knobs.empty()) k += "default";
  for (std::size_t i = 0; i < knobs.size(); ++i) {
    if (i) k += '_';
    k += knobs[i].first;
    k += std::to_string(knobs[i].second);
  }
  k += '.';
  for (char c : arch)
    if (c != '_') k += c;
  return k;
}

int KernelVariant::knob(const std::string& name, int fallback) const {
  for (const auto& [k, v] : knobs)
    if (k == name) return v;
  return fallback;
}

std::string KernelVariant::prelude() const {
  std::string p;
  auto def = [&](const std::string& name, long long value) {
    p += "#define " + name + " " + std::to_string(value) + "\n";
  };
  def("NSA_DQK", spec.d_qk);
  def("NSA_DV", spec.d_v);
  def("NSA_H", spec.h);
  def("NSA_BLOCK", spec.block);
  def("NSA_N", spec.n);
  p += spec.dtype == ElemType::bf16 ? "#define NSA_DTYPE_BF16 1\n" : "#define NSA_DTYPE_FP16 1\n";
  for (const auto& [name, value] : knobs) {
    std::string upper = "NSA_KNOB_";
    for (char c : name) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    def(upper, value);
  }
  return p;
}

}  // namespace nsa::jit

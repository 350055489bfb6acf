// Names of variants: every key spells out every parameter that changes the generated code, so
// two variants with the same key are the same binary (the compiled-kernel cache relies on it).

#include "nsa/jit/kernel_variant.hpp"

#include <cctype>
#include <charconv>
#include <string>
#include <vector>

namespace nsa::jit {

std::string_view to_string(Design d) {
  switch (d) {
    case Design::reference: return "reference";
    case Design::sdpa_packed: return "sdpa_packed";
    case Design::query_outer: return "query_outer";
    case Design::split_kv: return "split_kv";
    case Design::prefill_shared: return "prefill_shared";
    case Design::prefill_stream: return "prefill_stream";
    case Design::decode_stream: return "decode_stream";
    case Design::prefill_group: return "prefill_group";
  }
  return "unknown";
}

std::string_view to_string(TensorMapArg::Operand o) { return o == TensorMapArg::Operand::k ? "k" : "v"; }

bool is_sparse(Design d) {
  return d == Design::query_outer || d == Design::split_kv || d == Design::prefill_shared ||
         d == Design::prefill_stream || d == Design::decode_stream || d == Design::prefill_group;
}

std::string KernelVariant::compile_arch() const {
  // wgmma exists only in the arch-specific target of sm_90; its cubins run on sm_90 devices only.
  if (design == Design::prefill_group && arch == "sm_90") return "sm_90a";
  return arch;
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

namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  for (;;) {
    const auto at = s.find(sep);
    out.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return out;
    s.remove_prefix(at + 1);
  }
}

/// Splits "warps4" into ("warps", 4): lower-case letters, then a decimal integer.
bool split_knob(std::string_view s, std::string& name, int& value) {
  std::size_t i = 0;
  while (i < s.size() && s[i] >= 'a' && s[i] <= 'z') ++i;
  if (i == 0 || i == s.size()) return false;
  name = std::string(s.substr(0, i));
  const auto digits = s.substr(i);
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  return ec == std::errc() && end == digits.data() + digits.size();
}

}  // namespace

std::optional<KernelVariant> KernelVariant::parse(std::string_view key) {
  const auto parts = split(key, '.');
  if (parts.size() != 5 || parts[0] != "sel_fwd") return std::nullopt;
  KernelVariant v;
  bool found = false;
  for (Design d : {Design::reference, Design::sdpa_packed, Design::query_outer, Design::split_kv,
                   Design::prefill_shared, Design::prefill_stream, Design::decode_stream, Design::prefill_group})
    if (to_string(d) == parts[1]) {
      v.design = d;
      found = true;
    }
  if (!found) return std::nullopt;
  // The family: dqk128_dv128_h16_blk64_n16_bf16
  const auto spec = split(parts[2], '_');
  if (spec.size() != 6) return std::nullopt;
  const std::pair<const char*, int*> fields[] = {{"dqk", &v.spec.d_qk}, {"dv", &v.spec.d_v}, {"h", &v.spec.h},
                                                 {"blk", &v.spec.block}, {"n", &v.spec.n}};
  for (std::size_t i = 0; i < 5; ++i) {
    std::string name;
    int value = 0;
    if (!split_knob(spec[i], name, value) || name != fields[i].first) return std::nullopt;
    *fields[i].second = value;
  }
  if (spec[5] == "bf16") v.spec.dtype = ElemType::bf16;
  else if (spec[5] == "fp16") v.spec.dtype = ElemType::fp16;
  else return std::nullopt;
  if (parts[3] != "default") {
    for (auto k : split(parts[3], '_')) {
      std::string name;
      int value = 0;
      if (!split_knob(k, name, value)) return std::nullopt;
      v.knobs.emplace_back(std::move(name), value);
    }
  }
  // The arch: "sm90" / "sm90a" back to "sm_90" / "sm_90a".
  if (parts[4].size() < 4 || parts[4].substr(0, 2) != "sm") return std::nullopt;
  v.arch = "sm_" + std::string(parts[4].substr(2));
  // Whatever key() would spell differently ("dqk0128", "sm_90" written "sm9_0") is not a key.
  if (v.key() != key) return std::nullopt;
  return v;
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

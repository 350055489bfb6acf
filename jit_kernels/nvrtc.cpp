// NVRTC: one variant in, one cubin (or a CompileError) out. See nvrtc.hpp for the contract.

#include "nsa/jit/nvrtc.hpp"

#include <algorithm>
#include <charconv>
#include <regex>
#include <string>

#include "nsa/jit/catalog.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/sources.hpp"

namespace nsa::jit {
namespace {

std::string result_text(nvrtcResult r) {
  const char* s = nvrtcGetErrorString(r);
  return s ? s : "NVRTC_ERROR_" + std::to_string(static_cast<int>(r));
}

CompileError error(nvrtcResult code, std::string log, std::string options, std::string_view key) {
  return CompileError{code, std::move(log), std::move(options), std::string(key)};
}

/// The embedded headers, under the name kernels use in #include "...": every .cuh, and every
/// .cu, since a design's source may be another's compiled with a switch (prefill_group.cu
/// includes prefill_stream.cu).
const std::vector<std::pair<std::string, std::string>>& embedded_headers() {
  static const auto headers = [] {
    std::vector<std::pair<std::string, std::string>> h;
    for (const auto& s : embedded_sources())
      if (s.name.ends_with(".cuh") || s.name.ends_with(".cu")) h.emplace_back(std::string(s.name), std::string(s.text));
    return h;
  }();
  return headers;
}

std::vector<int> supported_archs() {
  static const std::vector<int> archs = [] {
    std::vector<int> out;
    int count = 0;
    if (nvrtcGetNumSupportedArchs(&count) != NVRTC_SUCCESS || count <= 0) return out;
    out.resize(static_cast<std::size_t>(count));
    if (nvrtcGetSupportedArchs(out.data()) != NVRTC_SUCCESS) out.clear();
    return out;
  }();
  return archs;
}

std::string supported_archs_text() {
  std::string s;
  for (int a : supported_archs()) {
    if (!s.empty()) s += ", ";
    s += "sm_" + std::to_string(a);
  }
  return s.empty() ? "none (nvrtcGetSupportedArchs failed)" : s;
}

int to_int(std::string_view s) {
  int v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

}  // namespace

std::string CompileError::message() const {
  // The first line that names an error is what a person needs first; the whole log follows in
  // `log` for anyone who wants it.
  std::string first;
  std::size_t pos = 0;
  while (pos < log.size()) {
    std::size_t end = log.find('\n', pos);
    if (end == std::string::npos) end = log.size();
    std::string_view line(log.data() + pos, end - pos);
    if (line.find("error") != std::string_view::npos) {
      first = std::string(line);
      break;
    }
    pos = end + 1;
  }
  if (first.empty() && !log.empty()) first = log.substr(0, log.find('\n'));
  std::string m = "NVRTC failed to compile " + (variant_key.empty() ? std::string("a program") : variant_key) +
                  " (" + result_text(code) + ")";
  if (!first.empty()) m += ": " + first;
  return m;
}

void NvrtcProgram::Deleter::operator()(nvrtcProgram p) const {
  if (p) nvrtcDestroyProgram(&p);
}

std::expected<NvrtcProgram, CompileError> NvrtcProgram::create(
    std::string_view source, std::string_view name,
    const std::vector<std::pair<std::string, std::string>>& headers, std::string_view variant_key) {
  std::vector<const char*> header_texts, header_names;
  for (const auto& [n, t] : headers) {
    header_names.push_back(n.c_str());
    header_texts.push_back(t.c_str());
  }
  const std::string src(source), nm(name);
  nvrtcProgram p = nullptr;
  nvrtcResult r = nvrtcCreateProgram(&p, src.c_str(), nm.c_str(), static_cast<int>(headers.size()),
                                     header_texts.data(), header_names.data());
  if (r != NVRTC_SUCCESS) return std::unexpected(error(r, "nvrtcCreateProgram failed for " + nm, "", variant_key));
  return NvrtcProgram(p);
}

std::string NvrtcProgram::log() const {
  std::size_t size = 0;
  if (nvrtcGetProgramLogSize(get(), &size) != NVRTC_SUCCESS || size <= 1) return {};
  std::string s(size, '\0');
  if (nvrtcGetProgramLog(get(), s.data()) != NVRTC_SUCCESS) return {};
  s.resize(size - 1);  // drop the terminating NUL
  return s;
}

std::vector<std::string> compile_options(std::string_view arch) {
  // -std=c++17: what the kernels are written against. -default-device: every function without
  // an execution-space qualifier is device code, as kernels include no host code. ptxas -v: the
  // resource lines parsed into Cubin. -O3 for ptxas is its default, spelled out so the option
  // string (part of the cache key) says it. -lineinfo: profilers map SASS back to the .cu lines
  // at no run-time cost.
  return {"--gpu-architecture=" + std::string(arch),
          "-std=c++17",
          "-default-device",
          "--ptxas-options=-v",
          "--ptxas-options=-O3",
          "-lineinfo",
          "-DNSA_NVRTC=1"};
}

std::string options_string(std::string_view arch) {
  std::string s;
  for (const auto& o : compile_options(arch)) {
    if (!s.empty()) s += ' ';
    s += o;
  }
  return s;
}

bool arch_supported(std::string_view arch) {
  static const std::regex pattern("sm_([0-9]+)([af]?)");
  std::cmatch m;
  if (!std::regex_match(arch.data(), arch.data() + arch.size(), m, pattern)) return false;
  const int number = to_int(std::string_view(m[1].first, static_cast<std::size_t>(m[1].length())));
  if (m[2].length() > 0 && number < 90) return false;  // arch-specific targets start at sm_90a
  const auto archs = supported_archs();
  return std::find(archs.begin(), archs.end(), number) != archs.end();
}

std::vector<KernelResources> parse_ptxas_resources(std::string_view log) {
  static const std::regex entry_re(R"(Compiling entry function '([^']+)')");
  static const std::regex props_re(R"(Function properties for (\S+))");
  static const std::regex frame_re(
      R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  static const std::regex used_re(R"(Used (\d+) registers)");
  static const std::regex smem_re(R"((\d+) bytes smem)");
  std::vector<KernelResources> out;
  KernelResources* current = nullptr;
  std::size_t pos = 0;
  while (pos < log.size()) {
    std::size_t end = log.find('\n', pos);
    if (end == std::string_view::npos) end = log.size();
    const std::string line(log.substr(pos, end - pos));
    pos = end + 1;
    std::smatch m;
    if (std::regex_search(line, m, entry_re)) {
      out.push_back(KernelResources{m[1].str()});
      current = &out.back();
    } else if (std::regex_search(line, m, props_re)) {
      // Properties of a non-entry (noinline device) function are not a kernel's: ignore them.
      current = nullptr;
      for (auto& k : out)
        if (k.entry == m[1].str()) current = &k;
    } else if (current && std::regex_search(line, m, frame_re)) {
      current->stack_bytes = std::stoi(m[1].str());
      current->spill_bytes = std::stoi(m[2].str()) + std::stoi(m[3].str());
    } else if (current && std::regex_search(line, m, used_re)) {
      current->registers = std::stoi(m[1].str());
      if (std::regex_search(line, m, smem_re)) current->shared_bytes = std::stoi(m[1].str());
    }
  }
  return out;
}

std::expected<Cubin, CompileError> compile_source_to_cubin(std::string_view source, std::string_view name,
                                                           std::string_view arch, std::string_view variant_key) {
  const std::string options = options_string(arch);
  if (!arch_supported(arch))
    return std::unexpected(error(NVRTC_ERROR_INVALID_OPTION,
                                 "target '" + std::string(arch) + "' is not one this NVRTC (" + nvrtc_version() +
                                     ") can compile cubins for; supported: " + supported_archs_text() +
                                     " (an 'a' suffix such as sm_90a is allowed from sm_90 on)",
                                 options, variant_key));
  auto program = NvrtcProgram::create(source, name, embedded_headers(), variant_key);
  if (!program) return std::unexpected(program.error());

  const auto option_list = compile_options(arch);
  std::vector<const char*> argv;
  for (const auto& o : option_list) argv.push_back(o.c_str());
  nvrtcResult r = nvrtcCompileProgram(program->get(), static_cast<int>(argv.size()), argv.data());
  std::string log = program->log();
  if (r != NVRTC_SUCCESS) return std::unexpected(error(r, std::move(log), options, variant_key));

  std::size_t size = 0;
  r = nvrtcGetCUBINSize(program->get(), &size);
  if (r != NVRTC_SUCCESS || size == 0)
    return std::unexpected(error(r == NVRTC_SUCCESS ? NVRTC_ERROR_INVALID_INPUT : r,
                                 log + "\nno cubin was produced (is the target a real sm_XX?)", options, variant_key));
  Cubin cubin;
  cubin.image.resize(size);
  r = nvrtcGetCUBIN(program->get(), reinterpret_cast<char*>(cubin.image.data()));
  if (r != NVRTC_SUCCESS) return std::unexpected(error(r, log, options, variant_key));
  cubin.kernels = parse_ptxas_resources(log);
  for (const auto& k : cubin.kernels) {
    cubin.registers = std::max(cubin.registers, k.registers);
    cubin.shared_bytes = std::max(cubin.shared_bytes, k.shared_bytes);
    cubin.spill_bytes = std::max(cubin.spill_bytes, k.spill_bytes);
  }
  cubin.log = std::move(log);
  return cubin;
}

std::expected<Cubin, CompileError> compile_to_cubin(const KernelVariant& variant) {
  return compile_to_cubin(variant, {}, {});
}

std::expected<Cubin, CompileError> compile_to_cubin(const KernelVariant& variant, std::string_view defines,
                                                    std::string_view label) {
  const std::string key = label.empty() ? variant.key() : variant.key() + " (" + std::string(label) + ")";
  const std::string name(source_for(variant.design));
  const auto body = find_source(name);
  if (!body)
    return std::unexpected(error(NVRTC_ERROR_INVALID_INPUT,
                                 "no embedded source '" + name + "' for design " + std::string(to_string(variant.design)) +
                                     ": add jit_kernels/kernels/" + name + " and rebuild",
                                 options_string(variant.compile_arch()), key));
  // #line makes NVRTC report errors at the .cu file's own line numbers, not the prelude's.
  std::string source(defines);
  source += variant.prelude();
  source += "#line 1 \"" + name + "\"\n";
  source += *body;
  return compile_source_to_cubin(source, name, variant.compile_arch(), key);
}

}  // namespace nsa::jit

#pragma once
// Run-time compilation of one kernel variant to a cubin with NVRTC.
//
// The program NVRTC sees is the variant's prelude (#defines of every compile-time constant and
// knob, see KernelVariant::prelude) followed by the design's .cu file (catalog.hpp: source_for); every embedded .cuh is
// passed as an in-memory header, so `#include "common.cuh"` resolves without any include path.
// No CUDA toolkit header directory is given on purpose: a GPU host may have NVRTC but no
// headers, and a kernel that compiles here must compile there.
//
// Compilation targets an exact architecture (`--gpu-architecture=sm_90`) and returns SASS
// (nvrtcGetCUBIN), never PTX, so loading it costs no JIT at run time and the resources ptxas
// reports are the real ones. A failure is a value (CompileError), not an exception: a variant
// that does not compile is an ordinary tuning outcome.

#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nvrtc.h>

#include "nsa/jit/kernel_variant.hpp"

namespace nsa::jit {

/// Why a compile failed, with everything needed to reproduce it.
struct CompileError {
  nvrtcResult code = NVRTC_SUCCESS;  // NVRTC_ERROR_COMPILATION, NVRTC_ERROR_INVALID_OPTION, ...
  std::string log;                   // the whole program log (may be empty)
  std::string options;               // the options, space-separated, as passed to NVRTC
  std::string variant_key;           // which variant
  /// One line: "NVRTC failed to compile <key> (NVRTC_ERROR_COMPILATION): <first error line>".
  std::string message() const;
};

/// What ptxas reported for one __global__ function.
struct KernelResources {
  std::string entry;        // the mangled or extern "C" name ptxas printed
  int registers = 0;        // per thread
  int shared_bytes = 0;     // static shared memory (dynamic shared memory is the launch's)
  int spill_bytes = 0;      // spill stores + spill loads
  int stack_bytes = 0;      // stack frame
};

/// A compiled variant. `registers`, `shared_bytes` and `spill_bytes` are the maxima over the
/// module's kernels (a plan may launch several), `kernels` has them one by one.
struct Cubin {
  std::vector<std::uint8_t> image;
  int registers = 0;
  int shared_bytes = 0;
  int spill_bytes = 0;
  std::string log;  // the program log (ptxas -v lines and warnings)
  std::vector<KernelResources> kernels;
};

/// Owns one nvrtcProgram (destroyed with nvrtcDestroyProgram). Move-only.
class NvrtcProgram {
 public:
  /// Creates a program from `source` named `name`, with in-memory headers. Errors carry the
  /// NVRTC result; `variant_key` is only copied into the error.
  static std::expected<NvrtcProgram, CompileError> create(
      std::string_view source, std::string_view name,
      const std::vector<std::pair<std::string, std::string>>& headers, std::string_view variant_key);

  NvrtcProgram(NvrtcProgram&&) noexcept = default;
  NvrtcProgram& operator=(NvrtcProgram&&) noexcept = default;
  ~NvrtcProgram() = default;

  nvrtcProgram get() const { return m_program.get(); }
  /// The program log ("" when NVRTC has none).
  std::string log() const;

 private:
  struct Deleter {
    void operator()(nvrtcProgram p) const;
  };
  explicit NvrtcProgram(nvrtcProgram p) : m_program(p) {}
  std::unique_ptr<_nvrtcProgram, Deleter> m_program;
};

/// The options compile_to_cubin passes for `arch` ("sm_90", "sm_90a"), in order:
/// --gpu-architecture=<arch> -std=c++17 -default-device --ptxas-options=-v
/// --ptxas-options=-O3 -lineinfo ... The joined string is part of a cached cubin's key.
std::vector<std::string> compile_options(std::string_view arch);
/// compile_options(arch) joined by single spaces.
std::string options_string(std::string_view arch);

/// True for a target NVRTC can compile cubins for ("sm_80", "sm_90a"); checked against
/// nvrtcGetSupportedArchs, so "sm_91" or "sm90" is false.
bool arch_supported(std::string_view arch);

/// Compiles `variant` (its prelude + its design's embedded source) for `variant.arch`.
/// Errors: an unknown arch or a design without an embedded source (NVRTC_ERROR_INVALID_INPUT,
/// with the reason in `log`), compile errors (NVRTC_ERROR_COMPILATION with the whole log).
/// Thread-safe: NVRTC programs are independent.
std::expected<Cubin, CompileError> compile_to_cubin(const KernelVariant& variant);

/// compile_to_cubin with `defines` (lines of `#define NAME VALUE`) ahead of the prelude, for
/// builds that are instruments, not catalog variants (nsa-kernel-trace's NSA_TRACE, a switch
/// under test); `label` names the build in errors, after the variant's key ("traced").
std::expected<Cubin, CompileError> compile_to_cubin(const KernelVariant& variant, std::string_view defines,
                                                    std::string_view label);

/// Compiles arbitrary source text for `arch` with the same options and embedded headers: the
/// primitive under compile_to_cubin, also used by tests (a deliberate syntax error).
std::expected<Cubin, CompileError> compile_source_to_cubin(std::string_view source,
                                                           std::string_view name,
                                                           std::string_view arch,
                                                           std::string_view variant_key);

/// Parses ptxas -v lines ("Compiling entry function 'x' for 'sm_90'", "Function properties
/// for x", "N bytes stack frame, N bytes spill stores, N bytes spill loads", "Used N registers,
/// ... N bytes smem ...") into per-kernel resources, in order of appearance.
std::vector<KernelResources> parse_ptxas_resources(std::string_view log);

}  // namespace nsa::jit

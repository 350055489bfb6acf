#pragma once
// Compiled kernels kept in the store, so a restarted daemon (or a fleet host whose cache was
// warmed ahead with `nsa-tunectl compile --arch sm_90`) compiles nothing it already has.
//
// StoreCubinCache is the jit::CubinCache the compile pool consults: a row of the store's
// compiled-kernel table per CubinKey (variant key, arch, source hash, options, NVRTC version).
// A row whose key differs in any part is simply not found, so a stale cubin is never loaded;
// it stays in the table until replaced.

#include <cstddef>
#include <expected>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/kernel_variant.hpp"

namespace nsa::tuner {

/// A thread-safe CubinCache on a VerdictStore (calls into the store are serialised here).
class StoreCubinCache final : public jit::CubinCache {
 public:
  /// `store` must outlive this cache.
  explicit StoreCubinCache(cache::VerdictStore& store) : m_store(store) {}
  std::optional<jit::Cubin> get(const jit::CubinKey& key) override;
  std::expected<void, std::string> put(const jit::CubinKey& key, const jit::Cubin& cubin) override;

 private:
  cache::VerdictStore& m_store;
  std::mutex m_mutex;
};

/// The families `nsa-tunectl compile` warms by default: the NSA paper config (D_qk=192, D_v=128)
/// and D_qk=D_v=128, both h=16, block 64, n=16, in bf16 and fp16.
std::vector<jit::FamilySpec> default_precompile_families();

/// Every catalog variant of `families` for `arch` (all designs, all knob settings).
std::vector<jit::KernelVariant> precompile_variants(const std::string& arch,
                                                    const std::vector<jit::FamilySpec>& families);

struct PrecompileSummary {
  std::size_t total = 0;
  std::size_t compiled = 0;    // compiled by NVRTC now and stored
  std::size_t from_cache = 0;  // already in the store
  std::size_t failed = 0;      // compile errors (see failures)
  double seconds = 0;
  std::vector<jit::CompileError> failures;
  std::vector<std::string> cache_errors;  // compiled but could not be stored
  /// "412 variants for sm_90: 400 compiled, 10 from the cache, 2 failed in 83.2 s"
  std::string describe(const std::string& arch) const;
};

/// Compiles every variant of `families` (default: default_precompile_families()) for `arch`
/// into `store`, on a pool of `threads` (0: all cores). `progress` is called after each variant.
/// An arch NVRTC cannot target gives a summary with every variant failed and a CompileError
/// saying which arches are supported; nothing needs a GPU.
PrecompileSummary precompile(const std::string& arch, cache::VerdictStore& store,
                             const jit::ProgressCallback& progress = {},
                             const std::vector<jit::FamilySpec>& families = {},
                             unsigned threads = 0);

/// The same for an explicit list of variants (any arches): what precompile() runs.
PrecompileSummary compile_into_store(const std::vector<jit::KernelVariant>& variants, cache::VerdictStore& store,
                                     const jit::ProgressCallback& progress = {}, unsigned threads = 0);

}  // namespace nsa::tuner

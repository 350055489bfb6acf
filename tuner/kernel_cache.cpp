// The store-backed cubin cache and `nsa-tunectl compile`'s precompilation. See kernel_cache.hpp.

#include "nsa/tuner/kernel_cache.hpp"

#include <chrono>
#include <cstdio>

#include "nsa/jit/catalog.hpp"

namespace nsa::tuner {

std::optional<jit::Cubin> StoreCubinCache::get(const jit::CubinKey& key) {
  std::lock_guard lock(m_mutex);
  auto row = m_store.get_kernel(key.variant_key, key.arch, key.source_hash, key.options, key.nvrtc_version);
  if (!row || row->cubin.empty()) return std::nullopt;  // an empty image is unusable: compile again
  jit::Cubin c;
  c.image = std::move(row->cubin);
  c.registers = row->registers;
  c.shared_bytes = row->shared_bytes;
  c.spill_bytes = row->spill_bytes;
  return c;
}

std::expected<void, std::string> StoreCubinCache::put(const jit::CubinKey& key, const jit::Cubin& cubin) {
  cache::CompiledKernel row;
  row.variant_key = key.variant_key;
  row.arch = key.arch;
  row.source_hash = key.source_hash;
  row.options = key.options;
  row.nvrtc_version = key.nvrtc_version;
  row.cubin = cubin.image;
  row.registers = cubin.registers;
  row.shared_bytes = cubin.shared_bytes;
  row.spill_bytes = cubin.spill_bytes;
  row.created_at = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  std::lock_guard lock(m_mutex);
  if (auto ok = m_store.put_kernel(row); !ok)
    return std::unexpected("could not store the cubin of " + key.variant_key + " (" + ok.error().code +
                           "): " + ok.error().message);
  return {};
}

std::vector<jit::FamilySpec> default_precompile_families() {
  std::vector<jit::FamilySpec> out;
  for (auto dtype : {jit::ElemType::bf16, jit::ElemType::fp16})
    for (auto [dqk, dv] : {std::pair{192, 128}, std::pair{128, 128}}) {
      jit::FamilySpec f;
      f.dtype = dtype;
      f.d_qk = dqk;
      f.d_v = dv;
      f.h = 16;
      f.block = 64;
      f.n = 16;
      out.push_back(f);
    }
  return out;
}

std::vector<jit::KernelVariant> precompile_variants(const std::string& arch,
                                                    const std::vector<jit::FamilySpec>& families) {
  std::vector<jit::KernelVariant> out;
  for (const auto& f : families) {
    auto v = jit::all_variants(f, arch);
    out.insert(out.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
  }
  return out;
}

std::string PrecompileSummary::describe(const std::string& arch) const {
  char s[256];
  std::snprintf(s, sizeof s, "%zu variants for %s: %zu compiled, %zu from the cache, %zu failed in %.1f s", total,
                arch.c_str(), compiled, from_cache, failed, seconds);
  std::string out = s;
  if (!cache_errors.empty()) out += " (" + std::to_string(cache_errors.size()) + " could not be stored)";
  return out;
}

PrecompileSummary precompile(const std::string& arch, cache::VerdictStore& store, const jit::ProgressCallback& progress,
                             const std::vector<jit::FamilySpec>& families, unsigned threads) {
  return compile_into_store(precompile_variants(arch, families.empty() ? default_precompile_families() : families),
                            store, progress, threads);
}

PrecompileSummary compile_into_store(const std::vector<jit::KernelVariant>& variants, cache::VerdictStore& store,
                                     const jit::ProgressCallback& progress, unsigned threads) {
  const auto start = std::chrono::steady_clock::now();
  StoreCubinCache cache(store);
  jit::CompilePool pool(threads, &cache);
  const auto outcomes = pool.compile_all(variants, progress);

  PrecompileSummary summary;
  summary.total = outcomes.size();
  for (const auto& o : outcomes) {
    if (!o.result) {
      ++summary.failed;
      summary.failures.push_back(o.result.error());
    } else if (o.from_cache) {
      ++summary.from_cache;
    } else {
      ++summary.compiled;
    }
    if (!o.cache_error.empty()) summary.cache_errors.push_back(o.cache_error);
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace nsa::tuner

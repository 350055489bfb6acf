// The compile pool. Two rules carry it:
//  1. Look in the cache, then take the key's in-flight slot under the pool's lock and look in
//     the cache again before compiling: a compile that finished between the two looks is found,
//     and a compile still running is waited for, so no key is ever compiled twice at once.
//  2. Outcomes are values: a failed compile, a failed cache write, even an exception thrown by a
//     cache implementation become fields of the CompileOutcome, never a torn-down pool.
//
// Workers are plain threads pulling the next index from an atomic counter; each writes only its
// own outcome slot, so results need no lock. Progress callbacks are serialised by a mutex.

#include "nsa/jit/compiler.hpp"

#include <atomic>
#include <chrono>
#include <thread>

#include "nsa/jit/device.hpp"

namespace nsa::jit {

CubinKey CubinKey::for_variant(const KernelVariant& variant) {
  return CubinKey{variant.key(), variant.arch, kernel_source_hash(), options_string(variant.compile_arch()), jit::nvrtc_version()};
}

std::optional<Cubin> MemoryCubinCache::get(const CubinKey& key) {
  std::lock_guard lock(m_mutex);
  auto it = m_entries.find(key);
  if (it == m_entries.end()) return std::nullopt;
  return it->second;
}

std::expected<void, std::string> MemoryCubinCache::put(const CubinKey& key, const Cubin& cubin) {
  std::lock_guard lock(m_mutex);
  m_entries.insert_or_assign(key, cubin);
  return {};
}

std::size_t MemoryCubinCache::size() const {
  std::lock_guard lock(m_mutex);
  return m_entries.size();
}

struct CompilePool::InFlight {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::expected<Cubin, CompileError> result = std::unexpected(CompileError{});
};

CompilePool::CompilePool(unsigned threads, CubinCache* cache)
    : m_threads(threads ? threads : std::max(1u, std::thread::hardware_concurrency())), m_cache(cache) {}

CompilePool::~CompilePool() = default;

std::size_t CompilePool::nvrtc_compiles() const {
  std::lock_guard lock(m_mutex);
  return m_nvrtc_compiles;
}

CompileOutcome CompilePool::compile(const KernelVariant& variant) {
  const auto start = std::chrono::steady_clock::now();
  CompileOutcome out;
  out.variant = variant;
  out.key = variant.key();
  auto finish = [&] {
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
  };
  const CubinKey key = CubinKey::for_variant(variant);
  auto cache_get = [&]() -> std::optional<Cubin> {
    if (!m_cache) return std::nullopt;
    try {
      return m_cache->get(key);
    } catch (const std::exception& e) {
      out.cache_error = std::string("cache lookup failed: ") + e.what();
      return std::nullopt;
    }
  };

  if (auto hit = cache_get()) {
    out.result = std::move(*hit);
    out.from_cache = true;
    return finish();
  }

  std::shared_ptr<InFlight> slot;
  bool owner = false;
  {
    std::lock_guard lock(m_mutex);
    auto it = m_in_flight.find(key);
    if (it != m_in_flight.end()) {
      slot = it->second;
    } else {
      slot = std::make_shared<InFlight>();
      m_in_flight.emplace(key, slot);
      owner = true;
    }
  }
  if (!owner) {
    // Someone else is compiling this key: share their result (counted as not compiled here).
    std::unique_lock lock(slot->mutex);
    slot->done_cv.wait(lock, [&] { return slot->done; });
    out.result = slot->result;
    out.from_cache = out.result.has_value();
    return finish();
  }

  // We own the key. Look again: a compile may have completed (and left the in-flight map)
  // between our first look and taking the slot.
  if (auto hit = cache_get()) {
    out.result = std::move(*hit);
    out.from_cache = true;
  } else {
    try {
      out.result = compile_to_cubin(variant);
    } catch (const std::exception& e) {  // bad_alloc and the like: still an outcome
      out.result = std::unexpected(CompileError{NVRTC_ERROR_OUT_OF_MEMORY, std::string("compile threw: ") + e.what(),
                                                options_string(variant.compile_arch()), out.key});
    }
    {
      std::lock_guard lock(m_mutex);
      ++m_nvrtc_compiles;
    }
    if (out.result && m_cache) {
      try {
        if (auto stored = m_cache->put(key, *out.result); !stored) out.cache_error = stored.error();
      } catch (const std::exception& e) {
        out.cache_error = std::string("cache store failed: ") + e.what();
      }
    }
  }
  {
    std::lock_guard lock(slot->mutex);
    slot->result = out.result;
    slot->done = true;
  }
  slot->done_cv.notify_all();
  {
    std::lock_guard lock(m_mutex);
    m_in_flight.erase(key);
  }
  return finish();
}

std::vector<CompileOutcome> CompilePool::compile_all(const std::vector<KernelVariant>& variants,
                                                     const ProgressCallback& progress) {
  std::vector<CompileOutcome> outcomes(variants.size());
  std::atomic<std::size_t> next{0};
  std::mutex progress_mutex;
  CompileProgress state;
  state.total = variants.size();

  auto worker = [&] {
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= variants.size()) return;
      outcomes[i] = compile(variants[i]);
      std::lock_guard lock(progress_mutex);
      ++state.done;
      if (!outcomes[i].result) ++state.failed;
      else if (outcomes[i].from_cache) ++state.from_cache;
      else ++state.compiled;
      state.last = &outcomes[i];
      if (progress) {
        try {
          progress(state);
        } catch (...) {
          // A progress display that fails must not abandon the compiles.
        }
      }
    }
  };
  const unsigned n = static_cast<unsigned>(std::min<std::size_t>(m_threads, variants.size()));
  std::vector<std::jthread> threads;
  for (unsigned t = 1; t < n; ++t) threads.emplace_back(worker);
  if (n > 0) worker();  // the caller's thread works too
  threads.clear();      // joins
  return outcomes;
}

}  // namespace nsa::jit

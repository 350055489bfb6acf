#pragma once
// Compiling many variants at once: a fixed pool of threads, a cache of cubins consulted before
// compiling, and a guarantee that one key is compiled at most once even when several callers
// ask for it at the same time.
//
// A cubin is stale when anything that went into it changes, so its cache key is the variant key
// plus the arch, the hash of every embedded source, the exact option string and the NVRTC
// version (CubinKey). The pool looks in the cache, then takes the key's in-flight slot under a
// lock and looks again (someone may have finished it meanwhile) before it compiles: a second
// request for a key being compiled waits for that compile instead of starting its own.

#include <condition_variable>
#include <cstddef>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "nsa/jit/kernel_variant.hpp"
#include "nsa/jit/nvrtc.hpp"

namespace nsa::jit {

/// Everything that makes a compiled cubin stale.
struct CubinKey {
  std::string variant_key;
  std::string arch;
  std::string source_hash;    // kernel_source_hash()
  std::string options;        // options_string(arch)
  std::string nvrtc_version;  // nvrtc_version()
  bool operator==(const CubinKey&) const = default;
  auto operator<=>(const CubinKey&) const = default;
  /// The key this build would use for `variant`.
  static CubinKey for_variant(const KernelVariant& variant);
};

/// Where compiled cubins are kept between compiles (and processes). Implementations must be
/// thread-safe: the pool calls them from its worker threads.
class CubinCache {
 public:
  virtual ~CubinCache() = default;
  /// nullopt for a missing entry (a stale one is missing by construction: the key differs).
  virtual std::optional<Cubin> get(const CubinKey& key) = 0;
  /// Stores `cubin` under `key`. A failure is returned as a message; the compile itself still
  /// succeeded, so callers report it and go on.
  virtual std::expected<void, std::string> put(const CubinKey& key, const Cubin& cubin) = 0;
};

/// A process-local cache (tests, benchmarks, and the daemon's front of the store).
class MemoryCubinCache final : public CubinCache {
 public:
  std::optional<Cubin> get(const CubinKey& key) override;
  std::expected<void, std::string> put(const CubinKey& key, const Cubin& cubin) override;
  std::size_t size() const;

 private:
  mutable std::mutex m_mutex;
  std::map<CubinKey, Cubin> m_entries;
};

/// The result of compiling (or finding) one variant.
struct CompileOutcome {
  KernelVariant variant;
  std::string key;                                // variant.key()
  std::expected<Cubin, CompileError> result = std::unexpected(CompileError{});
  bool from_cache = false;
  double seconds = 0;                             // wall time of this variant's compile or lookup
  std::string cache_error;                        // non-empty when put() failed
};

/// Reported after each variant finishes, from the worker thread that finished it (callbacks
/// are serialised: never two at once).
struct CompileProgress {
  std::size_t done = 0, total = 0;
  std::size_t compiled = 0, from_cache = 0, failed = 0;
  const CompileOutcome* last = nullptr;
};
using ProgressCallback = std::function<void(const CompileProgress&)>;

class CompilePool {
 public:
  /// `threads` = 0 uses std::thread::hardware_concurrency(). `cache` may be null (no caching
  /// beyond de-duplication of concurrent requests); it must outlive the pool.
  explicit CompilePool(unsigned threads = 0, CubinCache* cache = nullptr);
  ~CompilePool();
  CompilePool(const CompilePool&) = delete;
  CompilePool& operator=(const CompilePool&) = delete;

  unsigned threads() const { return m_threads; }

  /// Compiles every variant (in parallel, up to threads() at once) and returns one outcome per
  /// input, in input order. Never throws for compile failures: they are outcomes.
  std::vector<CompileOutcome> compile_all(const std::vector<KernelVariant>& variants,
                                          const ProgressCallback& progress = {});

  /// Compiles one variant on the calling thread, going through the cache and the in-flight
  /// de-duplication like compile_all.
  CompileOutcome compile(const KernelVariant& variant);

  /// How many NVRTC compiles this pool actually ran (cache hits and waits excluded).
  std::size_t nvrtc_compiles() const;

 private:
  struct InFlight;
  unsigned m_threads;
  CubinCache* m_cache;
  mutable std::mutex m_mutex;
  std::map<CubinKey, std::shared_ptr<InFlight>> m_in_flight;
  std::size_t m_nvrtc_compiles = 0;
};

}  // namespace nsa::jit

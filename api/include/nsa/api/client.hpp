#pragma once
// A thin, header-only C++ wrapper over the C API of client.h: RAII ownership of the client and
// a few conveniences. It adds no behaviour; every contract of client.h holds (budget,
// thread-safety, fallback), and nothing here throws except open() when no client can be made.

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nsa/api/client.h"

namespace nsa::tune {

using Problem = nsa_tune_problem;
using Answer = nsa_tune_answer;
using Stats = nsa_tune_stats;

/// Options with their defaults (see nsa_tune_client_options).
struct ClientOptions {
  std::string socket_path;   // empty: $NSA_TUNE_SOCKET, else /run/nsa-tune/nsa-tuned.sock
  std::int64_t budget_us = 0;  // <= 0: 2000
  std::string client_name;   // empty: "libnsa_tune_client/<version>"
  std::int64_t backoff_min_us = 0, backoff_max_us = 0;
  std::int64_t memo_capacity = 0;
};

/// A problem with every field named, for designated initialisers:
///   auto p = nsa::tune::make_problem({.d_qk = 128, .d_v = 128, ...});
struct Shape {
  int device = 0;
  std::string_view device_uuid;
  std::string_view arch;
  nsa_tune_dtype dtype = NSA_TUNE_DTYPE_BF16;
  int d_qk = 0, d_v = 0, h = 0, h_kv = 0, block = 0, n = 0;
  std::int64_t t_q = 0, t_kv = 0;
  int batch = 0;
};

/// Builds the C problem. A uuid or arch too long for its buffer is left unterminated, which the
/// client rejects as an invalid problem: never silently shortened into another name.
inline Problem make_problem(const Shape& s) {
  Problem p;
  nsa_tune_problem_init(&p);
  p.device = s.device;
  auto put = [](char* dst, std::size_t cap, std::string_view v) {
    if (v.size() >= cap) {
      for (std::size_t i = 0; i < cap; ++i) dst[i] = 'x';  // unterminated: rejected as invalid
      return;
    }
    for (std::size_t i = 0; i < v.size(); ++i) dst[i] = v[i];
    dst[v.size()] = '\0';
  };
  put(p.device_uuid, sizeof p.device_uuid, s.device_uuid);
  put(p.arch, sizeof p.arch, s.arch);
  p.dtype = s.dtype;
  p.d_qk = s.d_qk, p.d_v = s.d_v, p.h = s.h, p.h_kv = s.h_kv, p.block = s.block, p.n = s.n;
  p.t_q = s.t_q, p.t_kv = s.t_kv, p.batch = s.batch;
  return p;
}

inline bool is_sparse(const Answer& a) { return a.backend == NSA_TUNE_BACKEND_SPARSE; }

/// Owns one nsa_tune_client. Move-only; closing (joining its thread) happens in the destructor.
class Client {
 public:
  /// Throws std::runtime_error only when the library cannot create a client at all (no memory,
  /// no thread). A missing daemon is not an error: calls answer the fallback until it is there.
  explicit Client(const ClientOptions& o = {}) {
    nsa_tune_client_options opts;
    nsa_tune_client_options_init(&opts);
    opts.socket_path = o.socket_path.empty() ? nullptr : o.socket_path.c_str();
    opts.budget_us = o.budget_us;
    opts.client_name = o.client_name.empty() ? nullptr : o.client_name.c_str();
    opts.backoff_min_us = o.backoff_min_us;
    opts.backoff_max_us = o.backoff_max_us;
    opts.memo_capacity = o.memo_capacity;
    m_client = nsa_tune_client_open(&opts);
    if (!m_client) throw std::runtime_error("nsa_tune_client_open failed (out of memory or threads)");
  }
  Client(Client&& o) noexcept : m_client(std::exchange(o.m_client, nullptr)) {}
  Client& operator=(Client&& o) noexcept {
    if (this != &o) {
      nsa_tune_client_close(m_client);
      m_client = std::exchange(o.m_client, nullptr);
    }
    return *this;
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() { nsa_tune_client_close(m_client); }

  /// Always returns an answer; `status` (optional) receives NSA_TUNE_OK / _FALLBACK / _INVALID_PROBLEM.
  Answer dispatch(const Problem& p, int* status = nullptr) const {
    Answer a;
    int rc = nsa_tune_dispatch(m_client, &p, &a);
    if (status) *status = rc;
    return a;
  }

  /// answers[i] for problems[i], all within one budget.
  std::vector<Answer> dispatch_many(std::span<const Problem> problems, int* status = nullptr) const {
    std::vector<Answer> answers(problems.size());
    int rc = nsa_tune_dispatch_many(m_client, problems.data(), problems.size(), answers.data());
    if (status) *status = rc;
    return answers;
  }

  std::int64_t epoch() const { return nsa_tune_epoch(m_client); }
  Stats stats() const {
    Stats s{};
    nsa_tune_client_stats(m_client, &s);
    return s;
  }
  nsa_tune_client* get() const { return m_client; }

 private:
  nsa_tune_client* m_client = nullptr;
};

}  // namespace nsa::tune

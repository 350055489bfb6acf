// The C client library (libnsa_tune_client) against the real daemon: answers, the memo, the
// epoch dropping it, the fallback within the budget when the daemon is gone, and recovery.

#include <gtest/gtest.h>

#include <cstring>

#include "nsa/api/client.h"
#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

nsa_tune_problem sm89_problem() {
  nsa_tune_problem p;
  nsa_tune_problem_init(&p);
  std::strcpy(p.arch, "sm_89");
  p.d_qk = 128;
  p.d_v = 128;
  p.h = 16;
  p.h_kv = 4;
  p.block = 64;
  p.n = 16;
  p.t_q = 1;
  p.t_kv = 32768;
  p.batch = 64;
  return p;
}

nsa_tune_stats stats_of(nsa_tune_client* c) {
  nsa_tune_stats s{};
  nsa_tune_client_stats(c, &s);
  return s;
}

struct ClientCloser {
  void operator()(nsa_tune_client* c) const { nsa_tune_client_close(c); }
};
using ClientPtr = std::unique_ptr<nsa_tune_client, ClientCloser>;

ClientPtr open_client(const Daemon& d, std::int64_t budget_us) {
  nsa_tune_client_options o;
  nsa_tune_client_options_init(&o);
  const std::string socket = d.socket().string();
  o.socket_path = socket.c_str();
  o.budget_us = budget_us;
  o.client_name = "e2e_c_client_test";
  o.backoff_min_us = 10'000;
  o.backoff_max_us = 100'000;
  return ClientPtr(nsa_tune_client_open(&o));
}

/// Retries until `pred` holds or `limit` passes (the background subscription is asynchronous).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

TEST(CClient, DispatchMemoEpochFallbackAndRecoveryAgainstTheRealDaemon) {
  TempDir dir;
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  // A generous budget for the functional part: this machine may be busy with other tests.
  ClientPtr client = open_client(d, 500'000);
  ASSERT_TRUE(client);
  const nsa_tune_problem p = sm89_problem();
  nsa_tune_answer a{};

  ASSERT_EQ(nsa_tune_dispatch(client.get(), &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_PINNED);
  EXPECT_STREQ(a.arch, "sm_89");
  EXPECT_NE(std::strstr(a.reason, "M4-02"), nullptr) << a.reason;
  EXPECT_EQ(stats_of(client.get()).misses, 1u);

  // The same problem again comes from the memo.
  ASSERT_EQ(nsa_tune_dispatch(client.get(), &p, &a), NSA_TUNE_OK);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_PINNED);
  EXPECT_EQ(stats_of(client.get()).hits, 1u);
  EXPECT_EQ(stats_of(client.get()).misses, 1u);

  // A pin moves the epoch; the client's subscription drops the memo.
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(client.get()) >= 0; }));
  const std::int64_t before = nsa_tune_epoch(client.get());
  auto admin = d.client();
  auto pin = admin.request(json{{"op", "pin"}, {"arch", "sm_80"}, {"reason", "epoch test"}});
  ASSERT_TRUE(pin && (*pin)["ok"].get<bool>());
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(client.get()) > before; }))
      << "the client never learned of the new epoch";
  ASSERT_EQ(nsa_tune_dispatch(client.get(), &p, &a), NSA_TUNE_OK);
  EXPECT_EQ(stats_of(client.get()).misses, 2u) << "the memo should have been dropped";
  EXPECT_GE(stats_of(client.get()).epoch_changes, 1u);

  // The daemon stops: a client with the default budget (2 ms) answers the fallback within it.
  ClientPtr fast = open_client(d, 0);
  ASSERT_EQ(d.stop(), 0);
  nsa_tune_problem other = sm89_problem();
  other.t_kv = 4096;  // not memoized anywhere
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(nsa_tune_dispatch(fast.get(), &other, &a), NSA_TUNE_FALLBACK);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE);
  EXPECT_LT(took, 2ms + 10ms) << "over the 2 ms budget (10 ms slack for a loaded CI machine)";
  EXPECT_EQ(nsa_tune_dispatch(client.get(), &other, &a), NSA_TUNE_FALLBACK);

  // The daemon comes back: the client answers again without being reopened.
  ASSERT_TRUE(d.start());
  EXPECT_TRUE(eventually([&] { return nsa_tune_dispatch(client.get(), &other, &a) == NSA_TUNE_OK; }))
      << a.reason;
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_PINNED);
}

TEST(CClient, AnInvalidProblemIsRejectedWithTheDaemonsReasonAndOthersAreStillAnswered) {
  TempDir dir;
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  ClientPtr client = open_client(d, 500'000);
  nsa_tune_problem problems[2] = {sm89_problem(), sm89_problem()};
  problems[1].d_qk = 100;
  nsa_tune_answer answers[2]{};
  EXPECT_EQ(nsa_tune_dispatch(client.get(), &problems[1], &answers[1]), NSA_TUNE_INVALID_PROBLEM);
  EXPECT_EQ(answers[1].provenance, NSA_TUNE_PROVENANCE_INVALID_PROBLEM);
  EXPECT_NE(std::strstr(answers[1].reason, "D_qk=100"), nullptr) << answers[1].reason;
  EXPECT_EQ(nsa_tune_dispatch(client.get(), &problems[0], &answers[0]), NSA_TUNE_OK);
}

}  // namespace
}  // namespace nsa::service::testing

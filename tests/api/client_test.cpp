// Tests api/client (libnsa_tune_client) through its C API, against real Unix sockets: nothing
// listening, a peer that never answers, peers of another protocol version, peers that reply
// garbage or too late, and a peer that speaks the protocol (test_peer.hpp).
//
// Wall-time bounds here are correctness bounds (the budget plus generous slack for a loaded
// 2-core machine), not benchmarks.

#include "nsa/api/client.h"
#include "nsa/api/client.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "test_peer.hpp"

namespace {

using nsa::api::testing::TempDir;
using nsa::api::testing::TestPeer;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::int64_t kBudgetUs = 2000;
constexpr auto kSlack = 50ms;

nsa_tune_problem problem(std::int64_t t_kv, int batch = 64) {
  nsa_tune_problem p;
  nsa_tune_problem_init(&p);
  p.d_qk = 128, p.d_v = 128, p.h = 16, p.h_kv = 4, p.block = 64, p.n = 16;
  p.t_q = 1, p.t_kv = t_kv, p.batch = batch;
  return p;
}

std::string point_key(const nsa_tune_problem& p) {
  return "b" + std::to_string(p.batch) + ".hkv" + std::to_string(p.h_kv) + ".tq" + std::to_string(p.t_q) + ".tkv" +
         std::to_string(p.t_kv);
}

/// Each test gets a fresh temp dir and a socket path inside it.
class Client : public ::testing::Test {
 protected:
  nsa_tune_client* open(std::int64_t budget_us = kBudgetUs) {
    nsa_tune_client_options o;
    nsa_tune_client_options_init(&o);
    o.socket_path = socket.c_str();
    o.budget_us = budget_us;
    o.client_name = "client_test/1";
    o.backoff_min_us = 1000;
    o.backoff_max_us = 20000;
    nsa_tune_client* c = nsa_tune_client_open(&o);
    EXPECT_NE(c, nullptr);
    clients.push_back(c);
    return c;
  }
  void TearDown() override {
    for (auto* c : clients) nsa_tune_client_close(c);
  }
  /// Dispatches and returns the wall time of the call.
  Clock::duration timed_dispatch(nsa_tune_client* c, const nsa_tune_problem& p, nsa_tune_answer& a, int& rc) {
    auto t0 = Clock::now();
    rc = nsa_tune_dispatch(c, &p, &a);
    return Clock::now() - t0;
  }
  template <class Pred>
  bool eventually(Pred pred, std::chrono::milliseconds limit = 3000ms) {
    auto end = Clock::now() + limit;
    while (Clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(2ms);
    }
    return pred();
  }

  TempDir dir;
  std::string socket = (dir.path() / "s.sock").string();
  std::vector<nsa_tune_client*> clients;
};

void expect_fallback(const nsa_tune_answer& a, int rc, const char* reason_part) {
  EXPECT_EQ(rc, NSA_TUNE_FALLBACK);
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE);
  EXPECT_STREQ(a.variant, "");
  EXPECT_STREQ(a.launch_json, "");
  EXPECT_EQ(a.epoch, -1);
  EXPECT_NE(std::strstr(a.reason, reason_part), nullptr) << "reason: " << a.reason;
}

TEST_F(Client, NoDaemonAtThePathFallsBackWithinBudget) {
  nsa_tune_client* c = open();
  nsa_tune_answer a;
  int rc = 0;
  for (int i = 0; i < 3; ++i) {  // the first call connects itself; later ones know it is down
    auto took = timed_dispatch(c, problem(32768), a, rc);
    EXPECT_LT(took, std::chrono::microseconds(kBudgetUs) + kSlack);
    expect_fallback(a, rc, "no daemon listening");
    EXPECT_NE(std::strstr(a.reason, socket.c_str()), nullptr) << a.reason;
  }
  nsa_tune_stats s;
  ASSERT_EQ(nsa_tune_client_stats(c, &s), NSA_TUNE_OK);
  EXPECT_EQ(s.fallbacks, 3u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.hits, 0u) << "fallbacks are never memoized";
  EXPECT_EQ(nsa_tune_epoch(c), -1);
}

TEST_F(Client, SocketFileWithoutListenerFallsBack) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, socket.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);  // bound, never listening
  nsa_tune_answer a;
  int rc = 0;
  auto took = timed_dispatch(open(), problem(32768), a, rc);
  EXPECT_LT(took, std::chrono::microseconds(kBudgetUs) + kSlack);
  expect_fallback(a, rc, "Connection refused");
  ::close(fd);
}

TEST_F(Client, SilentPeerFallsBackWithinBudgetAndCloseIsPrompt) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::silent});
  nsa_tune_client* c = open();
  nsa_tune_answer a;
  int rc = 0;
  for (std::int64_t t_kv : {32768, 4096}) {
    auto took = timed_dispatch(c, problem(t_kv), a, rc);
    EXPECT_GE(took, std::chrono::microseconds(kBudgetUs)) << "it did wait for the daemon";
    EXPECT_LT(took, std::chrono::microseconds(kBudgetUs) + kSlack);
    expect_fallback(a, rc, "within the budget (2000 us)");
  }
  // The background thread is stuck in a handshake with the silent peer; close must not wait for it.
  auto t0 = Clock::now();
  nsa_tune_client_close(c);
  clients.clear();
  EXPECT_LT(Clock::now() - t0, 200ms);
}

TEST_F(Client, PeerAnsweringVersionMismatchGivesFallbackNamingTheVersion) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::version_mismatch});
  nsa_tune_client* c = open(200'000);  // generous: the point is the reason, not the timing
  nsa_tune_answer a;
  int rc = 0;
  timed_dispatch(c, problem(32768), a, rc);
  expect_fallback(a, rc, "speaks protocol 2, this client speaks protocol 1");
  EXPECT_NE(std::strstr(a.reason, "9.0.0"), nullptr) << a.reason;
  EXPECT_EQ(peer.requests("dispatch"), 0) << "the daemon closed after hello; the dispatch was never read";
}

TEST_F(Client, PeerHelloWithProtocol2GivesFallbackNamingTheVersion) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::protocol2_ok});
  nsa_tune_client* c = open(200'000);
  nsa_tune_answer a;
  int rc = 0;
  timed_dispatch(c, problem(32768), a, rc);
  expect_fallback(a, rc, "protocol version mismatch");
  EXPECT_NE(std::strstr(a.reason, "speaks protocol 2"), nullptr) << a.reason;
  // Known incompatible now: the next miss answers at once, without a new connection.
  int hellos = peer.requests("hello");
  timed_dispatch(c, problem(4096), a, rc);
  expect_fallback(a, rc, "speaks protocol 2");
  EXPECT_LE(peer.requests("hello"), hellos + 1) << "at most the background thread's retry";
}

TEST_F(Client, CorrectPeerAnswersAndTheAnswerIsMemoized) {
  TestPeer peer(socket, {.epoch = 7});
  nsa_tune_client* c = open(200'000);  // a generous budget: this test is about memoization
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SPARSE);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_MEASURED);
  EXPECT_STREQ(a.variant, "sel_fwd.query_outer.bf16.dqk128.dv128.h16.blk64.n16.decode.warps4_stages2.sm90");
  EXPECT_STREQ(a.arch, "sm_90");
  EXPECT_DOUBLE_EQ(a.speedup, 1.5);
  EXPECT_EQ(a.run_id, 42);
  EXPECT_EQ(a.epoch, 7);
  EXPECT_NE(std::strstr(a.launch_json, "\"entry\":\"sel_fwd_query_outer\""), nullptr) << a.launch_json;
  EXPECT_NE(std::strstr(a.reason, point_key(p).c_str()), nullptr) << a.reason;
  EXPECT_EQ(peer.requests("dispatch"), 1);

  nsa_tune_answer again;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &again), NSA_TUNE_OK);
  EXPECT_EQ(peer.requests("dispatch"), 1) << "the second call was served from the memo";
  EXPECT_STREQ(again.variant, a.variant);
  EXPECT_STREQ(again.reason, a.reason);
  EXPECT_STREQ(again.launch_json, a.launch_json);
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.fallbacks, 0u);

  // The memo is keyed by the whole problem: another batch is another request.
  nsa_tune_problem q = problem(32768, 32);
  ASSERT_EQ(nsa_tune_dispatch(c, &q, &a), NSA_TUNE_OK);
  EXPECT_EQ(peer.requests("dispatch"), 2);
  // Pinned and untuned answers come through too.
  nsa_tune_problem pinned = problem(32768);
  std::strcpy(pinned.arch, "sm_89");
  ASSERT_EQ(nsa_tune_dispatch(c, &pinned, &a), NSA_TUNE_OK);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_PINNED);
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_STREQ(a.arch, "sm_89");
  nsa_tune_problem small = problem(1024);
  ASSERT_EQ(nsa_tune_dispatch(c, &small, &a), NSA_TUNE_OK);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_UNTUNED);
  EXPECT_DOUBLE_EQ(a.speedup, 0.0);
}

TEST_F(Client, EpochPushDropsTheMemo) {
  TestPeer peer(socket, {.epoch = 7});
  nsa_tune_client* c = open(200'000);
  ASSERT_TRUE(eventually([&] { return peer.requests("subscribe") == 1; })) << "the background thread subscribes";
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  ASSERT_EQ(peer.requests("dispatch"), 1);
  EXPECT_EQ(nsa_tune_epoch(c), 7);

  peer.push_epoch(8);
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(c) == 8; })) << "the subscription delivers the event";
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  EXPECT_EQ(peer.requests("dispatch"), 2) << "the memo was dropped, so the daemon was asked again";
  EXPECT_EQ(a.epoch, 8);
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  EXPECT_EQ(peer.requests("dispatch"), 2) << "and the new answer is memoized again";
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_EQ(s.epoch_changes, 1u);
}

TEST_F(Client, GarbageReplyFallsBackAndIsNotMemoized) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::garbage});
  nsa_tune_client* c = open(200'000);
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  int rc = nsa_tune_dispatch(c, &p, &a);
  expect_fallback(a, rc, "replied garbage");
  EXPECT_NE(std::strstr(a.reason, "this is not json"), nullptr) << a.reason;
  rc = nsa_tune_dispatch(c, &p, &a);
  expect_fallback(a, rc, "replied garbage");
  EXPECT_EQ(peer.requests("dispatch"), 2) << "a fallback is never memoized";
}

TEST_F(Client, ReplyWithTooFewAnswersIsGarbage) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::wrong_count});
  nsa_tune_answer a;
  nsa_tune_problem p = problem(32768);
  int rc = nsa_tune_dispatch(open(200'000), &p, &a);
  expect_fallback(a, rc, "0 answers for 1 problems");
}

TEST_F(Client, AnswerThatDoesNotFitTheStructIsAFallbackNotATruncation) {
  TestPeer peer(socket, {.mode = TestPeer::Mode::long_variant});
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  int rc = nsa_tune_dispatch(open(200'000), &p, &a);
  expect_fallback(a, rc, "variant key longer than 255 bytes");
}

TEST_F(Client, SlowPeerFallsBackWithinBudgetAndTheLateReplyIsNeverMisread) {
  TestPeer peer(socket, {.dispatch_delay = 40ms});
  nsa_tune_client* c = open();
  nsa_tune_problem sparse = problem(32768);
  nsa_tune_answer a;
  int rc = 0;
  auto took = timed_dispatch(c, sparse, a, rc);
  EXPECT_LT(took, std::chrono::microseconds(kBudgetUs) + kSlack);
  // "no reply" or, when a loaded machine delays even the hello, "no hello reply".
  expect_fallback(a, rc, "reply within the budget (2000 us)");
  // Now the daemon is fast again, and its late sparse answer is on its way to the old connection.
  peer.set_dispatch_delay(0ms);
  std::this_thread::sleep_for(60ms);
  nsa_tune_problem small = problem(1024);
  bool answered = eventually([&] {
    rc = nsa_tune_dispatch(c, &small, &a);
    return rc == NSA_TUNE_OK;
  });
  ASSERT_TRUE(answered) << a.reason;
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_UNTUNED) << "the answer for `small`, not the late one for `sparse`";
  EXPECT_NE(std::strstr(a.reason, point_key(small).c_str()), nullptr) << a.reason;
}

TEST_F(Client, InvalidProblemIsRejectedLocallyWithoutARequest) {
  TestPeer peer(socket, {});
  nsa_tune_client* c = open(200'000);
  nsa_tune_answer a;
  nsa_tune_problem p = problem(32768);
  p.d_qk = 100;
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_INVALID_PROBLEM);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_INVALID_PROBLEM);
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_NE(std::strstr(a.reason, "D_qk=100 is not a multiple of 8"), nullptr) << a.reason;

  p = problem(32768);
  std::strcpy(p.arch, "sm_90");
  std::strcpy(p.device_uuid, "GPU-1234");
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_INVALID_PROBLEM);
  EXPECT_NE(std::strstr(a.reason, "at most one"), nullptr) << a.reason;

  p = problem(32768);
  std::memset(p.arch, 's', sizeof p.arch);  // no NUL
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_INVALID_PROBLEM);
  EXPECT_NE(std::strstr(a.reason, "NUL-terminated"), nullptr) << a.reason;

  p = problem(32768);
  p.dtype = 7;
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_INVALID_PROBLEM);
  EXPECT_NE(std::strstr(a.reason, "dtype 7"), nullptr) << a.reason;

  EXPECT_EQ(peer.requests("dispatch"), 0);
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_EQ(s.invalid, 4u);
  EXPECT_EQ(s.misses, 0u);
}

TEST_F(Client, DaemonRejectionMarksOnlyTheNamedProblemInvalid) {
  TestPeer peer(socket, {});
  nsa_tune_client* c = open(200'000);
  std::vector<nsa_tune_problem> ps = {problem(32768, 8), problem(32768, nsa::api::testing::kRejectedBatch),
                                      problem(1024, 8)};
  std::vector<nsa_tune_answer> as(ps.size());
  EXPECT_EQ(nsa_tune_dispatch_many(c, ps.data(), ps.size(), as.data()), NSA_TUNE_FALLBACK);
  EXPECT_EQ(as[1].provenance, NSA_TUNE_PROVENANCE_INVALID_PROBLEM);
  EXPECT_NE(std::strstr(as[1].reason, "batch=999"), nullptr) << as[1].reason;
  EXPECT_EQ(as[0].provenance, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE);
  EXPECT_NE(std::strstr(as[0].reason, "problems[1]"), nullptr) << as[0].reason;
  EXPECT_EQ(as[2].provenance, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE);
  // The connection survived the error reply: the good problems alone are answered.
  std::vector<nsa_tune_problem> good = {ps[0], ps[2]};
  std::vector<nsa_tune_answer> gas(2);
  EXPECT_EQ(nsa_tune_dispatch_many(c, good.data(), good.size(), gas.data()), NSA_TUNE_OK);
  EXPECT_EQ(gas[0].provenance, NSA_TUNE_PROVENANCE_MEASURED);
  EXPECT_EQ(gas[1].provenance, NSA_TUNE_PROVENANCE_UNTUNED);
}

TEST_F(Client, DispatchManyKeepsOrderMixesHitsAndMissesAndSplitsAt256) {
  TestPeer peer(socket, {});
  nsa_tune_client* c = open(500'000);
  std::vector<nsa_tune_problem> ps;
  for (int i = 0; i < 300; ++i) ps.push_back(problem(1024 + 64 * i, 1 + i % 7));
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &ps[150], &a), NSA_TUNE_OK);  // memoized beforehand
  ASSERT_EQ(peer.requests("dispatch"), 1);

  std::vector<nsa_tune_answer> as(ps.size());
  ASSERT_EQ(nsa_tune_dispatch_many(c, ps.data(), ps.size(), as.data()), NSA_TUNE_OK) << as[0].reason;
  EXPECT_EQ(peer.requests("dispatch"), 3) << "299 misses: one request of 256 and one of 43";
  EXPECT_EQ(peer.problems_seen(), 1 + 299);
  for (std::size_t i = 0; i < ps.size(); ++i) {
    EXPECT_NE(std::strstr(as[i].reason, point_key(ps[i]).c_str()), nullptr) << i << ": " << as[i].reason;
    EXPECT_EQ(as[i].backend, ps[i].t_kv >= 8192 ? NSA_TUNE_BACKEND_SPARSE : NSA_TUNE_BACKEND_SDPA) << i;
  }
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 300u);
  EXPECT_EQ(nsa_tune_dispatch_many(c, ps.data(), 0, nullptr), NSA_TUNE_OK) << "count 0 is fine";
}

TEST_F(Client, DaemonRestartIsFollowedByReconnectAndANewEpoch) {
  auto peer = std::make_unique<TestPeer>(socket, TestPeer::Options{.epoch = 7});
  nsa_tune_client* c = open(200'000);
  ASSERT_TRUE(eventually([&] { return peer->requests("subscribe") == 1; }));
  // The peer has the subscribe request; the client has its subscription once it follows an
  // event. (Stopped before the client read the reply, the peer would leave the client never
  // subscribed, and the restart below would be its first subscription, not a reconnect: this
  // test failed that way about once in 40 runs on a loaded 2-core machine.)
  peer->push_epoch(8);
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(c) == 8; }));
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);

  peer->stop();
  // The memo still answers (its epoch has not changed), but a new problem cannot be answered.
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  nsa_tune_problem q = problem(16384);
  ASSERT_TRUE(eventually([&] { return nsa_tune_dispatch(c, &q, &a) == NSA_TUNE_FALLBACK; }));

  peer = std::make_unique<TestPeer>(socket, TestPeer::Options{.epoch = 100});
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(c) == 100; })) << "the background thread reconnected";
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_GE(s.reconnects, 1u);
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(peer->requests("dispatch"), 1) << "the new epoch dropped the memo";
  EXPECT_EQ(a.epoch, 100);
}

TEST_F(Client, RestartWithTheSameEpochStillDropsTheMemo) {
  // A daemon restarted on a new driver may come back with the same epoch; the client cannot know
  // what changed while it was away, so a re-subscription drops the memo anyway.
  auto peer = std::make_unique<TestPeer>(socket, TestPeer::Options{.epoch = 7});
  nsa_tune_client* c = open(200'000);
  ASSERT_TRUE(eventually([&] { return peer->requests("subscribe") == 1; }));
  // Subscribed once the client follows an event (see DaemonRestartIsFollowedByReconnectAndANewEpoch).
  peer->push_epoch(8);
  ASSERT_TRUE(eventually([&] { return nsa_tune_epoch(c) == 8; }));
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  peer->stop();
  peer = std::make_unique<TestPeer>(socket, TestPeer::Options{.epoch = 8});
  ASSERT_TRUE(eventually([&] {
    nsa_tune_stats s;
    nsa_tune_client_stats(c, &s);
    return s.reconnects >= 1;
  }));
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(peer->requests("dispatch"), 1) << "asked the restarted daemon, not the memo";
  EXPECT_EQ(nsa_tune_epoch(c), 8);
}

TEST_F(Client, ConcurrentDispatchFromManyThreadsGivesConsistentAnswers) {
  TestPeer peer(socket, {});
  nsa_tune_client* c = open(500'000);
  std::vector<nsa_tune_problem> ps;
  for (int i = 0; i < 20; ++i) ps.push_back(problem(2048 * (i + 1)));
  std::atomic<int> wrong{0}, not_ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 200; ++k) {
        const auto& p = ps[(k * 7 + t) % ps.size()];
        nsa_tune_answer a;
        if (nsa_tune_dispatch(c, &p, &a) != NSA_TUNE_OK) ++not_ok;
        else if (!std::strstr(a.reason, point_key(p).c_str())) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(not_ok.load(), 0);
  nsa_tune_stats s;
  nsa_tune_client_stats(c, &s);
  EXPECT_EQ(s.hits + s.misses, 1600u);
  EXPECT_GE(s.misses, 20u);
  EXPECT_LE(peer.requests("dispatch"), 20 * 8) << "at most one concurrent miss per thread per problem";
}

TEST_F(Client, MemoHitMakesNoRequestAndIsCheap) {
  TestPeer peer(socket, {});
  nsa_tune_client* c = open(200'000);
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  ASSERT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK);
  constexpr int kCalls = 200'000;
  auto t0 = Clock::now();
  for (int i = 0; i < kCalls; ++i) nsa_tune_dispatch(c, &p, &a);
  double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / kCalls;
  std::printf("memoized hit: %.0f ns per call\n", ns);
  EXPECT_EQ(peer.requests("dispatch"), 1);
  // A correctness bound with wide slack for a loaded machine: a syscall or a lock held across
  // I/O would blow well past it.
  EXPECT_LT(ns, 5000.0);
}

TEST_F(Client, SocketPathComesFromTheEnvironmentWhenNotGiven) {
  TestPeer peer(socket, {});
  ::setenv("NSA_TUNE_SOCKET", socket.c_str(), 1);
  nsa_tune_client_options o;
  nsa_tune_client_options_init(&o);
  o.budget_us = 200'000;
  nsa_tune_client* c = nsa_tune_client_open(&o);
  ::unsetenv("NSA_TUNE_SOCKET");
  ASSERT_NE(c, nullptr);
  clients.push_back(c);
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  EXPECT_EQ(nsa_tune_dispatch(c, &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(peer.requests("dispatch"), 1);
}

TEST_F(Client, OverlongSocketPathFallsBackSayingSo) {
  std::string long_path = "/tmp/" + std::string(200, 'p') + ".sock";
  nsa_tune_client_options o;
  nsa_tune_client_options_init(&o);
  o.socket_path = long_path.c_str();
  nsa_tune_client* c = nsa_tune_client_open(&o);
  ASSERT_NE(c, nullptr);
  clients.push_back(c);
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  int rc = nsa_tune_dispatch(c, &p, &a);
  expect_fallback(a, rc, "longer than 107 bytes");
}

TEST_F(Client, NullArgumentsAndVersions) {
  nsa_tune_client* c = open();
  nsa_tune_problem p = problem(32768);
  nsa_tune_answer a;
  EXPECT_EQ(nsa_tune_dispatch(nullptr, &p, &a), NSA_TUNE_EINVAL);
  EXPECT_EQ(nsa_tune_dispatch(c, nullptr, &a), NSA_TUNE_EINVAL);
  EXPECT_EQ(nsa_tune_dispatch(c, &p, nullptr), NSA_TUNE_EINVAL);
  EXPECT_EQ(nsa_tune_dispatch_many(c, nullptr, 1, &a), NSA_TUNE_EINVAL);
  EXPECT_EQ(nsa_tune_client_stats(c, nullptr), NSA_TUNE_EINVAL);
  EXPECT_EQ(nsa_tune_epoch(nullptr), -1);
  nsa_tune_client_close(nullptr);
  EXPECT_STREQ(nsa_tune_version(), NSA_TEST_PROJECT_VERSION);
  EXPECT_EQ(nsa_tune_protocol_version(), 1);
}

TEST_F(Client, CxxWrapperOwnsTheClientAndBuildsProblems) {
  TestPeer peer(socket, {});
  nsa::tune::Client client({.socket_path = socket, .budget_us = 200'000});
  auto p = nsa::tune::make_problem({.arch = "sm_89", .d_qk = 128, .d_v = 128, .h = 16, .h_kv = 4, .block = 64,
                                    .n = 16, .t_q = 1, .t_kv = 32768, .batch = 64});
  int status = -5;
  nsa::tune::Answer a = client.dispatch(p, &status);
  EXPECT_EQ(status, NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_PINNED);
  EXPECT_FALSE(nsa::tune::is_sparse(a));
  std::vector<nsa::tune::Problem> many = {p, nsa::tune::make_problem({.d_qk = 128, .d_v = 128, .h = 16, .h_kv = 4,
                                                                      .block = 64, .n = 16, .t_q = 1, .t_kv = 32768,
                                                                      .batch = 64})};
  auto answers = client.dispatch_many(many, &status);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_TRUE(nsa::tune::is_sparse(answers[1]));
  EXPECT_EQ(client.stats().hits, 1u);
  nsa::tune::Client moved = std::move(client);
  EXPECT_EQ(moved.epoch(), 7);
  auto too_long = nsa::tune::make_problem({.arch = "sm_90_this_is_far_too_long", .d_qk = 128, .d_v = 128, .h = 16,
                                           .h_kv = 4, .block = 64, .n = 16, .t_q = 1, .t_kv = 32768, .batch = 64});
  moved.dispatch(too_long, &status);
  EXPECT_EQ(status, NSA_TUNE_INVALID_PROBLEM);
}

}  // namespace

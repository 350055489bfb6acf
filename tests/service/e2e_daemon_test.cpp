// The real nsa-tuned, started on a temp socket and state dir and driven over raw sockets the
// way clients (and broken clients) drive it. Every case starts its own daemon.

#include <gtest/gtest.h>

#include <sqlite3.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <thread>

#include "nsa/api/protocol.hpp"
#include "nsa/cache/verdict_store.hpp"
#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

class DaemonTest : public ::testing::Test {
 protected:
  TempDir dir;
};

/// Pings on `client` and checks the reply came back ok within `limit`.
::testing::AssertionResult pings(SyncClient& client, std::chrono::milliseconds limit = 500ms) {
  const auto start = std::chrono::steady_clock::now();
  auto r = client.request(json{{"op", "ping"}});
  const auto took = std::chrono::steady_clock::now() - start;
  if (!r) return ::testing::AssertionFailure() << "ping failed: " << r.error().message;
  if (!r->value("ok", false)) return ::testing::AssertionFailure() << "ping got " << r->dump();
  if (took > limit)
    return ::testing::AssertionFailure() << "ping took "
                                         << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  return ::testing::AssertionSuccess();
}

TEST_F(DaemonTest, HelloAndPingAnswerWithVersionsAndEpoch) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto raw = d.raw_client();
  auto hello = raw.request(json{{"op", "hello"}, {"id", "h"}, {"protocol", api::kProtocolVersion}, {"client", "test"}});
  ASSERT_TRUE(hello) << hello.error().message;
  EXPECT_TRUE((*hello)["ok"].get<bool>()) << hello->dump();
  EXPECT_EQ((*hello)["id"], "h");
  EXPECT_EQ((*hello)["protocol"], api::kProtocolVersion);
  EXPECT_TRUE((*hello)["daemon"].is_string());
  EXPECT_GE((*hello)["epoch"].get<std::int64_t>(), 1);
  auto ping = raw.request(json{{"op", "ping"}, {"id", 99}});
  ASSERT_TRUE(ping);
  EXPECT_EQ((*ping)["id"], 99);
  EXPECT_EQ((*ping)["epoch"], (*hello)["epoch"]);
}

TEST_F(DaemonTest, QueryForSm89IsPinnedSdpaWithTheAdrReason) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto r = c.request(dispatch_request(json::array({problem({{"arch", "sm_89"}})})));
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE((*r)["ok"].get<bool>()) << r->dump();
  const json& a = (*r)["answers"][0];
  EXPECT_EQ(a["backend"], "sdpa");
  EXPECT_EQ(a["provenance"], "pinned");
  EXPECT_EQ(a["arch"], "sm_89");
  EXPECT_NE(a["reason"].get<std::string>().find("M4-02"), std::string::npos) << a.dump();
  EXPECT_TRUE(a["variant"].is_null());
  EXPECT_EQ((*r)["epoch"], c.hello_reply()["epoch"]);
}

TEST_F(DaemonTest, DeviceQueriesOnThisHostAreNoDeviceWhenTheDeviceIsMissing) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto status = c.request(json{{"op", "status"}});
  ASSERT_TRUE(status);
  auto r = c.request(dispatch_request(json::array({problem({{"device", 1023}}), problem()})));
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE((*r)["ok"].get<bool>()) << r->dump();
  EXPECT_EQ((*r)["answers"][0]["provenance"], "no_device");
  EXPECT_EQ((*r)["answers"][0]["backend"], "sdpa");
  if ((*status)["devices"].empty()) {
    // This host has no GPU: device 0 (the default target) is missing too, and the reason says why.
    EXPECT_EQ((*r)["answers"][1]["provenance"], "no_device");
    EXPECT_FALSE((*status)["driver"]["error"].is_null());
    EXPECT_EQ((*r)["answers"][1]["reason"].get<std::string>().find("no usable GPU"), 0u)
        << (*r)["answers"][1].dump();
  } else {
    EXPECT_NE((*r)["answers"][1]["provenance"], "no_device");
  }
}

TEST_F(DaemonTest, UntunedDemandReachesTheStoreAfterAFlush) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  json p = problem({{"arch", "sm_80"}});
  for (int i = 0; i < 3; ++i) {
    auto r = c.request(dispatch_request(json::array({p})));
    ASSERT_TRUE(r);
    ASSERT_EQ((*r)["answers"][0]["provenance"], "untuned") << r->dump();
  }
  // Flushed every 100 ms by the test daemon; poll the file the way an operator's tool would.
  std::vector<cache::Demand> demand;
  for (int i = 0; i < 100 && demand.empty(); ++i) {
    std::this_thread::sleep_for(20ms);
    auto store = cache::VerdictStore::open_read_only(d.store_path());
    ASSERT_TRUE(store) << store.error().message;
    demand = store->demand();
  }
  ASSERT_EQ(demand.size(), 1u);
  EXPECT_EQ(demand[0].arch, "sm_80");
  EXPECT_EQ(demand[0].family, "bf16.dqk128.dv128.h16.blk64.n16.decode");
  EXPECT_EQ(demand[0].point, "b64.hkv4.tq1.tkv32768");
  EXPECT_EQ(demand[0].count, 3);
}

struct BadFrame {
  const char* what;
  std::string bytes;  // without the '\n'
  const char* code;
  json id = nullptr;
};

TEST_F(DaemonTest, MalformedFramesEachGetTheirErrorWhileAnotherClientKeepsBeingServed) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto bad = d.client();
  auto good = d.client();
  json many = json::array();
  for (int i = 0; i < 257; ++i) many.push_back(problem({{"arch", "sm_90"}}));
  json no_n = problem();
  no_n.erase("n");
  const std::vector<BadFrame> cases = {
      {"not JSON", "this is not json", "not_json"},
      {"binary garbage", std::string("\x00\xff\xfe\x01garbage\x80\x7f", 13), "not_json"},
      {"invalid UTF-8 in a string", "{\"op\":\"ping\",\"id\":\"\xff\xfe\"}", "not_json"},
      {"an array", "[1,2,3]", "bad_request"},
      {"a bare string", "\"ping\"", "bad_request"},
      {"an object id", R"({"op":"ping","id":{"x":1}})", "bad_request"},
      {"no op", R"({"id":3})", "missing_field", 3},
      {"op not a string", R"({"op":5,"id":4})", "bad_type", 4},
      {"unknown op", R"({"op":"frobnicate","id":"u"})", "unknown_op", "u"},
      {"dispatch without problems", R"({"op":"dispatch","id":6})", "missing_field", 6},
      {"problems not an array", R"({"op":"dispatch","id":7,"problems":"all"})", "bad_type", 7},
      {"no problems", R"({"op":"dispatch","id":8,"problems":[]})", "bad_request", 8},
      {"257 problems", json{{"op", "dispatch"}, {"id", 9}, {"problems", many}}.dump(), "bad_request", 9},
      {"a string where an integer goes", dispatch_request(json::array({problem({{"d_qk", "128"}})})).dump(), "bad_type"},
      {"a float where an integer goes", dispatch_request(json::array({problem({{"t_kv", 1.5}})})).dump(), "bad_type"},
      {"a missing problem field", dispatch_request(json::array({no_n})).dump(), "missing_field"},
      {"an unknown problem field", dispatch_request(json::array({problem({{"d_k", 128}})})).dump(), "bad_request"},
      {"an impossible head dim", dispatch_request(json::array({problem({{"d_qk", 100}})})).dump(), "bad_shape"},
      {"more queries than keys", dispatch_request(json::array({problem({{"t_q", 10}, {"t_kv", 5}})})).dump(), "bad_shape"},
      {"two targets", dispatch_request(json::array({problem({{"arch", "sm_90"}, {"device", 0}})})).dump(), "bad_request"},
      {"a problem that is not an object", R"({"op":"dispatch","problems":[7]})", "bad_request"},
      {"pin without arch", R"({"op":"pin","id":10,"reason":"x"})", "missing_field", 10},
      {"pin of a non-arch", R"({"op":"pin","id":11,"arch":"gfx90a","reason":"x"})", "bad_request", 11},
      {"pin to sparse", R"({"op":"pin","id":12,"arch":"sm_80","reason":"x","backend":"sparse"})", "bad_request", 12},
      {"unpin of nothing", R"({"op":"unpin","id":13,"arch":"sm_75"})", "not_found", 13},
      {"retune with a bad scope", R"({"op":"retune","id":14,"scope":"everything"})", "bad_request", 14},
      {"retune with --no-tune", R"({"op":"retune","id":15})", "tuning_disabled", 15},
      {"hello with a string protocol", R"({"op":"hello","id":16,"protocol":"1"})", "bad_type", 16},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    ASSERT_TRUE(bad.send_raw(c.bytes + "\n"));
    auto reply = bad.read_json();
    ASSERT_TRUE(reply) << reply.error().message;
    EXPECT_EQ(error_code(*reply), c.code) << reply->dump();
    EXPECT_EQ((*reply)["id"], c.id) << reply->dump();
    EXPECT_FALSE((*reply)["error"]["message"].get<std::string>().empty());
    EXPECT_TRUE(pings(good)) << "the other client was not served";
  }
  // The bad client's connection survived all of it.
  EXPECT_TRUE(pings(bad));
}

TEST_F(DaemonTest, ADispatchErrorNamesTheProblemsIndexAndAnswersNone) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto r = c.request(dispatch_request(json::array({problem(), problem({{"d_qk", 100}})})));
  ASSERT_TRUE(r);
  EXPECT_EQ(error_code(*r), "bad_shape");
  EXPECT_EQ((*r)["error"]["message"].get<std::string>().rfind("problems[1]: D_qk=100", 0), 0u) << r->dump();
  EXPECT_FALSE(r->contains("answers"));
}

TEST_F(DaemonTest, OversizedFrameGetsFrameTooLargeAndTheConnectionSurvives) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  const std::string frame = R"({"op":"ping","id":1,"pad":")" + std::string(70 * 1024, 'x') + "\"}\n";
  ASSERT_TRUE(c.send_raw(frame));
  auto reply = c.read_json();
  ASSERT_TRUE(reply) << reply.error().message;
  EXPECT_EQ(error_code(*reply), "frame_too_large");
  EXPECT_TRUE((*reply)["id"].is_null());
  EXPECT_TRUE(pings(c));
}

TEST_F(DaemonTest, RequestsBeforeHelloGetHelloRequiredAndTheConnectionStaysOpen) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto raw = d.raw_client();
  auto r = raw.request(dispatch_request(json::array({problem({{"arch", "sm_89"}})})));
  ASSERT_TRUE(r);
  EXPECT_EQ(error_code(*r), "hello_required");
  auto missing = raw.request(json{{"op", "hello"}});
  ASSERT_TRUE(missing);
  EXPECT_EQ(error_code(*missing), "missing_field") << "a hello without protocol does not count";
  auto still = raw.request(json{{"op", "ping"}});
  ASSERT_TRUE(still);
  EXPECT_EQ(error_code(*still), "hello_required");
  auto hello = raw.request(json{{"op", "hello"}, {"protocol", 1}});
  ASSERT_TRUE(hello);
  EXPECT_TRUE((*hello)["ok"].get<bool>());
  EXPECT_TRUE(pings(raw));
}

TEST_F(DaemonTest, HelloWithAnotherProtocolGetsVersionMismatchAndIsClosed) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto raw = d.raw_client();
  // A ping pipelined behind the bad hello is never answered: the connection ends with the reply.
  ASSERT_TRUE(raw.send_raw("{\"op\":\"hello\",\"id\":1,\"protocol\":99}\n{\"op\":\"ping\",\"id\":2}\n"));
  auto r = raw.read_json();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(error_code(*r), "version_mismatch");
  EXPECT_EQ((*r)["protocol"], 1);
  EXPECT_TRUE((*r)["daemon"].is_string());
  EXPECT_NE((*r)["error"]["message"].get<std::string>().find("99"), std::string::npos);
  EXPECT_TRUE(raw.closed_by_peer(2000ms));
  auto other = d.client();
  EXPECT_TRUE(pings(other));
}

TEST_F(DaemonTest, HalfAFrameThenSilenceGetsTimeoutAndCloseWhileOthersAreServed) {
  Daemon d(dir.path());  // frames must complete within 1000 ms
  ASSERT_TRUE(d.start());
  auto staller = d.client();
  auto good = d.client();
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(staller.send_raw("{\"op\":\"ping\",\"id\":"));
  int served = 0;
  while (std::chrono::steady_clock::now() - start < 1500ms) {
    ASSERT_TRUE(pings(good, 200ms));
    ++served;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_GT(served, 20);
  staller.set_timeout(2000ms);
  auto r = staller.read_json();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(error_code(*r), "timeout");
  EXPECT_TRUE((*r)["id"].is_null());
  EXPECT_TRUE(staller.closed_by_peer(2000ms));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 1000ms);
  EXPECT_LT(took, 4000ms);
}

TEST_F(DaemonTest, AnIdleConnectionBetweenFramesIsNeverTimedOut) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  std::this_thread::sleep_for(1600ms);  // past the 1000 ms frame timeout
  EXPECT_TRUE(pings(c));
}

TEST_F(DaemonTest, PipelinedRequestsAreAnsweredInOrder) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  std::string burst;
  for (int i = 1; i <= 300; ++i) {
    json request = i % 3 == 0   ? json{{"op", "nope"}}
                   : i % 3 == 1 ? json{{"op", "ping"}}
                                : dispatch_request(json::array({problem({{"arch", "sm_89"}})}));
    request["id"] = i;
    burst += api::encode_frame(request);
  }
  ASSERT_TRUE(c.send_raw(burst));
  for (int i = 1; i <= 300; ++i) {
    auto r = c.read_json();
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ((*r)["id"], i);
    EXPECT_EQ(error_code(*r), i % 3 == 0 ? "unknown_op" : "");
  }
}

TEST_F(DaemonTest, AClientThatFloodsWithoutReadingBlocksOnlyItselfAndIsDropped) {
  Daemon d(dir.path());  // replies left unwritable for 1000 ms end the connection
  ASSERT_TRUE(d.start());
  auto flooder = d.client();
  auto good = d.client();
  std::atomic<bool> done{false}, dropped{false};
  std::atomic<std::size_t> sent{0};
  std::thread t([&] {
    const std::string frame = api::encode_frame(dispatch_request(json::array({problem({{"arch", "sm_90"}})})));
    std::string chunk;
    for (int i = 0; i < 200; ++i) chunk += frame;
    flooder.set_timeout(5000ms);  // longer than the daemon's patience: the failure must be its close
    while (!done) {
      if (!flooder.send_raw(chunk)) {
        dropped = true;
        break;
      }
      sent += chunk.size();
    }
  });
  int served = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < 2000ms) {
    ASSERT_TRUE(pings(good, 250ms));
    ++served;
  }
  done = true;
  t.join();
  EXPECT_GT(sent.load(), 256u << 10) << "the flood should have filled the buffers";
  EXPECT_TRUE(dropped) << "a client that never reads its replies is closed after the frame timeout";
  EXPECT_GT(served, 10);
  EXPECT_FALSE(d.wait(0ms)) << "the daemon must still run";
  EXPECT_NE(d.log().find("has not read its replies"), std::string::npos);
}

TEST_F(DaemonTest, ConnectionsOverTheCapAreRefusedWithAnErrorFrame) {
  Daemon d(dir.path(), {"--max-connections", "3"});
  ASSERT_TRUE(d.start());
  std::this_thread::sleep_for(100ms);  // let the start probe's connection close
  std::vector<SyncClient> held;
  for (int i = 0; i < 3; ++i) held.push_back(d.client());
  auto over = d.raw_client();
  auto r = over.read_json();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(error_code(*r), "refused");
  EXPECT_NE((*r)["error"]["message"].get<std::string>().find("limit of 3"), std::string::npos);
  EXPECT_TRUE(over.closed_by_peer(1000ms));
  for (auto& c : held) EXPECT_TRUE(pings(c));
  held.pop_back();
  std::this_thread::sleep_for(100ms);
  auto again = d.client();
  EXPECT_TRUE(pings(again));
  auto status = again.request(json{{"op", "status"}});
  ASSERT_TRUE(status);
  EXPECT_EQ((*status)["connections"]["refused"], 1);
}

TEST_F(DaemonTest, SubscribersGetAnEventForEveryEpochChange) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto sub = d.client();
  auto r = sub.request(json{{"op", "subscribe"}});
  ASSERT_TRUE(r);
  const auto epoch = (*r)["epoch"].get<std::int64_t>();
  auto admin = d.client();
  auto pin = admin.request(json{{"op", "pin"}, {"arch", "sm_80"}, {"reason", "test pin"}});
  ASSERT_TRUE(pin);
  ASSERT_TRUE((*pin)["ok"].get<bool>()) << pin->dump();
  EXPECT_EQ((*pin)["epoch"], epoch + 1);
  auto event = sub.read_json();
  ASSERT_TRUE(event) << event.error().message;
  EXPECT_EQ((*event)["event"], "epoch");
  EXPECT_EQ((*event)["epoch"], epoch + 1);
  // The pin is in force for every client at once.
  auto a = admin.request(dispatch_request(json::array({problem({{"arch", "sm_80"}})})));
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)["answers"][0]["provenance"], "pinned");
  EXPECT_EQ((*a)["epoch"], epoch + 1);
  ASSERT_TRUE(admin.request(json{{"op", "unpin"}, {"arch", "sm_80"}}));
  auto second = sub.read_json();
  ASSERT_TRUE(second);
  EXPECT_EQ((*second)["epoch"], epoch + 2);
  // A subscribed connection still answers requests; request() skips events.
  EXPECT_TRUE(pings(sub));
}

TEST_F(DaemonTest, UnpinOfTheSeededSm89PinIsRefusedWithItsReason) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto r = c.request(json{{"op", "unpin"}, {"arch", "sm_89"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(error_code(*r), "refused");
  EXPECT_NE((*r)["error"]["message"].get<std::string>().find("M4-02"), std::string::npos) << r->dump();
  auto replace = c.request(json{{"op", "pin"}, {"arch", "sm_89"}, {"reason", "mine now"}});
  ASSERT_TRUE(replace);
  EXPECT_EQ(error_code(*replace), "refused");
}

TEST_F(DaemonTest, StatusReportsHostStoreConnectionsAndTuning) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto s = c.request(json{{"op", "status"}});
  ASSERT_TRUE(s);
  ASSERT_TRUE((*s)["ok"].get<bool>());
  EXPECT_EQ((*s)["pid"], d.pid());
  EXPECT_EQ((*s)["socket"], d.socket().string());
  EXPECT_EQ((*s)["state_dir"], d.state_dir().string());
  EXPECT_EQ((*s)["tuning_enabled"], false);
  EXPECT_EQ((*s)["tuning"]["state"], "off") << s->dump();
  EXPECT_EQ((*s)["tuning"]["reason"], "disabled (--no-tune, set by flag)");
  EXPECT_EQ((*s)["tuning_note"], "off: disabled (--no-tune, set by flag)");
  EXPECT_TRUE((*s)["recent_retunes"].is_array());
  EXPECT_EQ((*s)["store"]["path"], d.store_path().string());
  EXPECT_GE((*s)["store"]["schema_version"].get<int>(), 1);
  EXPECT_GE((*s)["connections"]["open"].get<int>(), 1);
  EXPECT_GE((*s)["requests"]["served"].get<int>(), 2);
  EXPECT_EQ((*s)["counts"]["pinned_archs"], json::array({"sm_89"}));
  EXPECT_TRUE((*s)["driver"].contains("loaded"));
}

TEST_F(DaemonTest, ASecondDaemonOnALiveSocketOrStateDirRefusesToStart) {
  Daemon first(dir.path());
  ASSERT_TRUE(first.start());
  // Same socket, another state dir.
  Daemon same_socket(dir.path(), {}, "second");
  auto args = same_socket.argv();
  args[4] = first.socket().string();
  ProcessResult r = run_process(args);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(first.socket().string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("refusing to start"), std::string::npos) << r.err;
  // Same state dir, another socket.
  auto args2 = same_socket.argv();
  args2[2] = first.state_dir().string();
  ProcessResult r2 = run_process(args2);
  EXPECT_EQ(r2.code, 1) << r2.err;
  EXPECT_NE(r2.err.find("one daemon per state dir"), std::string::npos) << r2.err;
  // The first one is unharmed.
  auto c = first.client();
  EXPECT_TRUE(pings(c));
}

TEST_F(DaemonTest, AStaleSocketFromADeadDaemonIsReplaced) {
  Daemon d(dir.path());
  {
    // A socket file nobody listens on, as a daemon killed with -9 leaves it.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, d.socket().c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
    ASSERT_TRUE(fs::exists(d.socket()));
  }
  ASSERT_TRUE(d.start());
  EXPECT_NE(d.log().find("replaced the stale socket"), std::string::npos) << d.log();
  auto c = d.client();
  EXPECT_TRUE(pings(c));
  struct stat st {};
  ASSERT_EQ(::stat(d.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(DaemonTest, AFileInTheSocketsPlaceIsLeftAloneAndTheDaemonRefuses) {
  Daemon d(dir.path());
  std::ofstream(d.socket()) << "precious";
  ProcessResult r = run_process(d.argv());
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("is in the way"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(d.socket()), "precious");
}

TEST_F(DaemonTest, ACorruptStoreIsOneClearLineAndExitCode2) {
  Daemon d(dir.path());
  fs::create_directories(d.state_dir());
  std::ofstream(d.store_path()) << std::string(8192, 'z');
  ProcessResult r = run_process(d.argv());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("cannot open the store " + d.store_path().string()), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.socket())) << "nothing is served from a broken store";
  EXPECT_EQ(read_file(d.store_path()), std::string(8192, 'z')) << "the file is left for the operator";
}

TEST_F(DaemonTest, BadConfigurationExits64WithTheReason) {
  Daemon d(dir.path(), {"--admin-group", "no-such-group-nsa"});
  ProcessResult r = run_process(d.argv());
  EXPECT_EQ(r.code, 64) << r.err;
  EXPECT_NE(r.err.find("no-such-group-nsa"), std::string::npos) << r.err;
  ProcessResult flag = run_process({daemon_binary().string(), "--bogus"});
  EXPECT_EQ(flag.code, 64);
  EXPECT_NE(flag.err.find("--help"), std::string::npos);
}

TEST_F(DaemonTest, SigtermFlushesDemandRemovesTheSocketAndExitsZero) {
  Daemon d(dir.path(), {"--demand-flush-ms", "600000"});  // only the shutdown flush can write it
  ASSERT_TRUE(d.start());
  auto idle = d.client();
  auto c = d.client();
  auto r = c.request(dispatch_request(json::array({problem({{"arch", "sm_86"}})})));
  ASSERT_TRUE(r);
  ASSERT_EQ((*r)["answers"][0]["provenance"], "untuned");
  EXPECT_EQ(d.stop(), 0) << d.log();
  EXPECT_FALSE(fs::exists(d.socket()));
  EXPECT_TRUE(idle.closed_by_peer(1000ms));
  EXPECT_NE(d.log().find("SIGTERM received"), std::string::npos);
  auto store = cache::VerdictStore::open_read_only(d.store_path());
  ASSERT_TRUE(store) << store.error().message;
  auto demand = store->demand();
  ASSERT_EQ(demand.size(), 1u);
  EXPECT_EQ(demand[0].arch, "sm_86");
}

TEST_F(DaemonTest, SigintWithAClientThatNeverReadsStillExitsZeroWithinTheGrace) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto flooder = d.client();
  flooder.set_timeout(200ms);
  const std::string frame = api::encode_frame(json{{"op", "status"}});
  std::string chunk;
  for (int i = 0; i < 100; ++i) chunk += frame;
  for (int i = 0; i < 50; ++i)
    if (!flooder.send_raw(chunk)) break;
  const auto start = std::chrono::steady_clock::now();
  ::kill(d.pid(), SIGINT);
  EXPECT_EQ(d.wait(10s), 0) << d.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 6s);
  EXPECT_FALSE(fs::exists(d.socket()));
}

TEST_F(DaemonTest, ASecondSignalClosesEveryConnectionAtOnce) {
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  auto flooder = d.client();
  flooder.set_timeout(200ms);
  const std::string frame = api::encode_frame(json{{"op", "status"}});
  std::string chunk;
  for (int i = 0; i < 100; ++i) chunk += frame;
  for (int i = 0; i < 50; ++i)
    if (!flooder.send_raw(chunk)) break;
  const auto start = std::chrono::steady_clock::now();
  ::kill(d.pid(), SIGTERM);
  std::this_thread::sleep_for(100ms);
  ::kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.wait(5s), 0) << d.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s) << "the second signal should not wait out the grace";
  EXPECT_NE(d.log().find("second SIGTERM"), std::string::npos) << d.log();
}

}  // namespace
}  // namespace nsa::service::testing

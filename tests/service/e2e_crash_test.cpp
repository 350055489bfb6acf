// kill -9 of the daemon in the middle of writes: the store must pass PRAGMA integrity_check,
// keep every write the daemon acknowledged (an ok reply means committed), and a restarted
// daemon must serve exactly that state.

#include <gtest/gtest.h>

#include <sqlite3.h>

#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "nsa/cache/verdict_store.hpp"
#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

std::string integrity_check(const fs::path& db) {
  sqlite3* h = nullptr;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
    std::string m = h ? sqlite3_errmsg(h) : "open failed";
    sqlite3_close(h);
    return m;
  }
  std::string result;
  sqlite3_exec(
      h, "PRAGMA integrity_check",
      [](void* out, int, char** values, char**) {
        *static_cast<std::string*>(out) += values[0] ? values[0] : "null";
        return 0;
      },
      &result, nullptr);
  sqlite3_close(h);
  return result;
}

TEST(Crash, KillDashNineDuringPinWritesLosesNoAcknowledgedPinAndRestartServesTheSameState) {
  TempDir dir;
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  // The writer cycles through 900 archs, so a write is an insert or a replacement; for each arch
  // the store must hold the last acknowledged reason or a later one (a write whose reply the kill
  // swallowed may have committed too).
  std::mutex m;
  std::map<std::string, int> acknowledged;  // arch -> last acknowledged write number
  int writes = 0;
  std::string stop_reason;
  std::thread writer([&] {
    auto c = d.client(2000ms);
    for (int i = 0; i < 1'000'000; ++i) {
      const std::string arch = "sm_" + std::to_string(100 + i % 900);
      auto r = c.request(json{{"op", "pin"}, {"arch", arch}, {"reason", "crash test pin #" + std::to_string(i)}});
      std::lock_guard lock(m);
      if (!r || !r->value("ok", false)) {
        stop_reason = r ? r->dump() : r.error().message;
        return;
      }
      acknowledged[arch] = i;
      writes = i + 1;
    }
  });
  std::random_device rd;
  std::this_thread::sleep_for(std::chrono::milliseconds(150 + rd() % 250));
  d.kill9();
  writer.join();
  ASSERT_GE(writes, 3) << "too few writes before the kill to prove anything: " << stop_reason;
  EXPECT_LT(writes, 1'000'000) << "the kill came after all writes; it proves nothing";
  ASSERT_TRUE(fs::exists(d.socket())) << "a killed daemon leaves its socket behind";

  EXPECT_EQ(integrity_check(d.store_path()), "ok");
  auto write_number = [](const std::string& reason) {
    auto at = reason.find('#');
    return at == std::string::npos ? -1 : std::stoi(reason.substr(at + 1));
  };
  {
    auto store = cache::VerdictStore::open_read_only(d.store_path());
    ASSERT_TRUE(store) << store.error().message;
    std::map<std::string, std::string> present;
    for (const auto& p : store->pins()) present[p.arch] = p.reason;
    for (const auto& [arch, n] : acknowledged) {
      ASSERT_TRUE(present.count(arch)) << arch << " was acknowledged but lost";
      EXPECT_GE(write_number(present[arch]), n) << arch << ": acknowledged write #" << n << " lost";
    }
    EXPECT_TRUE(present.count("sm_89"));
  }

  // The restart replaces the stale socket and serves the same pins.
  ASSERT_TRUE(d.start()) << d.log();
  auto c = d.client();
  auto pins = c.request(json{{"op", "pins"}});
  ASSERT_TRUE(pins);
  std::map<std::string, std::string> served;
  for (const auto& p : (*pins)["pins"]) served[p["arch"].get<std::string>()] = p["reason"].get<std::string>();
  for (const auto& [arch, n] : acknowledged) EXPECT_GE(write_number(served[arch]), n) << arch;
  auto answer = c.request(dispatch_request(json::array({problem({{"arch", acknowledged.begin()->first}})})));
  ASSERT_TRUE(answer);
  EXPECT_EQ((*answer)["answers"][0]["provenance"], "pinned");
  EXPECT_EQ(d.stop(), 0);
}

}  // namespace
}  // namespace nsa::service::testing

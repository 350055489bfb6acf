// What the store promises across processes: a writer killed with SIGKILL loses no committed row
// and leaves a file that passes PRAGMA integrity_check; readers read while the writer writes.
// Writers here are real child processes (fork), the way nsa-tuned and nsa-tunectl share a file.

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "nsa/cache/verdict_store.hpp"
#include "store_test_support.hpp"

namespace nsa::cache {
namespace {

using testing::h100_class;
using testing::RawDb;
using testing::sample_verdict;
using StoreDurability = testing::StoreTest;

/// A forked child, killed and reaped on destruction if the test did not reap it, so a failing
/// assertion never leaves a writer running.
class Child {
 public:
  template <class Body>
  explicit Child(Body&& body) {
    m_pid = fork();
    if (m_pid == 0) {
      int code = 1;
      try {
        code = body();
      } catch (...) {
        code = 99;
      }
      _exit(code);  // never return into the test runner in the child
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (m_pid > 0) {
      kill(m_pid, SIGKILL);
      waitpid(m_pid, nullptr, 0);
    }
  }
  pid_t pid() const { return m_pid; }
  /// Waits for the child; returns the raw wait status.
  int wait() {
    int status = 0;
    waitpid(m_pid, &status, 0);
    m_pid = -1;
    return status;
  }
  /// Non-blocking: true once the child has exited (status in `status`).
  bool exited(int& status) {
    pid_t r = waitpid(m_pid, &status, WNOHANG);
    if (r == m_pid) {
      m_pid = -1;
      return true;
    }
    return false;
  }

 private:
  pid_t m_pid = -1;
};

/// Reads int64 acks from `fd` until `want` arrived (or EOF / timeout); returns them.
std::vector<std::int64_t> read_acks(int fd, std::size_t want, std::chrono::seconds timeout) {
  std::vector<std::int64_t> acks;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (acks.size() < want && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    std::int64_t value = 0;
    ssize_t n = read(fd, &value, sizeof value);
    if (n == 0) break;  // writer gone
    if (n == static_cast<ssize_t>(sizeof value)) acks.push_back(value);
  }
  return acks;
}

TEST_F(StoreDurability, KillDashNineLosesNoCommittedRowAndLeavesAnIntactFile) {
  { open_store(); }
  std::set<std::int64_t> acked;
  int next_point = 0;
  // Three writers in a row, each killed at an arbitrary moment, usually mid-transaction.
  for (int round = 0; round < 3; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    int first_point = next_point;
    Child writer([&] {
      close(fds[0]);
      auto store = VerdictStore::open(db_path);
      if (!store) return 2;
      CompiledKernel k;
      k.arch = "sm_90";
      k.cubin.assign(64 * 1024, 0xab);
      for (int i = first_point;; ++i) {
        auto id = store->put_verdict(sample_verdict(h100_class(), "b" + std::to_string(i) + ".hkv4.tq1.tkv8192"));
        if (!id) return 3;
        k.variant_key = "v" + std::to_string(i);
        if (!store->put_kernel(k)) return 4;
        // Acknowledge only after both transactions committed.
        std::int64_t ack = *id;
        if (write(fds[1], &ack, sizeof ack) != static_cast<ssize_t>(sizeof ack)) return 5;
      }
    });
    close(fds[1]);
    auto acks = read_acks(fds[0], 150 + 37 * round, std::chrono::seconds(30));
    ASSERT_GE(acks.size(), 100u) << "the writer did not get going";
    kill(writer.pid(), SIGKILL);
    int status = writer.wait();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer exited on its own with status " << status;
    // Acks already in the pipe were committed before the kill.
    auto rest = read_acks(fds[0], SIZE_MAX, std::chrono::seconds(1));
    close(fds[0]);
    acked.insert(acks.begin(), acks.end());
    acked.insert(rest.begin(), rest.end());
    next_point += 100000;
  }

  {
    RawDb raw(db_path);
    EXPECT_EQ(raw.scalar("PRAGMA integrity_check"), "ok");
    auto ids = raw.column("SELECT id FROM verdicts");
    std::set<std::int64_t> stored;
    for (const auto& id : ids) stored.insert(std::stoll(id));
    for (std::int64_t id : acked) EXPECT_TRUE(stored.count(id)) << "committed verdict " << id << " was lost";
    EXPECT_EQ(raw.scalar("PRAGMA foreign_key_check"), "");
  }
  auto store = VerdictStore::open(db_path);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_GE(store->latest_verdicts(std::nullopt).size(), acked.size());
  EXPECT_GE(store->kernel_count(), static_cast<std::int64_t>(acked.size()));
}

TEST_F(StoreDurability, ReaderReadsWhileAWriterProcessWrites) {
  { open_store(); }
  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_TRUE(reader) << reader.error().message;
  std::int64_t epoch0 = reader->epoch();

  constexpr int kVerdicts = 400;
  Child writer([&] {
    auto store = VerdictStore::open(db_path);
    if (!store) return 2;
    for (int i = 0; i < kVerdicts; ++i) {
      if (!store->put_verdict(sample_verdict(h100_class(), "b" + std::to_string(i) + ".hkv4.tq1.tkv8192")))
        return 3;
      if (!store->record_demand({{"sm_90", "bf16.dqk64.dv64.h8.blk32.n8.decode", "p", 1, 0, 0}})) return 4;
    }
    return 0;
  });

  std::size_t last_count = 0;
  std::int64_t last_epoch = epoch0;
  int reads = 0;
  int status = 0;
  bool saw_partial = false;
  while (!writer.exited(status)) {
    // Reads must never fail with "database is locked" while the writer commits.
    auto verdicts = reader->latest_verdicts(std::nullopt);
    std::int64_t epoch = reader->epoch();
    EXPECT_GE(verdicts.size(), last_count);
    EXPECT_GE(epoch, last_epoch);
    if (!verdicts.empty() && verdicts.size() < kVerdicts) saw_partial = true;
    last_count = verdicts.size();
    last_epoch = epoch;
    ++reads;
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "writer status " << status;
  EXPECT_GT(reads, 1);
  EXPECT_TRUE(saw_partial) << "the reader never observed the writer mid-way (" << reads << " reads)";
  EXPECT_EQ(reader->latest_verdicts(std::nullopt).size(), static_cast<std::size_t>(kVerdicts));
  EXPECT_EQ(reader->epoch(), epoch0 + kVerdicts);
  ASSERT_EQ(reader->demand().size(), 1u);
  EXPECT_EQ(reader->demand()[0].count, kVerdicts);
}

TEST_F(StoreDurability, AnOpenReadSnapshotDoesNotBlockTheWriter) {
  auto writer = open_store();
  ASSERT_TRUE(writer.put_verdict(sample_verdict(h100_class(), "b0.hkv4.tq1.tkv8192")));

  RawDb snapshot(db_path, SQLITE_OPEN_READONLY);
  snapshot.exec("BEGIN");
  EXPECT_EQ(snapshot.scalar("SELECT count(*) FROM verdicts"), "1");

  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(writer.put_verdict(sample_verdict(h100_class(), "b1.hkv4.tq1.tkv8192")));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1))
      << "the writer waited for the reader";
  EXPECT_EQ(snapshot.scalar("SELECT count(*) FROM verdicts"), "1") << "the reader keeps its snapshot";
  snapshot.exec("COMMIT");
  EXPECT_EQ(snapshot.scalar("SELECT count(*) FROM verdicts"), "2");
}

TEST_F(StoreDurability, TwoProcessesOpeningAFreshStoreAtOnceBothSucceed) {
  // Both race through creation and migration; BEGIN IMMEDIATE plus the re-read of
  // user_version make exactly one of them migrate, and the WAL switch retries while another
  // creator holds the write lock (SQLite answers that one with SQLITE_BUSY at once).
  std::vector<std::unique_ptr<Child>> openers;
  for (int i = 0; i < 4; ++i)
    openers.push_back(std::make_unique<Child>([&] {
      auto store = VerdictStore::open(db_path);
      if (!store) {
        // The parent only sees the exit status: say why on stderr, which the test log keeps.
        std::fprintf(stderr, "child %d: VerdictStore::open: [%s] %s\n", static_cast<int>(getpid()),
                     store.error().code.c_str(), store.error().message.c_str());
        return 2;
      }
      return store->schema_version() == VerdictStore::current_schema_version() ? 0 : 3;
    }));
  for (auto& child : openers) {
    int status = child->wait();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM pins"), "1");
  EXPECT_EQ(raw.scalar("SELECT value FROM meta WHERE key = 'verdict_epoch'"), "1");
  EXPECT_EQ(raw.scalar("PRAGMA integrity_check"), "ok");
}

TEST_F(StoreDurability, OpeningAFreshStoreWaitsWhileAnotherProcessHoldsItsWriteLock) {
  // The losing side of the race above, made deterministic: another process holds the write lock
  // of a fresh, empty file (as a creator between its first write and its commit does). The WAL
  // switch must wait for it like every other write does, not fail at once with "database is
  // locked" (SQLite does not run the busy handler for that lock upgrade).
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  constexpr auto kHeld = std::chrono::milliseconds(400);
  Child holder([&] {
    close(fds[0]);
    RawDb raw(db_path);
    raw.exec("BEGIN IMMEDIATE");  // RESERVED on a 0-byte file in rollback mode
    char ready = 1;
    if (write(fds[1], &ready, 1) != 1) return 2;
    std::this_thread::sleep_for(kHeld);
    raw.exec("COMMIT");
    return 0;
  });
  close(fds[1]);
  char ready = 0;
  ASSERT_EQ(read(fds[0], &ready, 1), 1) << "the lock holder did not start";
  close(fds[0]);

  const auto start = std::chrono::steady_clock::now();
  auto store = VerdictStore::open(db_path);
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(store) << store.error().code << ": " << store.error().message;
  EXPECT_GE(waited, kHeld / 2) << "the holder still had the lock: open cannot have written before it let go";
  EXPECT_EQ(store->schema_version(), VerdictStore::current_schema_version());
  int status = holder.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "holder status " << status;
  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM pins"), "1");
}

}  // namespace
}  // namespace nsa::cache

// The store: one SQLite file in WAL mode, opened by exactly one writer (nsa-tuned) and any number
// of readers (nsa-tunectl).
//
// Opening is the delicate part, because the file may be anything: missing, empty, ours at an
// older or newer schema, another program's database, garbage, truncated, a directory, or on a
// read-only disk. The order below guarantees that nothing is written before we know the file is
// ours and we can migrate it:
//
//   1. filesystem checks (a directory or special file in the file's place, the parent directory)
//   2. sqlite3_open_v2; SQLite opens lazily, so nothing is read yet; a read-write request that
//      came back read-only means permissions, which we report instead of failing later
//   3. read `user_version` (the first real read: garbage fails here with SQLITE_NOTADB)
//   4. refuse schema versions newer than ours, and version 0 files that already hold tables
//   5. `PRAGMA quick_check` on an existing file (truncation and page damage fail here)
//   6. only now the first writes: journal_mode=WAL, then each pending migration in its own
//      BEGIN IMMEDIATE transaction that re-reads user_version (two processes opening a fresh
//      store at once migrate it once), then the SM 8.9 seed pin
//
// The switch to WAL is the one write that SQLite's busy timeout does not cover. On a file still
// in rollback mode (a fresh, empty one) the pragma takes a read lock, sees the old header, and
// then asks for the write lock while keeping the read lock; when another process got there
// first (it holds RESERVED and waits for our SHARED lock to go before it can commit), SQLite
// refuses at once with SQLITE_BUSY instead of waiting, because waiting would deadlock both. So
// two processes creating a store at once (two daemons, or nsa-tuned and nsa-tunectl) used to
// fail one of them with "database is locked" within milliseconds. switch_to_wal() does what
// SQLite asks of the loser: let go (the statement ends, so does the read lock), wait, try
// again; the winner then commits, and the retry finds the file already in WAL. The retries
// stop after the same kBusyTimeoutMs the busy handler uses elsewhere, so the error still means
// "someone held the lock for that long". Everything after the switch begins with BEGIN
// IMMEDIATE (write lock first, no read lock held), where the busy handler does wait.
//
// Durability: WAL with synchronous=NORMAL makes a committed transaction survive the death of
// the process (kill -9) but not necessarily a power cut, which the service does not need: a
// lost verdict is re-tuned. Every write is one transaction (sql::Transaction), so a reader
// never sees half a verdict, and the epoch moves in the same transaction as the change it
// announces.
//
// Threads: one connection, serialised by a mutex. Reads are short; the daemon's dispatch path
// keeps its own in-memory view keyed by the epoch, so contention here is not a hot path.

#include "nsa/cache/verdict_store.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <ctime>
#include <mutex>
#include <system_error>
#include <thread>

#include <sqlite3.h>

#include "schema.hpp"
#include "sqlite.hpp"

namespace nsa::cache {

namespace fs = std::filesystem;

const char* const kSm89PinReason =
    "Sparse selection is permanently non-viable on SM 8.9 (Ada, RTX 4090): ADR 2025-08-20 M4-02 "
    "found the Triton selection kernels (dense and varlen) 4-25x slower than the packed-SDPA "
    "fallback across realistic shapes, with no region reaching the 1.2x margin, up to ~150x "
    "worse mean absolute error despite a two-pass FP32 log-sum-exp, and MLIR compilation crashes "
    "on the varlen kernels. The gaps are too large for incremental optimisation, so selection on "
    "SM 8.9 always falls back to packed SDPA; experiments there need an explicit override, are "
    "stored as experimental and never change a dispatch answer.";

namespace {

constexpr int kBusyTimeoutMs = 5000;
constexpr const char* kSeededArch = "sm_89";

std::int64_t now_seconds() { return static_cast<std::int64_t>(std::time(nullptr)); }

/// "sm_90", "sm_89", "sm_100", "sm_90a".
bool is_arch(const std::string& arch) {
  if (arch.size() < 5 || arch.compare(0, 3, "sm_") != 0) return false;
  std::size_t i = 3;
  std::size_t digits = 0;
  while (i < arch.size() && std::isdigit(static_cast<unsigned char>(arch[i]))) ++i, ++digits;
  if (digits < 2 || digits > 3) return false;
  if (i < arch.size() && std::islower(static_cast<unsigned char>(arch[i]))) ++i;
  return i == arch.size();
}

bool is_backend(const std::string& backend) { return backend == "sdpa" || backend == "sparse"; }

StoreError error(std::string code, std::string message) {
  return StoreError{std::move(code), std::move(message)};
}

/// Turns an SQLite failure into a StoreError whose message names the file, the operation and
/// what an operator can do about it.
StoreError from_failure(const fs::path& path, const sql::Failure& failure) {
  std::string message = path.string() + ": " + failure.what();
  switch (failure.code()) {
    case SQLITE_NOTADB:
      return error("corrupt", path.string() +
                                  " is not an SQLite database (file is corrupt?): stop nsa-tuned, "
                                  "move it aside and restart to create a new store (" +
                                  failure.what() + ")");
    case SQLITE_CORRUPT:
      return error("corrupt", message +
                                  " (the file is damaged): stop nsa-tuned, move the file aside "
                                  "and restart to create a new store");
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return error("sqlite", message +
                                 ": another process held the store's write lock for more than " +
                                 std::to_string(kBusyTimeoutMs / 1000) +
                                 " s; retry, and check that only one nsa-tuned uses this state dir");
    case SQLITE_FULL:
      return error("sqlite", message + ": free disk space in the state directory");
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN:
      return error("open_failed", message +
                                      ": make the store file and its directory writable by the "
                                      "daemon's user");
    case SQLITE_IOERR:
      return error("sqlite", message + ": the disk reported an I/O error; check it");
    default:
      return error("sqlite", message);
  }
}

/// Runs `body` and converts an SQLite failure into StoreError, for the writes.
template <class Body>
auto guarded(const fs::path& path, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const sql::Failure& failure) {
    return std::unexpected(from_failure(path, failure));
  }
}

/// Runs `body` and converts an SQLite failure into a thrown StoreFailure, for the reads.
template <class Body>
auto reading(const fs::path& path, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const sql::Failure& failure) {
    throw StoreFailure(from_failure(path, failure));
  }
}

int read_user_version(sql::Database& db) {
  auto stmt = db.prepare("PRAGMA user_version");
  stmt.step("read the schema version");
  return stmt.column_int(0);
}

/// The schema version and whether the file holds any schema object, read in one statement so
/// both come from the same snapshot: two processes creating a fresh store at once must not see
/// "version 0" from before and "has tables" from after the other one migrated.
struct FileSchema {
  int version = 0;
  bool has_objects = false;
};

FileSchema read_file_schema(sql::Database& db) {
  auto stmt = db.prepare(
      "SELECT (SELECT user_version FROM pragma_user_version), "
      "(SELECT count(*) FROM sqlite_master)");
  stmt.step("read the schema version");
  return FileSchema{stmt.column_int(0), stmt.column_int64(1) > 0};
}

/// Runs `PRAGMA journal_mode = WAL` and returns the mode it reports ("wal" on success),
/// retrying for up to kBusyTimeoutMs while it fails with SQLITE_BUSY: the pragma upgrades a read
/// lock to a write lock, and SQLite answers a competing creator with SQLITE_BUSY at once rather
/// than through the busy handler (see the essay at the top). Each failed try finalizes its
/// statement, which releases our read lock so that the other process can commit. Other
/// failures, and BUSY past the deadline, propagate as sql::Failure.
std::string switch_to_wal(sql::Database& db) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    try {
      auto mode = db.prepare("PRAGMA journal_mode = WAL");
      mode.step("switch to WAL");
      return mode.column_text(0);
    } catch (const sql::Failure& failure) {
      if (failure.code() != SQLITE_BUSY || Clock::now() + pause >= deadline) throw;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

/// The first line quick_check reports, or "" when it says "ok".
std::string quick_check(sql::Database& db) {
  auto stmt = db.prepare("PRAGMA quick_check(5)");
  std::string first;
  while (stmt.step("run PRAGMA quick_check")) {
    std::string line = stmt.column_text(0);
    if (line == "ok") return "";
    if (first.empty()) first = line;
  }
  return first.empty() ? std::string("no result") : first;
}

constexpr const char* kRequiredTables[] = {
    "meta", "devices", "device_classes", "compiled_kernels", "tuning_runs", "measurements",
    "verdicts", "pins", "demand", "retune_requests"};

/// A file can claim our schema version without holding our tables (hand-edited, or another
/// program that also uses user_version); catching it here beats "no such table" later.
std::string missing_table(sql::Database& db) {
  auto stmt = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  for (const char* table : kRequiredTables) {
    stmt.reset();
    stmt.bind(1, table);
    if (!stmt.step("look for table")) return table;
  }
  return "";
}

std::string schema_too_new_message(const fs::path& path, int version) {
  return path.string() + " has schema version " + std::to_string(version) +
         " but this build of nsa-tune knows versions up to " +
         std::to_string(schema::current_version()) +
         ": run the newer nsa-tuned that wrote it, or move the file aside to start a new store "
         "(the file was not changed)";
}

std::string not_a_store_message(const fs::path& path) {
  return path.string() +
         " is an SQLite database of another program (it has tables but no nsa-tune schema "
         "version): point --state-dir elsewhere or move the file aside (the file was not changed)";
}

// Column lists shared by the queries and the row readers below: keep them in step.
constexpr const char* kVerdictColumns =
    "v.id, c.arch, c.gpu_name, c.driver_version, c.nvrtc_version, c.source_hash, v.family, "
    "v.point, v.backend, v.variant, v.baseline_us, v.best_us, v.speedup, v.rel_l2, "
    "v.baseline_rel_l2, v.run_id, v.experimental, v.reason, v.created_at";

Verdict read_verdict(const sql::Statement& s) {
  Verdict v;
  v.id = s.column_int64(0);
  v.device_class = DeviceClass{s.column_text(1), s.column_text(2), s.column_int(3),
                               s.column_text(4), s.column_text(5)};
  v.family = s.column_text(6);
  v.point = s.column_text(7);
  v.backend = s.column_text(8);
  v.variant = s.column_text(9);
  v.baseline_us = s.column_double(10);
  v.best_us = s.column_double(11);
  v.speedup = s.column_double(12);
  v.rel_l2 = s.column_double(13);
  v.baseline_rel_l2 = s.column_double(14);
  v.run_id = s.column_is_null(15) ? 0 : s.column_int64(15);
  v.experimental = s.column_bool(16);
  v.reason = s.column_text(17);
  v.created_at = s.column_int64(18);
  return v;
}

constexpr const char* kRunColumns =
    "r.id, c.arch, c.gpu_name, c.driver_version, c.nvrtc_version, c.source_hash, r.device_uuid, "
    "r.trigger, r.experimental, r.status, r.started_at, r.finished_at, r.note";

TuningRun read_run(const sql::Statement& s) {
  TuningRun r;
  r.id = s.column_int64(0);
  r.device_class = DeviceClass{s.column_text(1), s.column_text(2), s.column_int(3),
                               s.column_text(4), s.column_text(5)};
  r.device_uuid = s.column_text(6);
  r.trigger = s.column_text(7);
  r.experimental = s.column_bool(8);
  // The CHECK constraint admits only the spellings parse_run_status knows.
  r.status = parse_run_status(s.column_text(9)).value_or(RunStatus::abandoned);
  r.started_at = s.column_int64(10);
  r.finished_at = s.column_int64(11);
  r.note = s.column_text(12);
  return r;
}

constexpr const char* kPinColumns = "arch, backend, reason, seeded, created_by, created_at";

Pin read_pin(const sql::Statement& s) {
  return Pin{s.column_text(0), s.column_text(1), s.column_text(2),
             s.column_bool(3), s.column_text(4), s.column_int64(5)};
}

}  // namespace

struct VerdictStore::Impl {
  fs::path path;
  sql::Database db;
  bool read_only = false;
  int schema_version = 0;
  mutable std::mutex mutex;

  std::expected<void, StoreError> writable() const {
    if (!read_only) return {};
    return std::unexpected(error(
        "read_only", path.string() +
                         " was opened read-only (VerdictStore::open_read_only): writes go "
                         "through nsa-tuned, or open the store with VerdictStore::open"));
  }

  void bump_epoch() {
    db.exec(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'verdict_epoch'",
        "bump the verdict epoch");
  }

  /// The id of the device class row, creating it when `create` (inside a write transaction).
  std::optional<std::int64_t> class_id(const DeviceClass& cls, bool create) {
    auto find = db.prepare(
        "SELECT id FROM device_classes WHERE arch = ? AND gpu_name = ? AND driver_version = ? "
        "AND nvrtc_version = ? AND source_hash = ?");
    find.bind(1, cls.arch).bind(2, cls.gpu_name).bind(3, cls.driver_version);
    find.bind(4, cls.nvrtc_version).bind(5, cls.source_hash);
    if (find.step("look up device class")) return find.column_int64(0);
    if (!create) return std::nullopt;
    auto insert = db.prepare(
        "INSERT INTO device_classes (arch, gpu_name, driver_version, nvrtc_version, source_hash) "
        "VALUES (?, ?, ?, ?, ?)");
    insert.bind(1, cls.arch).bind(2, cls.gpu_name).bind(3, cls.driver_version);
    insert.bind(4, cls.nvrtc_version).bind(5, cls.source_hash);
    insert.run("insert device class");
    return db.last_insert_rowid();
  }

  std::optional<Pin> pin(const std::string& arch) const {
    auto stmt = db.prepare(std::string("SELECT ") + kPinColumns + " FROM pins WHERE arch = ?");
    stmt.bind(1, arch);
    if (!stmt.step("read pin")) return std::nullopt;
    return read_pin(stmt);
  }

  /// Seeds (or restores) the SM 8.9 pin. A store whose sm_89 row is missing or was replaced by
  /// hand gets the seeded pin back: it is policy, not data.
  void seed_pins() {
    sql::Transaction tx(db, "seed the sm_89 pin");
    auto existing = pin(kSeededArch);
    if (!existing || !existing->seeded || existing->backend != "sdpa") {
      auto stmt = db.prepare(
          "INSERT OR REPLACE INTO pins (arch, backend, reason, seeded, created_by, created_at) "
          "VALUES (?, 'sdpa', ?, 1, 'seed', ?)");
      stmt.bind(1, kSeededArch).bind(2, kSm89PinReason).bind(3, now_seconds());
      stmt.run("insert the sm_89 pin");
      bump_epoch();
    }
    tx.commit();
  }

  void migrate() {
    for (const auto& step : schema::migrations()) {
      if (step.version <= schema_version) continue;
      sql::Transaction tx(db, "migrate to schema version " + std::to_string(step.version));
      // Another process may have migrated between our read and our lock.
      int now = read_user_version(db);
      if (now >= step.version) {
        schema_version = now;
        continue;  // the transaction rolls back: nothing was written
      }
      db.exec(std::string(step.sql),
              "migrate to schema version " + std::to_string(step.version) + " (" +
                  std::string(step.summary) + ")");
      db.exec("PRAGMA user_version = " + std::to_string(step.version), "set schema version");
      tx.commit();
      schema_version = step.version;
    }
  }
};

VerdictStore::VerdictStore(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
VerdictStore::VerdictStore(VerdictStore&&) noexcept = default;
VerdictStore& VerdictStore::operator=(VerdictStore&&) noexcept = default;
VerdictStore::~VerdictStore() = default;

int VerdictStore::current_schema_version() { return schema::current_version(); }

// Opening ----------------------------------------------------------------------------------------

std::expected<VerdictStore, StoreError> VerdictStore::open(const fs::path& requested) {
  if (requested.empty())
    return std::unexpected(error("open_failed", "the store path is empty: pass --state-dir DIR"));
  std::error_code ec;
  fs::path path = fs::absolute(requested, ec);
  if (ec) path = requested;

  auto status = fs::status(path, ec);
  if (fs::is_directory(status))
    return std::unexpected(error(
        "open_failed", path.string() +
                           " is a directory where the store file should be: move it aside or "
                           "choose another --state-dir (nothing was changed)"));
  if (fs::exists(status) && !fs::is_regular_file(status))
    return std::unexpected(error("open_failed", path.string() +
                                                    " exists but is not a regular file: move it "
                                                    "aside or choose another --state-dir"));
  bool existed = fs::exists(status) && fs::file_size(path, ec) > 0;

  fs::path parent = path.parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec || !fs::is_directory(parent))
      return std::unexpected(error(
          "open_failed", "cannot create the store's directory " + parent.string() + ": " +
                             (ec ? ec.message() : std::string("a file is in the way")) +
                             ": create it writable for the daemon's user, or choose another "
                             "--state-dir"));
  }

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  try {
    impl->db = sql::Database::open(path.string(), sql::Database::Mode::read_write_create);
  } catch (const sql::Failure& failure) {
    return std::unexpected(error(
        "open_failed", path.string() + ": " + failure.what() +
                           ": check that the file and its directory are writable by the "
                           "daemon's user"));
  }
  if (impl->db.is_read_only())
    return std::unexpected(error(
        "open_failed", path.string() +
                           " is read-only for this user: make it (and its directory) writable "
                           "by the daemon's user, or read it with nsa-tunectl"));
  impl->db.set_busy_timeout(kBusyTimeoutMs);

  try {
    auto [version, has_objects] = read_file_schema(impl->db);
    if (version > schema::current_version())
      return std::unexpected(error("too_new", schema_too_new_message(path, version)));
    if (version < 0)
      return std::unexpected(error("corrupt", path.string() + " has a negative schema version (" +
                                                  std::to_string(version) +
                                                  "): move it aside and restart to create a "
                                                  "new store"));
    if (version == 0 && has_objects)
      return std::unexpected(error("not_a_store", not_a_store_message(path)));
    if (existed) {
      std::string problem = quick_check(impl->db);
      if (!problem.empty())
        return std::unexpected(error(
            "corrupt", path.string() + " fails PRAGMA quick_check (" + problem +
                           "): the file is damaged; move it aside and restart to create a new "
                           "store (the damaged file is kept for inspection)"));
    }
    impl->schema_version = version;

    // First writes from here on.
    std::string journal = switch_to_wal(impl->db);
    if (journal != "wal")
      return std::unexpected(error(
          "open_failed", path.string() + " cannot use write-ahead logging (journal mode stays '" +
                             journal + "'): its directory must be writable and on a local disk"));
    impl->db.exec("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                  "set connection pragmas");
    impl->migrate();
    if (std::string table = missing_table(impl->db); !table.empty())
      return std::unexpected(error(
          "corrupt", path.string() + " claims schema version " +
                         std::to_string(impl->schema_version) + " but has no table '" + table +
                         "': move it aside and restart to create a new store"));
    impl->seed_pins();
  } catch (const sql::Failure& failure) {
    return std::unexpected(from_failure(path, failure));
  }
  return VerdictStore(std::move(impl));
}

std::expected<VerdictStore, StoreError> VerdictStore::open_read_only(const fs::path& requested) {
  std::error_code ec;
  fs::path path = fs::absolute(requested, ec);
  if (ec) path = requested;
  auto status = fs::status(path, ec);
  if (!fs::exists(status))
    return std::unexpected(error(
        "not_found", path.string() +
                         " does not exist: start nsa-tuned (which creates it), or pass the "
                         "--state-dir it uses"));
  if (fs::is_directory(status))
    return std::unexpected(error("open_failed", path.string() +
                                                    " is a directory where the store file should "
                                                    "be: pass the --state-dir nsa-tuned uses"));

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->read_only = true;
  try {
    impl->db = sql::Database::open(path.string(), sql::Database::Mode::read_only);
    impl->db.set_busy_timeout(kBusyTimeoutMs);
    auto [version, has_objects] = read_file_schema(impl->db);
    if (version > schema::current_version())
      return std::unexpected(error("too_new", schema_too_new_message(path, version)));
    if (version == 0 && has_objects)
      return std::unexpected(error("not_a_store", not_a_store_message(path)));
    if (version < schema::current_version())
      return std::unexpected(error(
          "too_old", path.string() + " has schema version " + std::to_string(version) +
                         " and needs migrating to " + std::to_string(schema::current_version()) +
                         ": start this build's nsa-tuned once (it migrates the store on start)"));
    if (std::string problem = quick_check(impl->db); !problem.empty())
      return std::unexpected(error(
          "corrupt", path.string() + " fails PRAGMA quick_check (" + problem +
                         "): the file is damaged; stop nsa-tuned, move it aside and restart"));
    if (std::string table = missing_table(impl->db); !table.empty())
      return std::unexpected(error(
          "corrupt", path.string() + " claims schema version " + std::to_string(version) +
                         " but has no table '" + table + "': move it aside and restart nsa-tuned"));
    impl->schema_version = version;
  } catch (const sql::Failure& failure) {
    return std::unexpected(from_failure(path, failure));
  }
  return VerdictStore(std::move(impl));
}

int VerdictStore::schema_version() const { return m_impl->schema_version; }
fs::path VerdictStore::path() const { return m_impl->path; }

std::int64_t VerdictStore::epoch() const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto stmt = m_impl->db.prepare(
        "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'verdict_epoch'");
    return stmt.step("read the verdict epoch") ? stmt.column_int64(0) : std::int64_t{0};
  });
}

// Devices ----------------------------------------------------------------------------------------

std::expected<void, StoreError> VerdictStore::upsert_device(const DeviceRecord& device) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  if (device.uuid.empty())
    return std::unexpected(error("invalid", "device " + std::to_string(device.ordinal) + " (" +
                                                device.name +
                                                ") has no UUID: record the UUID the driver reports"));
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "record device");
    auto stmt = m_impl->db.prepare(
        "INSERT INTO devices (uuid, ordinal, name, arch, sm_count, memory_bytes, driver_version, "
        "nvrtc_version, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (uuid) DO UPDATE SET ordinal = excluded.ordinal, name = excluded.name, "
        "arch = excluded.arch, sm_count = excluded.sm_count, memory_bytes = excluded.memory_bytes, "
        "driver_version = excluded.driver_version, nvrtc_version = excluded.nvrtc_version, "
        "seen_at = excluded.seen_at");
    stmt.bind(1, device.uuid).bind(2, device.ordinal).bind(3, device.name).bind(4, device.arch);
    stmt.bind(5, device.sm_count).bind(6, static_cast<std::int64_t>(device.memory_bytes));
    stmt.bind(7, device.driver_version).bind(8, device.nvrtc_version);
    stmt.bind(9, device.seen_at ? device.seen_at : now_seconds());
    stmt.run("record device " + device.uuid);
    tx.commit();
    return {};
  });
}

std::vector<DeviceRecord> VerdictStore::devices() const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        "SELECT ordinal, uuid, name, arch, sm_count, memory_bytes, driver_version, nvrtc_version, "
        "seen_at FROM devices ORDER BY ordinal, uuid");
    std::vector<DeviceRecord> out;
    while (s.step("read devices")) {
      out.push_back(DeviceRecord{s.column_int(0), s.column_text(1), s.column_text(2),
                                 s.column_text(3), s.column_int(4),
                                 static_cast<std::uint64_t>(s.column_int64(5)), s.column_int(6),
                                 s.column_text(7), s.column_int64(8)});
    }
    return out;
  });
}

// Pins -------------------------------------------------------------------------------------------

std::vector<Pin> VerdictStore::pins() const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(std::string("SELECT ") + kPinColumns + " FROM pins ORDER BY arch");
    std::vector<Pin> out;
    while (s.step("read pins")) out.push_back(read_pin(s));
    return out;
  });
}

std::optional<Pin> VerdictStore::pin_for(const std::string& arch) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] { return m_impl->pin(arch); });
}

std::expected<void, StoreError> VerdictStore::add_pin(const Pin& pin) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  if (!is_arch(pin.arch))
    return std::unexpected(error("invalid", "cannot pin arch '" + pin.arch +
                                                "': spell it like sm_90 (sm_ and the compute "
                                                "capability)"));
  if (pin.backend != "sdpa")
    return std::unexpected(error(
        "invalid", "cannot pin " + pin.arch + " to backend '" + pin.backend +
                       "': a pin can only force the sdpa fallback; a sparse choice needs a "
                       "measured verdict"));
  if (pin.reason.empty())
    return std::unexpected(error("invalid", "a pin for " + pin.arch +
                                                " needs a reason: say why, so the next operator "
                                                "knows whether it may be lifted"));
  if (pin.seeded)
    return std::unexpected(error("invalid", "pin for " + pin.arch +
                                                " is marked seeded: only the store seeds pins; "
                                                "add operator pins with seeded=false"));
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "add pin for " + pin.arch);
    if (auto existing = m_impl->pin(pin.arch); existing && existing->seeded)
      return std::unexpected(error(
          "refused", "the " + pin.arch +
                         " pin is seeded policy and cannot be replaced (it stays pinned to " +
                         existing->backend + ")"));
    auto stmt = m_impl->db.prepare(
        "INSERT OR REPLACE INTO pins (arch, backend, reason, seeded, created_by, created_at) "
        "VALUES (?, ?, ?, 0, ?, ?)");
    stmt.bind(1, pin.arch).bind(2, pin.backend).bind(3, pin.reason);
    stmt.bind(4, pin.created_by.empty() ? std::string("operator") : pin.created_by);
    stmt.bind(5, pin.created_at ? pin.created_at : now_seconds());
    stmt.run("insert pin for " + pin.arch);
    m_impl->bump_epoch();
    tx.commit();
    return {};
  });
}

std::expected<void, StoreError> VerdictStore::remove_pin(const std::string& arch) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "remove pin for " + arch);
    auto existing = m_impl->pin(arch);
    if (!existing)
      return std::unexpected(error("not_found", "there is no pin for '" + arch +
                                                    "': list the pins with nsa-tunectl pins"));
    if (existing->seeded)
      return std::unexpected(error(
          "refused", "the " + arch +
                         " pin is seeded policy and cannot be removed: sparse selection there "
                         "is non-viable (ADR 2025-08-20 M4-02); experiments need the explicit "
                         "experimental override and never change dispatch answers"));
    auto stmt = m_impl->db.prepare("DELETE FROM pins WHERE arch = ? AND seeded = 0");
    stmt.bind(1, arch);
    stmt.run("delete pin for " + arch);
    m_impl->bump_epoch();
    tx.commit();
    return {};
  });
}

// Runs and measurements --------------------------------------------------------------------------

std::expected<std::int64_t, StoreError> VerdictStore::begin_run(const TuningRun& run) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return std::unexpected(ok.error());
  if (!is_arch(run.device_class.arch))
    return std::unexpected(error("invalid", "tuning run for arch '" + run.device_class.arch +
                                                "': spell the arch like sm_90"));
  if (run.status != RunStatus::running)
    return std::unexpected(error("invalid", "a run begins in status running, not " +
                                                to_string(run.status) +
                                                ": end it with finish_run"));
  return guarded(m_impl->path, [&]() -> std::expected<std::int64_t, StoreError> {
    sql::Transaction tx(m_impl->db, "begin tuning run");
    if (auto pin = m_impl->pin(run.device_class.arch); pin && !run.experimental)
      return std::unexpected(error(
          "refused", run.device_class.arch + " is pinned to " + pin->backend +
                         ": it is never tuned for dispatch; run it as an experiment "
                         "(experimental=true) if you need the numbers"));
    auto cls = m_impl->class_id(run.device_class, true);
    auto stmt = m_impl->db.prepare(
        "INSERT INTO tuning_runs (class_id, device_uuid, trigger, experimental, status, "
        "started_at, finished_at, note) VALUES (?, ?, ?, ?, 'running', ?, 0, ?)");
    stmt.bind(1, *cls).bind(2, run.device_uuid).bind(3, run.trigger).bind(4, run.experimental);
    stmt.bind(5, run.started_at ? run.started_at : now_seconds()).bind(6, run.note);
    stmt.run("insert tuning run");
    std::int64_t id = m_impl->db.last_insert_rowid();
    tx.commit();
    return id;
  });
}

std::expected<void, StoreError> VerdictStore::finish_run(std::int64_t run_id, RunStatus status,
                                                         const std::string& note) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  if (status == RunStatus::running)
    return std::unexpected(error("invalid", "finish_run needs a final status (finished, failed "
                                            "or abandoned), not running"));
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "finish tuning run");
    auto find = m_impl->db.prepare("SELECT status FROM tuning_runs WHERE id = ?");
    find.bind(1, run_id);
    if (!find.step("look up run"))
      return std::unexpected(
          error("not_found", "there is no tuning run " + std::to_string(run_id)));
    if (std::string current = find.column_text(0); current != "running")
      return std::unexpected(error("refused", "tuning run " + std::to_string(run_id) +
                                                  " already ended (" + current + ")"));
    auto stmt = m_impl->db.prepare(
        "UPDATE tuning_runs SET status = ?, finished_at = ?, note = ? WHERE id = ?");
    stmt.bind(1, to_string(status)).bind(2, now_seconds()).bind(3, note).bind(4, run_id);
    stmt.run("finish run");
    tx.commit();
    return {};
  });
}

std::expected<std::int64_t, StoreError> VerdictStore::add_measurement(const Measurement& m) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return std::unexpected(ok.error());
  if (m.family.empty() || m.point.empty())
    return std::unexpected(error("invalid", "a measurement needs a family and a point key (got '" +
                                                m.family + "', '" + m.point + "')"));
  if (!is_backend(m.backend))
    return std::unexpected(error("invalid", "measurement backend '" + m.backend +
                                                "' is neither sdpa nor sparse"));
  return guarded(m_impl->path, [&]() -> std::expected<std::int64_t, StoreError> {
    sql::Transaction tx(m_impl->db, "add measurement");
    auto find = m_impl->db.prepare("SELECT status FROM tuning_runs WHERE id = ?");
    find.bind(1, m.run_id);
    if (!find.step("look up run"))
      return std::unexpected(error("not_found", "there is no tuning run " +
                                                    std::to_string(m.run_id) +
                                                    ": call begin_run first"));
    if (std::string current = find.column_text(0); current != "running")
      return std::unexpected(error("refused", "tuning run " + std::to_string(m.run_id) +
                                                  " already ended (" + current +
                                                  "): measurements belong to a running run"));
    auto stmt = m_impl->db.prepare(
        "INSERT INTO measurements (run_id, family, point, backend, variant, median_us, spread_us, "
        "rel_l2, max_abs, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    stmt.bind(1, m.run_id).bind(2, m.family).bind(3, m.point).bind(4, m.backend);
    stmt.bind(5, m.variant).bind(6, m.median_us).bind(7, m.spread_us).bind(8, m.rel_l2);
    stmt.bind(9, m.max_abs).bind(10, to_string(m.status)).bind(11, m.detail);
    stmt.run("insert measurement");
    std::int64_t id = m_impl->db.last_insert_rowid();
    tx.commit();
    return id;
  });
}

std::vector<TuningRun> VerdictStore::runs(int limit) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(std::string("SELECT ") + kRunColumns +
                                " FROM tuning_runs r JOIN device_classes c ON c.id = r.class_id "
                                "ORDER BY r.id DESC LIMIT ?");
    s.bind(1, limit);
    std::vector<TuningRun> out;
    while (s.step("read runs")) out.push_back(read_run(s));
    return out;
  });
}

std::vector<Measurement> VerdictStore::measurements(std::int64_t run_id) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        "SELECT id, run_id, family, point, backend, variant, median_us, spread_us, rel_l2, "
        "max_abs, status, detail FROM measurements WHERE run_id = ? ORDER BY id");
    s.bind(1, run_id);
    std::vector<Measurement> out;
    while (s.step("read measurements")) {
      Measurement m;
      m.id = s.column_int64(0);
      m.run_id = s.column_int64(1);
      m.family = s.column_text(2);
      m.point = s.column_text(3);
      m.backend = s.column_text(4);
      m.variant = s.column_text(5);
      m.median_us = s.column_double(6);
      m.spread_us = s.column_double(7);
      m.rel_l2 = s.column_double(8);
      m.max_abs = s.column_double(9);
      m.status = parse_measurement_status(s.column_text(10)).value_or(MeasurementStatus::skipped);
      m.detail = s.column_text(11);
      out.push_back(std::move(m));
    }
    return out;
  });
}

// Verdicts ---------------------------------------------------------------------------------------

std::expected<std::int64_t, StoreError> VerdictStore::put_verdict(const Verdict& v) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return std::unexpected(ok.error());
  if (!is_arch(v.device_class.arch))
    return std::unexpected(error("invalid", "verdict for arch '" + v.device_class.arch +
                                                "': spell the arch like sm_90"));
  if (v.family.empty() || v.point.empty())
    return std::unexpected(error("invalid", "a verdict needs a family and a point key (got '" +
                                                v.family + "', '" + v.point + "')"));
  if (!is_backend(v.backend))
    return std::unexpected(error("invalid", "verdict backend '" + v.backend +
                                                "' is neither sdpa nor sparse"));
  return guarded(m_impl->path, [&]() -> std::expected<std::int64_t, StoreError> {
    sql::Transaction tx(m_impl->db, "put verdict");
    if (auto pin = m_impl->pin(v.device_class.arch); pin && !v.experimental)
      return std::unexpected(error(
          "refused", v.device_class.arch + " is pinned to " + pin->backend +
                         " and no measurement can lift a pin: record this verdict as "
                         "experimental"));
    if (v.run_id != 0) {
      auto run = m_impl->db.prepare(std::string("SELECT ") + kRunColumns +
                                    " FROM tuning_runs r JOIN device_classes c ON c.id = "
                                    "r.class_id WHERE r.id = ?");
      run.bind(1, v.run_id);
      if (!run.step("look up run"))
        return std::unexpected(error("not_found", "verdict names tuning run " +
                                                      std::to_string(v.run_id) +
                                                      ", which does not exist"));
      TuningRun r = read_run(run);
      if (!(r.device_class == v.device_class))
        return std::unexpected(error("invalid", "verdict's device class (" +
                                                    describe(v.device_class) + ") differs from run " +
                                                    std::to_string(v.run_id) + "'s (" +
                                                    describe(r.device_class) + ")"));
      if (r.experimental && !v.experimental)
        return std::unexpected(error("invalid", "run " + std::to_string(v.run_id) +
                                                    " is experimental, so its verdicts must be "
                                                    "experimental too"));
    }
    auto cls = m_impl->class_id(v.device_class, true);
    auto stmt = m_impl->db.prepare(
        "INSERT INTO verdicts (class_id, family, point, backend, variant, baseline_us, best_us, "
        "speedup, rel_l2, baseline_rel_l2, run_id, experimental, reason, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    stmt.bind(1, *cls).bind(2, v.family).bind(3, v.point).bind(4, v.backend).bind(5, v.variant);
    stmt.bind(6, v.baseline_us).bind(7, v.best_us).bind(8, v.speedup).bind(9, v.rel_l2);
    stmt.bind(10, v.baseline_rel_l2);
    if (v.run_id != 0)
      stmt.bind(11, v.run_id);
    else
      stmt.bind_null(11);
    stmt.bind(12, v.experimental).bind(13, v.reason);
    stmt.bind(14, v.created_at ? v.created_at : now_seconds());
    stmt.run("insert verdict");
    std::int64_t id = m_impl->db.last_insert_rowid();
    if (!v.experimental) m_impl->bump_epoch();
    tx.commit();
    return id;
  });
}

std::vector<Verdict> VerdictStore::latest_verdicts(const std::optional<DeviceClass>& current) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        std::string("SELECT ") + kVerdictColumns +
        " FROM verdicts v JOIN device_classes c ON c.id = v.class_id "
        "WHERE v.id IN (SELECT max(id) FROM verdicts GROUP BY class_id, family, point) "
        "ORDER BY c.arch, v.family, v.point, c.id");
    std::vector<Verdict> out;
    while (s.step("read latest verdicts")) {
      Verdict v = read_verdict(s);
      v.stale = current.has_value() && !(v.device_class == *current);
      out.push_back(std::move(v));
    }
    return out;
  });
}

std::vector<Verdict> VerdictStore::current_verdicts(const DeviceClass& cls) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    std::vector<Verdict> out;
    auto id = m_impl->class_id(cls, false);
    if (!id) return out;
    auto s = m_impl->db.prepare(
        std::string("SELECT ") + kVerdictColumns +
        " FROM verdicts v JOIN device_classes c ON c.id = v.class_id "
        "WHERE v.id IN (SELECT max(id) FROM verdicts WHERE class_id = ?1 AND experimental = 0 "
        "GROUP BY family, point) ORDER BY v.family, v.point");
    s.bind(1, *id);
    while (s.step("read current verdicts")) out.push_back(read_verdict(s));
    return out;
  });
}

// Compiled kernels -------------------------------------------------------------------------------

std::expected<void, StoreError> VerdictStore::put_kernel(const CompiledKernel& k) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  if (k.variant_key.empty() || k.arch.empty())
    return std::unexpected(error("invalid", "a compiled kernel needs a variant key and an arch "
                                            "(got '" + k.variant_key + "', '" + k.arch + "')"));
  if (k.cubin.empty())
    return std::unexpected(error("invalid", "compiled kernel " + k.variant_key +
                                                " has an empty binary: store only successful "
                                                "compilations"));
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "store compiled kernel " + k.variant_key);
    auto prune = m_impl->db.prepare(
        "DELETE FROM compiled_kernels WHERE variant_key = ? AND arch = ? "
        "AND (source_hash <> ? OR nvrtc_version <> ?)");
    prune.bind(1, k.variant_key).bind(2, k.arch).bind(3, k.source_hash).bind(4, k.nvrtc_version);
    prune.run("drop stale kernels of " + k.variant_key);
    auto stmt = m_impl->db.prepare(
        "INSERT OR REPLACE INTO compiled_kernels (variant_key, arch, source_hash, options, "
        "nvrtc_version, cubin, registers, shared_bytes, spill_bytes, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    stmt.bind(1, k.variant_key).bind(2, k.arch).bind(3, k.source_hash).bind(4, k.options);
    stmt.bind(5, k.nvrtc_version).bind_blob(6, k.cubin).bind(7, k.registers);
    stmt.bind(8, k.shared_bytes).bind(9, k.spill_bytes);
    stmt.bind(10, k.created_at ? k.created_at : now_seconds());
    stmt.run("insert compiled kernel");
    tx.commit();
    return {};
  });
}

std::optional<CompiledKernel> VerdictStore::get_kernel(const std::string& variant_key,
                                                       const std::string& arch,
                                                       const std::string& source_hash,
                                                       const std::string& options,
                                                       const std::string& nvrtc_version) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&]() -> std::optional<CompiledKernel> {
    auto s = m_impl->db.prepare(
        "SELECT cubin, registers, shared_bytes, spill_bytes, created_at FROM compiled_kernels "
        "WHERE variant_key = ? AND arch = ? AND source_hash = ? AND options = ? "
        "AND nvrtc_version = ?");
    s.bind(1, variant_key).bind(2, arch).bind(3, source_hash).bind(4, options);
    s.bind(5, nvrtc_version);
    if (!s.step("read compiled kernel")) return std::nullopt;
    CompiledKernel k;
    k.variant_key = variant_key;
    k.arch = arch;
    k.source_hash = source_hash;
    k.options = options;
    k.nvrtc_version = nvrtc_version;
    k.cubin = s.column_blob(0);
    k.registers = s.column_int(1);
    k.shared_bytes = s.column_int(2);
    k.spill_bytes = s.column_int(3);
    k.created_at = s.column_int64(4);
    return k;
  });
}

std::int64_t VerdictStore::kernel_count() const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare("SELECT count(*) FROM compiled_kernels");
    s.step("count compiled kernels");
    return s.column_int64(0);
  });
}

// Retune requests --------------------------------------------------------------------------------

std::expected<std::int64_t, StoreError> VerdictStore::request_retune(const std::string& scope,
                                                                     const std::string& requested_by) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return std::unexpected(ok.error());
  if (scope.empty())
    return std::unexpected(error("invalid", "a retune request needs a scope: \"all\", an arch "
                                            "like \"sm_90\", or a family key"));
  return guarded(m_impl->path, [&]() -> std::expected<std::int64_t, StoreError> {
    sql::Transaction tx(m_impl->db, "queue retune request");
    auto stmt = m_impl->db.prepare(
        "INSERT INTO retune_requests (scope, requested_by, requested_at) VALUES (?, ?, ?)");
    stmt.bind(1, scope).bind(2, requested_by).bind(3, now_seconds());
    stmt.run("insert retune request");
    std::int64_t id = m_impl->db.last_insert_rowid();
    tx.commit();
    return id;
  });
}

std::vector<RetuneRequest> VerdictStore::pending_retunes() const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        "SELECT id, scope, requested_by, requested_at, completed_at, outcome FROM retune_requests "
        "WHERE completed_at = 0 ORDER BY id");
    std::vector<RetuneRequest> out;
    while (s.step("read retune requests"))
      out.push_back(RetuneRequest{s.column_int64(0), s.column_text(1), s.column_text(2),
                                  s.column_int64(3), s.column_int64(4), s.column_text(5)});
    return out;
  });
}

std::vector<RetuneRequest> VerdictStore::recent_retunes(std::size_t limit) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        "SELECT id, scope, requested_by, requested_at, completed_at, outcome FROM retune_requests "
        "ORDER BY id DESC LIMIT ?");
    s.bind(1, static_cast<std::int64_t>(std::min<std::size_t>(limit, 1000000)));
    std::vector<RetuneRequest> out;
    while (s.step("read recent retune requests"))
      out.push_back(RetuneRequest{s.column_int64(0), s.column_text(1), s.column_text(2),
                                  s.column_int64(3), s.column_int64(4), s.column_text(5)});
    return out;
  });
}

std::expected<void, StoreError> VerdictStore::complete_retune(std::int64_t id,
                                                              const std::string& outcome) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "complete retune request");
    auto find = m_impl->db.prepare("SELECT completed_at FROM retune_requests WHERE id = ?");
    find.bind(1, id);
    if (!find.step("look up retune request"))
      return std::unexpected(
          error("not_found", "there is no retune request " + std::to_string(id)));
    if (find.column_int64(0) != 0)
      return std::unexpected(
          error("refused", "retune request " + std::to_string(id) + " is already completed"));
    auto stmt = m_impl->db.prepare(
        "UPDATE retune_requests SET completed_at = ?, outcome = ? WHERE id = ?");
    stmt.bind(1, now_seconds()).bind(2, outcome).bind(3, id);
    stmt.run("complete retune request");
    tx.commit();
    return {};
  });
}

// Demand -----------------------------------------------------------------------------------------

std::expected<void, StoreError> VerdictStore::record_demand(const std::vector<Demand>& batch) {
  std::lock_guard lock(m_impl->mutex);
  if (auto ok = m_impl->writable(); !ok) return ok;
  for (const Demand& d : batch) {
    if (d.arch.empty() || d.family.empty())
      return std::unexpected(error("invalid", "demand needs an arch and a family (got '" + d.arch +
                                                  "', '" + d.family + "')"));
    if (d.count < 1)
      return std::unexpected(error("invalid", "demand count for " + d.family + " is " +
                                                  std::to_string(d.count) +
                                                  ": record one or more requests"));
  }
  if (batch.empty()) return {};
  return guarded(m_impl->path, [&]() -> std::expected<void, StoreError> {
    sql::Transaction tx(m_impl->db, "record demand");
    auto stmt = m_impl->db.prepare(
        "INSERT INTO demand (arch, family, point, count, first_at, last_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (arch, family, point) DO UPDATE SET "
        "count = count + excluded.count, first_at = min(first_at, excluded.first_at), "
        "last_at = max(last_at, excluded.last_at)");
    std::int64_t now = now_seconds();
    for (const Demand& d : batch) {
      stmt.reset();
      std::int64_t first = d.first_at ? d.first_at : now;
      std::int64_t last = d.last_at ? d.last_at : now;
      stmt.bind(1, d.arch).bind(2, d.family).bind(3, d.point).bind(4, d.count);
      stmt.bind(5, first).bind(6, last);
      stmt.run("record demand for " + d.family);
    }
    tx.commit();
    return {};
  });
}

std::vector<Demand> VerdictStore::demand(int limit) const {
  std::lock_guard lock(m_impl->mutex);
  return reading(m_impl->path, [&] {
    auto s = m_impl->db.prepare(
        "SELECT arch, family, point, count, first_at, last_at FROM demand "
        "ORDER BY count DESC, last_at DESC, arch, family, point LIMIT ?");
    s.bind(1, limit);
    std::vector<Demand> out;
    while (s.step("read demand"))
      out.push_back(Demand{s.column_text(0), s.column_text(1), s.column_text(2),
                           s.column_int64(3), s.column_int64(4), s.column_int64(5)});
    return out;
  });
}

}  // namespace nsa::cache

// Opening the store on whatever is on disk: a hand-made version-1 store (migration), garbage,
// a truncated file, a directory, another program's database, a schema from the future, an
// unwritable location. Each is a clear error and the file is left byte-for-byte as it was.

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "nsa/cache/verdict_store.hpp"
#include "store_test_support.hpp"

namespace nsa::cache {
namespace {

namespace fs = std::filesystem;
using testing::h100_class;
using testing::RawDb;
using testing::read_bytes;
using testing::sample_verdict;
using testing::write_bytes;
using StoreOpen = testing::StoreTest;

// The first released schema, written out by hand as that release created it. Deliberately a
// copy, not cache/schema.cpp: if someone edits migration 1 instead of adding migration 3, this
// test still builds the old shape and catches it.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('verdict_epoch', '0');
CREATE TABLE devices (
  uuid TEXT PRIMARY KEY NOT NULL CHECK (uuid <> ''), ordinal INTEGER NOT NULL CHECK (ordinal >= 0),
  name TEXT NOT NULL, arch TEXT NOT NULL, sm_count INTEGER NOT NULL, memory_bytes INTEGER NOT NULL,
  driver_version INTEGER NOT NULL, nvrtc_version TEXT NOT NULL, seen_at INTEGER NOT NULL);
CREATE TABLE device_classes (
  id INTEGER PRIMARY KEY, arch TEXT NOT NULL CHECK (arch <> ''), gpu_name TEXT NOT NULL,
  driver_version INTEGER NOT NULL, nvrtc_version TEXT NOT NULL, source_hash TEXT NOT NULL,
  UNIQUE (arch, gpu_name, driver_version, nvrtc_version, source_hash));
CREATE TABLE compiled_kernels (
  variant_key TEXT NOT NULL CHECK (variant_key <> ''), arch TEXT NOT NULL, source_hash TEXT NOT NULL,
  options TEXT NOT NULL, nvrtc_version TEXT NOT NULL, cubin BLOB NOT NULL, registers INTEGER NOT NULL,
  shared_bytes INTEGER NOT NULL, spill_bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
  PRIMARY KEY (variant_key, arch, source_hash, options, nvrtc_version));
CREATE TABLE tuning_runs (
  id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES device_classes (id),
  device_uuid TEXT NOT NULL, trigger TEXT NOT NULL,
  experimental INTEGER NOT NULL CHECK (experimental IN (0, 1)),
  status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'abandoned')),
  started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
CREATE TABLE measurements (
  id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES tuning_runs (id),
  family TEXT NOT NULL CHECK (family <> ''), point TEXT NOT NULL CHECK (point <> ''),
  backend TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')), variant TEXT NOT NULL,
  median_us REAL, spread_us REAL, rel_l2 REAL, max_abs REAL,
  status TEXT NOT NULL CHECK (status IN ('ok', 'numerics_failed', 'compile_failed', 'crashed',
                                          'timeout', 'skipped')),
  detail TEXT NOT NULL DEFAULT '');
CREATE INDEX measurements_by_run ON measurements (run_id, id);
CREATE TABLE verdicts (
  id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL REFERENCES device_classes (id),
  family TEXT NOT NULL CHECK (family <> ''), point TEXT NOT NULL CHECK (point <> ''),
  backend TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')), variant TEXT NOT NULL,
  baseline_us REAL, best_us REAL, speedup REAL, rel_l2 REAL, baseline_rel_l2 REAL,
  run_id INTEGER REFERENCES tuning_runs (id),
  experimental INTEGER NOT NULL CHECK (experimental IN (0, 1)),
  reason TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL);
CREATE INDEX verdicts_by_key ON verdicts (class_id, family, point, id);
CREATE TABLE pins (
  arch TEXT PRIMARY KEY NOT NULL CHECK (arch <> ''),
  backend TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')), reason TEXT NOT NULL,
  seeded INTEGER NOT NULL CHECK (seeded IN (0, 1)), created_by TEXT NOT NULL,
  created_at INTEGER NOT NULL);
PRAGMA user_version = 1;
)sql";

// Rows a version-1 daemon would have written: the seed pin, an operator pin, a tuned H100.
constexpr const char* kRowsV1 = R"sql(
INSERT INTO pins VALUES ('sm_89', 'sdpa', 'seeded by version 1', 1, 'seed', 1700000000);
INSERT INTO pins VALUES ('sm_80', 'sdpa', 'A100 under investigation', 0, 'uid:1000', 1700000100);
INSERT INTO device_classes VALUES (1, 'sm_90', 'NVIDIA H100 80GB HBM3', 13000, '13.0', 'a1b2c3d4e5f60718');
INSERT INTO tuning_runs VALUES (1, 1, 'GPU-1', 'startup', 0, 'finished', 1700000200, 1700000300, '');
INSERT INTO measurements VALUES (1, 1, 'bf16.dqk128.dv128.h16.blk64.n16.decode', 'b1.hkv4.tq1.tkv8192',
  'sdpa', '', 120.5, 1.0, 0.002, 0.01, 'ok', '');
INSERT INTO verdicts VALUES (1, 1, 'bf16.dqk128.dv128.h16.blk64.n16.decode', 'b1.hkv4.tq1.tkv8192',
  'sparse', 'sel_fwd.v', 120.5, 80.0, 1.506, 0.0025, 0.002, 1, 0, 'sparse 1.51x', 1700000300);
UPDATE meta SET value = '3' WHERE key = 'verdict_epoch';
)sql";

void make_v1_store(const fs::path& path, bool with_rows) {
  RawDb raw(path);
  raw.exec("PRAGMA synchronous = OFF");  // test speed only: the file is closed before use
  raw.exec(kSchemaV1);
  if (with_rows) raw.exec(kRowsV1);
}

TEST_F(StoreOpen, MigratesAHandMadeVersion1StoreKeepingItsRows) {
  make_v1_store(db_path, true);
  auto store = VerdictStore::open(db_path);
  ASSERT_TRUE(store) << store.error().code << ": " << store.error().message;
  EXPECT_EQ(store->schema_version(), 2);
  EXPECT_EQ(VerdictStore::current_schema_version(), 2);

  EXPECT_EQ(store->epoch(), 3) << "the seeded pin exists, so nothing bumps the epoch";
  auto pins = store->pins();
  ASSERT_EQ(pins.size(), 2u);
  EXPECT_EQ(pins[0].arch, "sm_80");
  EXPECT_EQ(pins[1].arch, "sm_89");
  EXPECT_TRUE(pins[1].seeded);

  auto current = store->current_verdicts(h100_class());
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(current[0].variant, "sel_fwd.v");
  EXPECT_EQ(current[0].run_id, 1);
  EXPECT_EQ(store->measurements(1).size(), 1u);
  EXPECT_EQ(store->runs().size(), 1u);

  // The tables of version 2 work.
  ASSERT_TRUE(store->record_demand({{"sm_90", "bf16.dqk64.dv64.h8.blk32.n8.decode", "b1.hkv1.tq1.tkv4096", 2, 0, 0}}));
  EXPECT_EQ(store->demand().size(), 1u);
  ASSERT_TRUE(store->request_retune("all", "uid:0"));

  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "2");
  EXPECT_EQ(raw.scalar("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(raw.scalar("PRAGMA journal_mode"), "wal");
}

TEST_F(StoreOpen, MigratedStoreOpensAgainWithoutChanges) {
  make_v1_store(db_path, true);
  { ASSERT_TRUE(VerdictStore::open(db_path)); }
  auto again = VerdictStore::open(db_path);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->schema_version(), 2);
  EXPECT_EQ(again->epoch(), 3);
}

TEST_F(StoreOpen, MissingSeedPinIsRestoredAndBumpsTheEpoch) {
  make_v1_store(db_path, false);
  {
    RawDb raw(db_path);
    raw.exec("INSERT INTO pins VALUES ('sm_89', 'sdpa', 'hand-made', 0, 'uid:0', 1)");
  }
  auto store = VerdictStore::open(db_path);
  ASSERT_TRUE(store);
  auto pin = store->pin_for("sm_89");
  ASSERT_TRUE(pin);
  EXPECT_TRUE(pin->seeded);
  EXPECT_EQ(pin->reason, kSm89PinReason);
  EXPECT_EQ(store->epoch(), 1);
}

TEST_F(StoreOpen, CreatesMissingParentDirectories) {
  fs::path deep = dir / "a" / "b" / "state.db";
  auto store = VerdictStore::open(deep);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_TRUE(fs::is_regular_file(deep));
}

TEST_F(StoreOpen, EmptyFileBecomesANewStore) {
  write_bytes(db_path, "");
  auto store = VerdictStore::open(db_path);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_TRUE(store->pin_for("sm_89"));
}

TEST_F(StoreOpen, GarbageFileIsCorruptAndLeftUntouched) {
  std::string garbage;
  for (int i = 0; i < 200; ++i) garbage += "operator notes, not a database, line " + std::to_string(i) + "\n";
  write_bytes(db_path, garbage);

  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "corrupt");
  EXPECT_NE(store.error().message.find(db_path.string()), std::string::npos);
  EXPECT_NE(store.error().message.find("is not an SQLite database"), std::string::npos);
  EXPECT_NE(store.error().message.find("move it aside"), std::string::npos);
  EXPECT_EQ(read_bytes(db_path), garbage);

  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_FALSE(reader);
  EXPECT_EQ(reader.error().code, "corrupt");
  EXPECT_EQ(read_bytes(db_path), garbage);
}

TEST_F(StoreOpen, TruncatedStoreIsCorruptAndLeftUntouched) {
  {
    auto store = open_store();
    CompiledKernel k;
    k.arch = "sm_90";
    k.cubin.assign(40000, 0x5a);
    for (int i = 0; i < 20; ++i) {
      k.variant_key = "variant" + std::to_string(i);
      ASSERT_TRUE(store.put_kernel(k));
    }
    for (int i = 0; i < 200; ++i)
      ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class(), "b" + std::to_string(i) + ".hkv4.tq1.tkv8192")));
  }
  ASSERT_FALSE(fs::exists(dir / "state.db-wal")) << "a clean close checkpoints and removes the WAL";
  auto size = fs::file_size(db_path);
  ASSERT_GT(size, 400'000u);
  fs::resize_file(db_path, size / 2);
  std::string truncated = read_bytes(db_path);

  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "corrupt") << store.error().message;
  EXPECT_NE(store.error().message.find(db_path.string()), std::string::npos);
  EXPECT_EQ(read_bytes(db_path), truncated);
}

TEST_F(StoreOpen, DirectoryInPlaceOfTheFileIsAnErrorAndLeftAlone) {
  fs::create_directory(db_path);
  write_bytes(db_path / "keep.txt", "operator's file");

  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "open_failed");
  EXPECT_NE(store.error().message.find("is a directory"), std::string::npos);
  EXPECT_TRUE(fs::is_directory(db_path));
  EXPECT_EQ(read_bytes(db_path / "keep.txt"), "operator's file");

  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_FALSE(reader);
  EXPECT_EQ(reader.error().code, "open_failed");
}

TEST_F(StoreOpen, SchemaNewerThanThisBuildIsRefusedAndTheFileUntouched) {
  { open_store(); }
  {
    RawDb raw(db_path);
    raw.exec("PRAGMA user_version = 99; CREATE TABLE from_the_future (x);");
  }
  std::string before = read_bytes(db_path);

  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "too_new");
  EXPECT_NE(store.error().message.find("99"), std::string::npos);
  EXPECT_NE(store.error().message.find("newer nsa-tuned"), std::string::npos);
  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_FALSE(reader);
  EXPECT_EQ(reader.error().code, "too_new");

  EXPECT_EQ(read_bytes(db_path), before);
  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), "99");
}

TEST_F(StoreOpen, AnotherProgramsDatabaseIsRefusedAndUntouched) {
  {
    RawDb raw(db_path);
    raw.exec("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT); INSERT INTO photos VALUES (1, 'a.jpg');");
  }
  std::string before = read_bytes(db_path);
  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "not_a_store");
  EXPECT_EQ(read_bytes(db_path), before);
}

TEST_F(StoreOpen, StoreClaimingOurVersionWithoutOurTablesIsCorrupt) {
  {
    RawDb raw(db_path);
    raw.exec("CREATE TABLE meta (key TEXT, value TEXT); PRAGMA user_version = 2;");
  }
  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "corrupt");
  EXPECT_NE(store.error().message.find("no table"), std::string::npos);
}

TEST_F(StoreOpen, UnwritableLocationIsAClearError) {
  fs::path target;
  if (geteuid() == 0) {
    // root ignores permission bits; /proc refuses new directories to everyone.
    target = "/proc/nsa-tune-store-test/state.db";
  } else {
    fs::path locked = dir / "locked";
    fs::create_directory(locked);
    fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec);
    target = locked / "state.db";
  }
  auto store = VerdictStore::open(target);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "open_failed");
  EXPECT_NE(store.error().message.find(target.parent_path().string()), std::string::npos)
      << store.error().message;
  EXPECT_FALSE(fs::exists(target));
}

TEST_F(StoreOpen, ReadOnlyFileIsAClearErrorForTheWriter) {
  if (geteuid() == 0) GTEST_SKIP() << "root can write any file; the permission check needs a normal user";
  { open_store(); }
  fs::permissions(db_path, fs::perms::owner_read);
  auto store = VerdictStore::open(db_path);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "open_failed");
  EXPECT_NE(store.error().message.find("read-only"), std::string::npos);
  EXPECT_TRUE(VerdictStore::open_read_only(db_path)) << "readers still can";
}

TEST_F(StoreOpen, ReadOnlyOpenOfAMissingFileIsNotFoundAndCreatesNothing) {
  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_FALSE(reader);
  EXPECT_EQ(reader.error().code, "not_found");
  EXPECT_NE(reader.error().message.find("start nsa-tuned"), std::string::npos);
  EXPECT_FALSE(fs::exists(db_path));
}

TEST_F(StoreOpen, ReadOnlyOpenOfAnOldSchemaSaysToMigrateAndChangesNothing) {
  make_v1_store(db_path, true);
  std::string before = read_bytes(db_path);
  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_FALSE(reader);
  EXPECT_EQ(reader.error().code, "too_old");
  EXPECT_NE(reader.error().message.find("nsa-tuned"), std::string::npos);
  EXPECT_EQ(read_bytes(db_path), before);
}

TEST_F(StoreOpen, EmptyPathIsAnError) {
  auto store = VerdictStore::open("");
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, "open_failed");
}

}  // namespace
}  // namespace nsa::cache

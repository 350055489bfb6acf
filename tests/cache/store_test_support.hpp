#pragma once
// Shared by the store tests: a fresh temp directory per test case, sample device classes,
// direct SQLite access for what the store's API must not be trusted to report about itself
// (raw schema, PRAGMA integrity_check), and file snapshots to prove a file was left untouched.

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "nsa/cache/verdict_store.hpp"
#include "../support/temp_dir.hpp"

namespace nsa::cache::testing {

namespace fs = std::filesystem;

using nsa::test::TempDir;

/// Every test case gets its own directory and store path.
class StoreTest : public ::testing::Test {
 protected:
  TempDir dir;
  fs::path db_path = dir / "state.db";

  VerdictStore open_store() {
    auto store = VerdictStore::open(db_path);
    if (!store) throw std::runtime_error("open failed: " + store.error().code + ": " + store.error().message);
    return std::move(*store);
  }
};

inline DeviceClass h100_class() {
  return DeviceClass{"sm_90", "NVIDIA H100 80GB HBM3", 13000, "13.0", "a1b2c3d4e5f60718"};
}

inline DeviceClass ada_class() {
  return DeviceClass{"sm_89", "NVIDIA GeForce RTX 4090", 13000, "13.0", "a1b2c3d4e5f60718"};
}

inline Verdict sample_verdict(const DeviceClass& cls, std::string point = "b1.hkv4.tq1.tkv8192",
                              std::string backend = "sparse") {
  Verdict v;
  v.device_class = cls;
  v.family = "bf16.dqk128.dv128.h16.blk64.n16.decode";
  v.point = std::move(point);
  v.backend = std::move(backend);
  v.variant = "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_stages2.sm90";
  v.baseline_us = 120.5;
  v.best_us = 80.25;
  v.speedup = 120.5 / 80.25;
  v.rel_l2 = 2.5e-3;
  v.baseline_rel_l2 = 2.0e-3;
  v.reason = "sparse 1.50x faster";
  return v;
}

/// Direct SQLite access to a file, independent of the store's code.
class RawDb {
 public:
  explicit RawDb(const fs::path& path, int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) {
    if (sqlite3_open_v2(path.c_str(), &m_db, flags, nullptr) != SQLITE_OK)
      throw std::runtime_error("raw open failed: " + std::string(sqlite3_errmsg(m_db)));
  }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;
  ~RawDb() { sqlite3_close_v2(m_db); }

  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(m_db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "?";
      sqlite3_free(err);
      throw std::runtime_error("raw exec failed: " + msg + " in: " + sql.substr(0, 80));
    }
  }

  /// Every value of the first column of every row, as text ("" for NULL).
  std::vector<std::string> column(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(m_db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK)
      throw std::runtime_error("raw prepare failed: " + std::string(sqlite3_errmsg(m_db)));
    std::vector<std::string> out;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      out.emplace_back(text ? reinterpret_cast<const char*>(text) : "");
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) throw std::runtime_error("raw step failed: " + std::string(sqlite3_errmsg(m_db)));
    return out;
  }

  std::string scalar(const std::string& sql) {
    auto values = column(sql);
    return values.empty() ? std::string() : values.front();
  }

 private:
  sqlite3* m_db = nullptr;
};

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

}  // namespace nsa::cache::testing

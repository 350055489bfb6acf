#pragma once
// Private to cache/: move-only owners of `sqlite3*` and `sqlite3_stmt*`, and the one error type
// the store's implementation throws internally. VerdictStore catches it at its public boundary
// and turns it into a StoreError (or a StoreFailure for the reads that have no error channel),
// so nothing outside cache/ ever sees SQLite.

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace nsa::cache::sql {

/// A failed SQLite call: the primary result code (SQLITE_BUSY, SQLITE_CORRUPT, ...), the
/// extended code and SQLite's own message, plus what we were doing ("insert verdict").
class Failure : public std::runtime_error {
 public:
  Failure(int code, int extended_code, std::string what);
  int code() const { return m_code; }
  int extended_code() const { return m_extended; }

 private:
  int m_code;
  int m_extended;
};

class Statement;

/// One connection. Not thread-safe by itself: VerdictStore serialises access with a mutex.
class Database {
 public:
  enum class Mode { read_write_create, read_write, read_only };

  /// Opens `path`. Throws Failure when SQLite cannot open it at all (note that SQLite opens
  /// lazily: a file that is not a database is only detected by the first read).
  static Database open(const std::string& path, Mode mode);

  Database() = default;
  Database(Database&&) noexcept;
  Database& operator=(Database&&) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  /// Runs one or more statements that return no rows we care about.
  void exec(const std::string& sql, std::string_view doing);
  Statement prepare(std::string_view sql) const;
  std::int64_t last_insert_rowid() const;
  int changes() const;
  /// True when SQLite opened the file read-only although we asked for read-write (permissions).
  bool is_read_only() const;
  void set_busy_timeout(int ms);
  sqlite3* handle() const { return m_db; }

 private:
  explicit Database(sqlite3* db) : m_db(db) {}
  sqlite3* m_db = nullptr;
};

/// A prepared statement. Bind with 1-based indices, then `step()` until it returns false.
/// Columns are read with 0-based indices.
class Statement {
 public:
  Statement() = default;
  Statement(Statement&&) noexcept;
  Statement& operator=(Statement&&) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, int value) { return bind(index, std::int64_t{value}); }
  Statement& bind(int index, bool value) { return bind(index, std::int64_t{value ? 1 : 0}); }
  /// A NaN is stored as NULL (SQLite has no NaN); `column_double` maps NULL back to NaN.
  Statement& bind(int index, double value);
  Statement& bind(int index, std::string_view value);
  Statement& bind(int index, const char* value) { return bind(index, std::string_view(value)); }
  Statement& bind(int index, const std::string& value) { return bind(index, std::string_view(value)); }
  Statement& bind_blob(int index, std::span<const std::uint8_t> value);
  Statement& bind_null(int index);

  /// Steps once: true when a row is ready, false when done. Throws Failure on error, naming
  /// `doing` in the message.
  bool step(std::string_view doing);
  /// Steps to completion, for statements that return no rows.
  void run(std::string_view doing);
  /// Clears bindings and rewinds, so a cached statement can be used again.
  void reset();

  std::int64_t column_int64(int col) const;
  int column_int(int col) const { return static_cast<int>(column_int64(col)); }
  bool column_bool(int col) const { return column_int64(col) != 0; }
  double column_double(int col) const;
  std::string column_text(int col) const;
  std::vector<std::uint8_t> column_blob(int col) const;
  bool column_is_null(int col) const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : m_db(db), m_stmt(stmt) {}
  void check_bind(int rc, int index);
  sqlite3* m_db = nullptr;
  sqlite3_stmt* m_stmt = nullptr;
};

/// BEGIN IMMEDIATE on construction (takes the write lock at once, so a busy database waits in
/// busy_timeout here rather than failing half-way), ROLLBACK in the destructor unless commit()
/// ran. Every write of the store goes through one of these.
class Transaction {
 public:
  Transaction(Database& db, std::string_view doing);
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();
  void commit();

 private:
  Database& m_db;
  std::string m_doing;
  bool m_done = false;
};

}  // namespace nsa::cache::sql

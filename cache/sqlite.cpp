#include "sqlite.hpp"

#include <cmath>
#include <limits>
#include <utility>

#include <sqlite3.h>

namespace nsa::cache::sql {

namespace {

std::string message_of(sqlite3* db, int rc, std::string_view doing) {
  std::string msg(doing);
  msg += ": ";
  // sqlite3_errmsg describes the most recent failure on this connection, which is ours: the
  // store holds its mutex around every call.
  msg += db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return msg;
}

[[noreturn]] void fail(sqlite3* db, int rc, std::string_view doing) {
  int extended = db ? sqlite3_extended_errcode(db) : rc;
  throw Failure(rc & 0xff, extended, message_of(db, rc, doing));
}

}  // namespace

Failure::Failure(int code, int extended_code, std::string what)
    : std::runtime_error(std::move(what)), m_code(code), m_extended(extended_code) {}

// Database ---------------------------------------------------------------------------------------

Database Database::open(const std::string& path, Mode mode) {
  int flags = SQLITE_OPEN_NOMUTEX;  // the store serialises access itself
  switch (mode) {
    case Mode::read_write_create: flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE; break;
    case Mode::read_write: flags |= SQLITE_OPEN_READWRITE; break;
    case Mode::read_only: flags |= SQLITE_OPEN_READONLY; break;
  }
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = message_of(db, rc, "open");
    int extended = db ? sqlite3_extended_errcode(db) : rc;
    sqlite3_close_v2(db);  // sqlite3_open_v2 returns a handle even on failure
    throw Failure(rc & 0xff, extended, std::move(msg));
  }
  sqlite3_extended_result_codes(db, 1);
  return Database(db);
}

Database::Database(Database&& other) noexcept : m_db(std::exchange(other.m_db, nullptr)) {}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    if (m_db) sqlite3_close_v2(m_db);
    m_db = std::exchange(other.m_db, nullptr);
  }
  return *this;
}

Database::~Database() {
  // close_v2 defers the close until every statement is finalized, so member order in the
  // owner cannot leak the handle.
  if (m_db) sqlite3_close_v2(m_db);
}

void Database::exec(const std::string& sql, std::string_view doing) {
  char* err = nullptr;
  int rc = sqlite3_exec(m_db, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg(doing);
    msg += ": ";
    msg += err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw Failure(rc & 0xff, sqlite3_extended_errcode(m_db), std::move(msg));
  }
}

Statement Database::prepare(std::string_view sql) const {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(m_db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    std::string doing = "prepare \"";
    doing += sql.substr(0, 60);
    doing += "...\"";
    fail(m_db, rc, doing);
  }
  return Statement(m_db, stmt);
}

std::int64_t Database::last_insert_rowid() const { return sqlite3_last_insert_rowid(m_db); }
int Database::changes() const { return sqlite3_changes(m_db); }
bool Database::is_read_only() const { return sqlite3_db_readonly(m_db, "main") == 1; }
void Database::set_busy_timeout(int ms) { sqlite3_busy_timeout(m_db, ms); }

// Statement --------------------------------------------------------------------------------------

Statement::Statement(Statement&& other) noexcept
    : m_db(std::exchange(other.m_db, nullptr)), m_stmt(std::exchange(other.m_stmt, nullptr)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    if (m_stmt) sqlite3_finalize(m_stmt);
    m_db = std::exchange(other.m_db, nullptr);
    m_stmt = std::exchange(other.m_stmt, nullptr);
  }
  return *this;
}

Statement::~Statement() {
  if (m_stmt) sqlite3_finalize(m_stmt);
}

void Statement::check_bind(int rc, int index) {
  if (rc != SQLITE_OK) fail(m_db, rc, "bind parameter " + std::to_string(index));
}

Statement& Statement::bind(int index, std::int64_t value) {
  check_bind(sqlite3_bind_int64(m_stmt, index, value), index);
  return *this;
}

Statement& Statement::bind(int index, double value) {
  if (std::isnan(value)) return bind_null(index);
  check_bind(sqlite3_bind_double(m_stmt, index, value), index);
  return *this;
}

Statement& Statement::bind(int index, std::string_view value) {
  check_bind(sqlite3_bind_text64(m_stmt, index, value.data(), value.size(), SQLITE_TRANSIENT,
                                 SQLITE_UTF8),
             index);
  return *this;
}

Statement& Statement::bind_blob(int index, std::span<const std::uint8_t> value) {
  // A zero-length blob must still be a blob (not NULL): bind_zeroblob keeps the NOT NULL
  // constraint meaningful for empty binaries.
  int rc = value.empty() ? sqlite3_bind_zeroblob(m_stmt, index, 0)
                         : sqlite3_bind_blob64(m_stmt, index, value.data(), value.size(),
                                               SQLITE_TRANSIENT);
  check_bind(rc, index);
  return *this;
}

Statement& Statement::bind_null(int index) {
  check_bind(sqlite3_bind_null(m_stmt, index), index);
  return *this;
}

bool Statement::step(std::string_view doing) {
  int rc = sqlite3_step(m_stmt);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(m_db, rc, doing);
}

void Statement::run(std::string_view doing) {
  while (step(doing)) {
  }
}

void Statement::reset() {
  sqlite3_reset(m_stmt);
  sqlite3_clear_bindings(m_stmt);
}

std::int64_t Statement::column_int64(int col) const { return sqlite3_column_int64(m_stmt, col); }

double Statement::column_double(int col) const {
  if (sqlite3_column_type(m_stmt, col) == SQLITE_NULL) return std::numeric_limits<double>::quiet_NaN();
  return sqlite3_column_double(m_stmt, col);
}

std::string Statement::column_text(int col) const {
  const unsigned char* text = sqlite3_column_text(m_stmt, col);
  int size = sqlite3_column_bytes(m_stmt, col);
  return text ? std::string(reinterpret_cast<const char*>(text), static_cast<std::size_t>(size))
              : std::string();
}

std::vector<std::uint8_t> Statement::column_blob(int col) const {
  const void* data = sqlite3_column_blob(m_stmt, col);
  int size = sqlite3_column_bytes(m_stmt, col);
  if (!data || size <= 0) return {};
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  return std::vector<std::uint8_t>(bytes, bytes + size);
}

bool Statement::column_is_null(int col) const {
  return sqlite3_column_type(m_stmt, col) == SQLITE_NULL;
}

// Transaction ------------------------------------------------------------------------------------

Transaction::Transaction(Database& db, std::string_view doing) : m_db(db), m_doing(doing) {
  m_db.exec("BEGIN IMMEDIATE", "begin transaction to " + m_doing);
}

Transaction::~Transaction() {
  if (m_done) return;
  // Rollback cannot meaningfully fail here: if it does, SQLite rolls back on its own when the
  // connection closes, and a destructor must not throw.
  try {
    m_db.exec("ROLLBACK", "roll back " + m_doing);
  } catch (const Failure&) {
  }
}

void Transaction::commit() {
  m_db.exec("COMMIT", "commit " + m_doing);
  m_done = true;
}

}  // namespace nsa::cache::sql

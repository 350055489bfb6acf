#pragma once
// Private to cache/: the store's schema as an ordered list of forward migrations.
//
// Migration i (1-based) takes a database at user_version i-1 to user_version i. A released
// migration is never edited: a later schema change is a new entry at the end. The store applies
// each pending migration in its own transaction together with the `PRAGMA user_version` bump,
// so a crash between two migrations leaves a database at a valid older version that the next
// open carries on from. docs/store.md describes the tables.

#include <span>
#include <string_view>

namespace nsa::cache::schema {

struct Migration {
  int version;                // user_version after this step
  std::string_view summary;   // one line, for error messages and docs
  std::string_view sql;       // one or more statements
};

/// Every migration, in order; `migrations().back().version` is the current schema version.
std::span<const Migration> migrations();

/// The current schema version of this build.
int current_version();

}  // namespace nsa::cache::schema

#pragma once
// A tiny leveled logger: one line per event on stderr, "<UTC time> <level> <message>". No
// external library, no buffering beyond one line, so a crash never loses an earlier line and
// journald (which adds its own timestamps) or a terminal read it as written.

#include <cstdarg>
#include <optional>
#include <string_view>

namespace nsa::service::log {

enum class Level { error = 0, warn = 1, info = 2, debug = 3 };

std::optional<Level> parse_level(std::string_view);  // "error", "warn", "info", "debug"
std::string_view to_string(Level);

/// Events above this level are dropped. Default: info. Not thread-safe to change while other
/// threads log (set it once at start).
void set_level(Level);
Level level();
bool enabled(Level);

/// printf-style; the line is written with one write(2) so concurrent writers never interleave.
void write(Level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace nsa::service::log

#define NSA_LOG(lvl, ...)                                                                  \
  do {                                                                                     \
    if (::nsa::service::log::enabled(::nsa::service::log::Level::lvl))                     \
      ::nsa::service::log::write(::nsa::service::log::Level::lvl, __VA_ARGS__);            \
  } while (0)
#define NSA_ERROR(...) NSA_LOG(error, __VA_ARGS__)
#define NSA_WARN(...) NSA_LOG(warn, __VA_ARGS__)
#define NSA_INFO(...) NSA_LOG(info, __VA_ARGS__)
#define NSA_DEBUG(...) NSA_LOG(debug, __VA_ARGS__)

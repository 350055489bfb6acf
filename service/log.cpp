#include "nsa/service/log.hpp"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <string>

#include <sys/time.h>
#include <unistd.h>

namespace nsa::service::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::info)};
}

std::optional<Level> parse_level(std::string_view s) {
  if (s == "error") return Level::error;
  if (s == "warn" || s == "warning") return Level::warn;
  if (s == "info") return Level::info;
  if (s == "debug") return Level::debug;
  return std::nullopt;
}

std::string_view to_string(Level l) {
  switch (l) {
    case Level::error: return "error";
    case Level::warn: return "warn";
    case Level::info: return "info";
    case Level::debug: return "debug";
  }
  return "?";
}

void set_level(Level l) { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }
bool enabled(Level l) { return static_cast<int>(l) <= g_level.load(std::memory_order_relaxed); }

void write(Level l, const char* fmt, ...) {
  char line[2048];
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm utc{};
  gmtime_r(&tv.tv_sec, &utc);
  int n = std::snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %-5s ",
                        utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min,
                        utc.tm_sec, static_cast<int>(tv.tv_usec / 1000), to_string(l).data());
  va_list args;
  va_start(args, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n - 1, fmt, args);
  va_end(args);
  std::size_t len = n + (m < 0 ? 0 : std::min<std::size_t>(m, sizeof line - n - 2));
  // Keep it one line whatever the message held.
  for (std::size_t i = n; i < len; ++i)
    if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
  line[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, len);
  (void)ignored;
}

}  // namespace nsa::service::log

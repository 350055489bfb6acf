#pragma once
// nsa-tuned's configuration and where each value came from.
//
// Four layers, the first that sets a value wins:
//   1. command-line flags        (--state-dir, --socket, ...)
//   2. environment               (NSA_TUNE_STATE_DIR, NSA_TUNE_SOCKET, NSA_TUNE_LOG_LEVEL,
//                                 NSA_TUNE_NO_TUNE, NSA_TUNE_ADMIN_GROUP; the tuner's
//                                 NSA_TUNE_WORKER, NSA_TUNE_EXPERIMENTAL_PINNED, NSA_TUNE_TEST_FAULT)
//   3. the JSON config file      (--config FILE, else NSA_TUNE_CONFIG; none by default)
//   4. built-in defaults         (/var/lib/nsa-tune, /run/nsa-tune/nsa-tuned.sock, info, ...)
// The config file's own path is itself taken from layer 1 or 2. Relative paths inside the file
// are relative to the file's directory, so a file means the same wherever the daemon starts.
// Unknown keys in the file and unparsable values anywhere are errors: a typo must never
// silently mean a default. docs/operations.md has the table; `nsa-tuned --help` repeats it.
//
// The tuner's own settings (docs/tuning.md, "Configuration") live in the file's "tuning" object
// and are read by tuner::tuning_config_from_json; its environment variables are applied over
// them by tuner::apply_tuning_env. Both are checked at start, so a bad tuning key is exit 64
// like any other configuration error, never a tuner that silently does not start.

#include <chrono>
#include <expected>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/service/log.hpp"
#include "nsa/tuner/tuning_service.hpp"

namespace nsa::service {

/// "0.1.0": the project version this build was made from.
extern const char* const kVersion;

inline constexpr const char* kDefaultStateDir = "/var/lib/nsa-tune";
inline constexpr const char* kDefaultSocket = "/run/nsa-tune/nsa-tuned.sock";

/// Exit codes of nsa-tuned (documented in --help and docs/operations.md).
namespace daemon_exit {
inline constexpr int ok = 0;
inline constexpr int cannot_serve = 1;   // a live daemon holds the socket or state dir; bind failed
inline constexpr int store_error = 2;    // the store cannot be opened, migrated or written
inline constexpr int usage = 64;         // bad flag, environment value or config file
}  // namespace daemon_exit

struct Config {
  std::filesystem::path state_dir = kDefaultStateDir;
  std::filesystem::path socket = kDefaultSocket;
  std::filesystem::path config_file;          // empty: no config file
  log::Level log_level = log::Level::info;
  bool no_tune = false;
  std::string admin_group;                    // empty: only the daemon's uid (and root)
  int max_connections = 1024;
  std::chrono::milliseconds frame_timeout{10000};     // a started frame must end within this
  std::chrono::milliseconds demand_flush_interval{1000};
  /// The tuner's settings: the file's "tuning" object over the defaults, then the environment.
  tuner::TuningConfig tuning;
  /// For each setting ("state_dir", "socket", ...), where its value came from:
  /// "flag", "env NSA_TUNE_SOCKET", "file /etc/nsa-tune/nsa-tuned.json" or "default".
  std::map<std::string, std::string> sources;

  std::filesystem::path store_path() const { return state_dir / "state.db"; }
};

/// One layer's values; unset means "not said here".
struct Settings {
  std::optional<std::filesystem::path> state_dir;
  std::optional<std::filesystem::path> socket;
  std::optional<log::Level> log_level;
  std::optional<bool> no_tune;
  std::optional<std::string> admin_group;
  std::optional<int> max_connections;
  std::optional<int> frame_timeout_ms;
  std::optional<int> demand_flush_ms;
  std::optional<nlohmann::json> tuning;       // the config file's "tuning" object, unparsed
};

/// Reads the environment through `env` (a test passes a map, main passes getenv).
using EnvLookup = std::function<std::optional<std::string>(const char* name)>;
EnvLookup process_env();

/// Errors name the variable or key and say what values are accepted.
std::expected<Settings, std::string> settings_from_env(const EnvLookup& env);
/// The config file: one JSON object with the keys state_dir, socket, log_level, no_tune,
/// admin_group, max_connections, frame_timeout_ms, demand_flush_ms, tuning (all optional).
std::expected<Settings, std::string> settings_from_file(const std::filesystem::path& file);

/// Applies the layers in precedence order over the defaults and checks the ranges, including
/// the file's "tuning" object (tuner::tuning_config_from_json; a relative "worker" path is
/// relative to the file's directory). The tuner's environment is applied by load_daemon_config.
std::expected<Config, std::string> merge_settings(const Settings& flags, const Settings& env,
                                                  const Settings& file,
                                                  const std::filesystem::path& config_file);

/// What the command line asked for when it did not ask to run: --help or --version (print
/// `text` to stdout, exit 0) or a usage error (print `text` to stderr, exit `code`).
struct CommandLineExit {
  int code = 0;
  std::string text;
};

/// Parses nsa-tuned's command line and resolves the full configuration.
std::expected<Config, CommandLineExit> load_daemon_config(int argc, const char* const* argv,
                                                          const EnvLookup& env);

/// Boolean spellings accepted in the environment: 1/0, true/false, yes/no, on/off.
std::optional<bool> parse_bool(std::string_view);

}  // namespace nsa::service

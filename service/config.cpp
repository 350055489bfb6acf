#include "nsa/service/config.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#ifndef NSA_TUNE_VERSION
#define NSA_TUNE_VERSION "0.0.0"
#endif

namespace nsa::service {

const char* const kVersion = NSA_TUNE_VERSION;

namespace {

constexpr const char* kHelpFooter = R"(
Precedence: flags > environment > config file > defaults.
Environment:
  NSA_TUNE_STATE_DIR    same as --state-dir
  NSA_TUNE_SOCKET       same as --socket
  NSA_TUNE_CONFIG       same as --config
  NSA_TUNE_LOG_LEVEL    same as --log-level
  NSA_TUNE_NO_TUNE      1/true/yes/on = --no-tune, 0/false/no/off = tune
  NSA_TUNE_ADMIN_GROUP  same as --admin-group
  NSA_TUNE_WORKER       the tuner's worker binary (default: nsa-tune-worker next to nsa-tuned)
  NSA_TUNE_EXPERIMENTAL_PINNED  1 = also tune pinned archs, as stored experiments (research)
Config file: one JSON object with the keys state_dir, socket, log_level, no_tune, admin_group,
  max_connections, frame_timeout_ms, demand_flush_ms (paths relative to the file's directory),
  and "tuning": the tuner's settings (docs/tuning.md, "Configuration").
Exit codes: 0 clean shutdown (SIGTERM/SIGINT), 1 cannot serve (another daemon holds the socket
  or state dir, the socket cannot be bound), 2 store error, 64 usage or configuration error.
See docs/operations.md.)";

std::expected<log::Level, std::string> level_from(const std::string& text, const std::string& what) {
  if (auto l = log::parse_level(text)) return *l;
  return std::unexpected(what + " must be one of error, warn, info, debug; got '" + text + "'");
}

// Layer `upper` wins over `lower` for each value it sets.
template <class T>
void take(std::optional<T>& value, std::string& source, const std::optional<T>& layer,
          const std::string& layer_name) {
  if (layer && !value) {
    value = layer;
    source = layer_name;
  }
}

}  // namespace

std::optional<bool> parse_bool(std::string_view s) {
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off" || s.empty()) return false;
  return std::nullopt;
}

EnvLookup process_env() {
  return [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

std::expected<Settings, std::string> settings_from_env(const EnvLookup& env) {
  Settings s;
  // An empty variable counts as unset (a shell's `VAR= cmd` idiom), except NO_TUNE where
  // parse_bool reads empty as false, which is the same thing.
  auto get = [&](const char* name) -> std::optional<std::string> {
    auto v = env(name);
    if (!v || v->empty()) return std::nullopt;
    return v;
  };
  if (auto v = get("NSA_TUNE_STATE_DIR")) s.state_dir = *v;
  if (auto v = get("NSA_TUNE_SOCKET")) s.socket = *v;
  if (auto v = get("NSA_TUNE_LOG_LEVEL")) {
    auto l = level_from(*v, "NSA_TUNE_LOG_LEVEL");
    if (!l) return std::unexpected(l.error());
    s.log_level = *l;
  }
  if (auto v = get("NSA_TUNE_NO_TUNE")) {
    auto b = parse_bool(*v);
    if (!b)
      return std::unexpected("NSA_TUNE_NO_TUNE must be 1/true/yes/on or 0/false/no/off; got '" +
                             *v + "'");
    s.no_tune = *b;
  }
  if (auto v = get("NSA_TUNE_ADMIN_GROUP")) s.admin_group = *v;
  return s;
}

std::expected<Settings, std::string> settings_from_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) {
    return std::unexpected("cannot read config file " + file.string() + ": " +
                           std::strerror(errno) + "; fix the path given by --config or NSA_TUNE_CONFIG");
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    return std::unexpected("config file " + file.string() + " is not valid JSON: " + e.what());
  }
  if (!j.is_object())
    return std::unexpected("config file " + file.string() + " must hold one JSON object");
  const auto base = file.parent_path();
  auto where = [&](const std::string& key) { return "config file " + file.string() + ": \"" + key + "\""; };
  Settings s;
  for (const auto& [key, value] : j.items()) {
    auto want_string = [&]() -> std::expected<std::string, std::string> {
      if (!value.is_string()) return std::unexpected(where(key) + " must be a string");
      return value.get<std::string>();
    };
    auto want_int = [&]() -> std::expected<int, std::string> {
      if (!value.is_number_integer()) return std::unexpected(where(key) + " must be an integer");
      return value.get<int>();
    };
    if (key == "state_dir" || key == "socket") {
      auto v = want_string();
      if (!v) return std::unexpected(v.error());
      if (v->empty()) return std::unexpected(where(key) + " must not be empty");
      std::filesystem::path p = *v;
      if (p.is_relative()) p = base / p;
      (key == "state_dir" ? s.state_dir : s.socket) = p;
    } else if (key == "log_level") {
      auto v = want_string();
      if (!v) return std::unexpected(v.error());
      auto l = level_from(*v, where(key));
      if (!l) return std::unexpected(l.error());
      s.log_level = *l;
    } else if (key == "no_tune") {
      if (!value.is_boolean()) return std::unexpected(where(key) + " must be true or false");
      s.no_tune = value.get<bool>();
    } else if (key == "admin_group") {
      auto v = want_string();
      if (!v) return std::unexpected(v.error());
      s.admin_group = *v;
    } else if (key == "max_connections" || key == "frame_timeout_ms" || key == "demand_flush_ms") {
      auto v = want_int();
      if (!v) return std::unexpected(v.error());
      (key == "max_connections" ? s.max_connections
       : key == "frame_timeout_ms" ? s.frame_timeout_ms
                                   : s.demand_flush_ms) = *v;
    } else if (key == "tuning") {
      if (!value.is_object())
        return std::unexpected(where(key) + " must be an object of tuner settings (docs/tuning.md, \"Configuration\")");
      nlohmann::json t = value;
      // Like the other paths of the file: relative to the file's directory.
      if (auto w = t.find("worker"); w != t.end() && w->is_string() && !w->get_ref<const std::string&>().empty()) {
        std::filesystem::path p = w->get<std::string>();
        if (p.is_relative() && p.has_parent_path()) *w = (base / p).string();
      }
      s.tuning = std::move(t);
    } else {
      return std::unexpected(where(key) +
                             " is not a known key; known: state_dir, socket, log_level, no_tune, "
                             "admin_group, max_connections, frame_timeout_ms, demand_flush_ms, tuning");
    }
  }
  return s;
}

std::expected<Config, std::string> merge_settings(const Settings& flags, const Settings& env,
                                                  const Settings& file,
                                                  const std::filesystem::path& config_file) {
  const std::string file_name = "file " + config_file.string();
  Config c;
  c.config_file = config_file;
  Settings m;  // merged
  std::map<std::string, std::string>& src = c.sources;
#define NSA_LAYERS(field, env_name)                               \
  do {                                                            \
    std::string& s = src[#field];                                 \
    take(m.field, s, flags.field, "flag");                        \
    take(m.field, s, env.field, env_name);                        \
    take(m.field, s, file.field, file_name);                      \
    if (s.empty()) s = "default";                                 \
  } while (0)
  NSA_LAYERS(state_dir, "env NSA_TUNE_STATE_DIR");
  NSA_LAYERS(socket, "env NSA_TUNE_SOCKET");
  NSA_LAYERS(log_level, "env NSA_TUNE_LOG_LEVEL");
  NSA_LAYERS(no_tune, "env NSA_TUNE_NO_TUNE");
  NSA_LAYERS(admin_group, "env NSA_TUNE_ADMIN_GROUP");
  NSA_LAYERS(max_connections, "env");
  NSA_LAYERS(frame_timeout_ms, "env");
  NSA_LAYERS(demand_flush_ms, "env");
#undef NSA_LAYERS
  if (m.state_dir) c.state_dir = *m.state_dir;
  if (m.socket) c.socket = *m.socket;
  if (m.log_level) c.log_level = *m.log_level;
  if (m.no_tune) c.no_tune = *m.no_tune;
  if (m.admin_group) c.admin_group = *m.admin_group;
  if (m.max_connections) {
    if (*m.max_connections < 1 || *m.max_connections > 65536)
      return std::unexpected("max_connections (" + src["max_connections"] + ") must be in [1, 65536]; got " +
                             std::to_string(*m.max_connections));
    c.max_connections = *m.max_connections;
  }
  if (m.frame_timeout_ms) {
    if (*m.frame_timeout_ms < 50 || *m.frame_timeout_ms > 3'600'000)
      return std::unexpected("frame_timeout_ms (" + src["frame_timeout_ms"] +
                             ") must be in [50, 3600000]; got " + std::to_string(*m.frame_timeout_ms));
    c.frame_timeout = std::chrono::milliseconds(*m.frame_timeout_ms);
  }
  if (m.demand_flush_ms) {
    if (*m.demand_flush_ms < 10 || *m.demand_flush_ms > 600'000)
      return std::unexpected("demand_flush_ms (" + src["demand_flush_ms"] +
                             ") must be in [10, 600000]; got " + std::to_string(*m.demand_flush_ms));
    c.demand_flush_interval = std::chrono::milliseconds(*m.demand_flush_ms);
  }
  if (file.tuning) {
    auto t = tuner::tuning_config_from_json(*file.tuning);
    if (!t) return std::unexpected("config file " + config_file.string() + ": " + t.error());
    c.tuning = std::move(*t);
    src["tuning"] = file_name;
  } else {
    src["tuning"] = "default";
  }
  if (c.state_dir.empty()) return std::unexpected("the state dir (" + src["state_dir"] + ") must not be empty");
  if (c.socket.empty()) return std::unexpected("the socket path (" + src["socket"] + ") must not be empty");
  // sockaddr_un holds 108 bytes including the terminator.
  if (c.socket.string().size() > 107)
    return std::unexpected("the socket path " + c.socket.string() + " (" + src["socket"] +
                           ") is longer than the 107 bytes a Unix socket address holds; choose a shorter one");
  return c;
}

std::expected<Config, CommandLineExit> load_daemon_config(int argc, const char* const* argv,
                                                          const EnvLookup& env) {
  CLI::App app{"nsa-tuned: answers which selection-attention backend to run for a shape on this "
               "host's GPUs, over a local Unix socket.",
               "nsa-tuned"};
  app.footer(kHelpFooter);
  std::string state_dir, socket, config, log_level, admin_group;
  bool no_tune = false, version = false;
  int max_connections = 0, frame_timeout_ms = 0, demand_flush_ms = 0;
  app.add_option("--state-dir", state_dir,
                 std::string("directory of the store (state.db) and compiled kernels; default ") +
                     kDefaultStateDir);
  app.add_option("--socket", socket, std::string("Unix socket to serve on; default ") + kDefaultSocket);
  app.add_option("--config", config, "JSON config file (see below); default: none");
  app.add_option("--log-level", log_level, "error, warn, info (default) or debug");
  app.add_flag("--no-tune", no_tune, "never tune: serve stored verdicts, pins and fallbacks only");
  app.add_option("--admin-group", admin_group,
                 "group whose members may pin, unpin and retune (besides the daemon's own uid)");
  app.add_option("--max-connections", max_connections, "concurrent client connections; default 1024");
  app.add_option("--frame-timeout-ms", frame_timeout_ms,
                 "a request frame must be complete this long after its first byte; default 10000");
  app.add_option("--demand-flush-ms", demand_flush_ms,
                 "how often untuned demand is written to the store; default 1000");
  app.add_flag("--version", version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    return std::unexpected(CommandLineExit{0, app.help()});
  } catch (const CLI::ParseError& e) {
    return std::unexpected(CommandLineExit{daemon_exit::usage,
                                           std::string("nsa-tuned: ") + e.what() +
                                               "\nRun 'nsa-tuned --help' for the flags."});
  }
  if (version) return std::unexpected(CommandLineExit{0, std::string("nsa-tuned ") + kVersion + "\n"});

  auto usage = [](const std::string& m) {
    return std::unexpected(CommandLineExit{daemon_exit::usage, "nsa-tuned: " + m});
  };
  Settings flags;
  if (app.count("--state-dir")) flags.state_dir = state_dir;
  if (app.count("--socket")) flags.socket = socket;
  if (app.count("--log-level")) {
    auto l = level_from(log_level, "--log-level");
    if (!l) return usage(l.error());
    flags.log_level = *l;
  }
  if (no_tune) flags.no_tune = true;
  if (app.count("--admin-group")) flags.admin_group = admin_group;
  if (app.count("--max-connections")) flags.max_connections = max_connections;
  if (app.count("--frame-timeout-ms")) flags.frame_timeout_ms = frame_timeout_ms;
  if (app.count("--demand-flush-ms")) flags.demand_flush_ms = demand_flush_ms;

  auto env_settings = settings_from_env(env);
  if (!env_settings) return usage(env_settings.error());

  std::filesystem::path config_file;
  if (app.count("--config")) {
    config_file = config;
  } else if (auto v = env("NSA_TUNE_CONFIG"); v && !v->empty()) {
    config_file = *v;
  }
  Settings file_settings;
  if (!config_file.empty()) {
    auto f = settings_from_file(config_file);
    if (!f) return usage(f.error());
    file_settings = *f;
  }
  auto merged = merge_settings(flags, *env_settings, file_settings, config_file);
  if (!merged) return usage(merged.error());
  // An empty variable counts as unset here too, as it does for the daemon's own variables.
  const EnvLookup non_empty = [&env](const char* name) -> std::optional<std::string> {
    auto v = env(name);
    if (!v || v->empty()) return std::nullopt;
    return v;
  };
  if (auto e = tuner::apply_tuning_env(merged->tuning, non_empty)) return usage(*e);
  if (auto e = merged->tuning.validate()) return usage("tuning configuration (" + merged->sources["tuning"] + "): " + *e);
  return *merged;
}

}  // namespace nsa::service

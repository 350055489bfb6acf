// nsa-tunectl: the operators' command line for nsa-tuned.
//
//   nsa-tunectl [--socket PATH] [--state-dir DIR] [--config FILE] [--timeout-ms N] COMMAND ...
//     report [--format text|json|csv|markdown]   per-arch verdicts, pins, speedups
//     status [--json]                            the daemon (or, without one, the store)
//     query --d-qk .. --t-kv .. [--json]         a dispatch from the shell
//     pins [--json]                              the pins
//     pin ARCH --reason TEXT                     force the fallback on an arch (admin)
//     unpin ARCH                                 remove an operator pin (admin)
//     retune [SCOPE]                             queue a re-tune (admin)
//
// Paths resolve like the daemon's (flags > NSA_TUNE_SOCKET / NSA_TUNE_STATE_DIR > the config
// file from --config or NSA_TUNE_CONFIG > defaults), so `nsa-tunectl` with no flags talks to
// the daemon that the same environment would start; with only a state dir given, a socket
// named nsa-tuned.sock inside it is used. `report`, `status` and `pins` read the
// store directly (read-only; WAL lets them while a daemon writes) when no daemon answers, and
// say so on stderr.
//
// Exit codes: 0 ok, 1 the daemon answered with an error (or the store could not be read),
// 2 usage, 3 the daemon is unavailable for an op that needs it.

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/api/protocol.hpp"
#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/sync_client.hpp"
#include "nsa/tuner/report.hpp"

using nlohmann::json;
using namespace nsa::service;

namespace {

namespace exit_code {
constexpr int ok = 0;
constexpr int error_reply = 1;
constexpr int usage = 2;
constexpr int unavailable = 3;
}  // namespace exit_code

struct Paths {
  std::filesystem::path socket;
  std::filesystem::path state_dir;
  std::chrono::milliseconds timeout{5000};
};

std::string human_bytes(std::uint64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GiB", b / 1073741824.0);
  return buf;
}

std::string human_time(std::int64_t unix_s) {
  if (unix_s <= 0) return "-";
  std::time_t t = unix_s;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string human_duration(double s) {
  long long t = static_cast<long long>(s);
  char buf[64];
  if (t >= 86400) std::snprintf(buf, sizeof buf, "%lldd %lldh", t / 86400, t % 86400 / 3600);
  else if (t >= 3600) std::snprintf(buf, sizeof buf, "%lldh %lldm", t / 3600, t % 3600 / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%lldm %llds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%.1fs", s);
  return buf;
}

std::string str(const json& j, const char* key, const std::string& fallback = "-") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->is_string() ? it->get<std::string>() : it->dump();
}

/// Connects and says hello. nullopt with `why` filled when no daemon answers.
std::optional<SyncClient> connect(const Paths& p, std::string& why) {
  auto c = SyncClient::connect(p.socket, p.timeout, true, std::string("nsa-tunectl ") + kVersion);
  if (!c) {
    why = c.error().message;
    return std::nullopt;
  }
  return std::move(*c);
}

int unavailable(const Paths& p, const std::string& why) {
  std::cerr << "nsa-tunectl: no daemon answers on " << p.socket.string() << ": " << why
            << "\n  start nsa-tuned, or point --socket (or NSA_TUNE_SOCKET) at the one that runs\n";
  return exit_code::unavailable;
}

/// Sends one request; prints and maps failures. nullopt means "exit with `code`".
std::optional<json> call(SyncClient& c, const Paths& p, json request, int& code) {
  const std::string op = request.value("op", "?");
  auto r = c.request(std::move(request));
  if (!r) {
    code = unavailable(p, r.error().message);
    return std::nullopt;
  }
  if (!r->value("ok", false)) {
    const json& e = (*r)["error"];
    std::cerr << "nsa-tunectl: " << op << " failed (" << str(e, "code") << "): " << str(e, "message") << "\n";
    code = exit_code::error_reply;
    return std::nullopt;
  }
  return std::move(*r);
}

std::expected<nsa::cache::VerdictStore, std::string> open_store(const Paths& p) {
  const auto path = p.state_dir / "state.db";
  auto s = nsa::cache::VerdictStore::open_read_only(path);
  if (!s) return std::unexpected("cannot read the store " + path.string() + " (" + s.error().code + "): " + s.error().message);
  return std::move(*s);
}

/// The device classes of the devices the daemon recorded at its last start, with this build's
/// kernel-source hash: what "current" means to a reader that does not probe the GPU itself.
std::vector<nsa::cache::DeviceClass> recorded_classes(const nsa::cache::VerdictStore& store) {
  auto devices = store.devices();
  std::int64_t last = 0;
  for (const auto& d : devices) last = std::max(last, d.seen_at);
  std::vector<nsa::cache::DeviceClass> out;
  const std::string hash = nsa::jit::kernel_source_hash();
  for (const auto& d : devices) {
    if (d.seen_at != last) continue;
    auto cls = nsa::cache::class_of(d, hash);
    if (std::find(out.begin(), out.end(), cls) == out.end()) out.push_back(cls);
  }
  return out;
}

// report ------------------------------------------------------------------------------------

int cmd_report(const Paths& p, const std::string& format_name) {
  auto format = nsa::tuner::parse_report_format(format_name);
  if (!format) {
    std::cerr << "nsa-tunectl: unknown report format '" << format_name << "'; use text, json, csv or markdown\n";
    return exit_code::usage;
  }
  std::string why;
  if (auto c = connect(p, why)) {
    int code = 0;
    auto r = call(*c, p, json{{"op", "report"}}, code);
    if (!r) return code;
    std::cout << nsa::tuner::render_report((*r)["report"], *format);
    return exit_code::ok;
  }
  std::cerr << "nsa-tunectl: no daemon answers on " << p.socket.string() << " (" << why
            << "); reading the store " << (p.state_dir / "state.db").string() << " directly\n";
  auto store = open_store(p);
  if (!store) {
    std::cerr << "nsa-tunectl: " << store.error() << "\n";
    return exit_code::error_reply;
  }
  try {
    std::cout << nsa::tuner::render_report(nsa::tuner::build_report(*store, recorded_classes(*store)), *format);
  } catch (const nsa::cache::StoreFailure& e) {
    std::cerr << "nsa-tunectl: reading the store failed: " << e.what() << "\n";
    return exit_code::error_reply;
  }
  return exit_code::ok;
}

// status ------------------------------------------------------------------------------------

void print_daemon_status(const json& s) {
  std::printf("daemon      nsa-tuned %s (pid %s), protocol %s, up %s\n", str(s, "daemon").c_str(),
              str(s, "pid").c_str(), str(s, "protocol").c_str(),
              human_duration(s.value("uptime_s", 0.0)).c_str());
  std::printf("socket      %s\n", str(s, "socket").c_str());
  if (s.contains("connections")) {
    const json& c = s["connections"];
    std::printf("connections %s open (max %s), %s accepted, %s refused, %s subscribed\n", str(c, "open").c_str(),
                str(c, "max").c_str(), str(c, "accepted").c_str(), str(c, "refused").c_str(),
                str(c, "subscribers").c_str());
  }
  if (s.contains("store")) {
    const json& st = s["store"];
    std::printf("store       %s (schema %s, epoch %s)\n", str(st, "path").c_str(), str(st, "schema_version").c_str(),
                str(st, "epoch").c_str());
  }
  const json& d = s.value("driver", json::object());
  if (!d.value("loaded", false) || !d.value("error", json()).is_null()) {
    std::printf("driver      not usable: %s\n", str(d, "error", "unknown").c_str());
  } else {
    std::printf("driver      %s, NVRTC %s\n", str(d, "version").c_str(), str(s, "nvrtc").c_str());
  }
  const json& devices = s.value("devices", json::array());
  if (devices.empty()) std::printf("devices     none: every device query is answered sdpa/no_device\n");
  for (const auto& dev : devices) {
    std::printf("device %-4s %s, %s, %s SMs, %s, %s%s, %s current verdicts\n", str(dev, "ordinal").c_str(),
                str(dev, "name").c_str(), str(dev, "arch").c_str(), str(dev, "sm_count").c_str(),
                human_bytes(dev.value("memory_bytes", std::uint64_t{0})).c_str(), str(dev, "uuid").c_str(),
                dev.value("pinned", false) ? ", PINNED" : "", str(dev, "current_verdicts", "0").c_str());
  }
  if (s.contains("counts")) {
    const json& c = s["counts"];
    std::string archs;
    for (const auto& a : c.value("pinned_archs", json::array())) archs += (archs.empty() ? "" : ", ") + a.get<std::string>();
    std::printf("pins        %s (%s)\n", str(c, "pins").c_str(), archs.c_str());
    std::printf("verdicts    %s current, %s compiled kernels\n", str(c, "current_verdicts").c_str(),
                str(c, "compiled_kernels").c_str());
    std::printf("demand      %s untuned points recorded, %s not yet flushed\n", str(c, "demand_recorded").c_str(),
                str(c, "demand_unflushed").c_str());
  }
  if (s.contains("requests")) {
    const json& r = s["requests"];
    std::printf("requests    %s served, %s problems answered, %s errors, %s timeouts\n", str(r, "served").c_str(),
                str(r, "problems").c_str(), str(r, "errors").c_str(), str(r, "timeouts").c_str());
  }
  std::printf("tuning      %s\n", s.contains("tuning_note") ? str(s, "tuning_note").c_str()
                                 : s.value("tuning_enabled", false) ? "enabled" : "disabled");
  for (const auto& q : s.value("pending_retunes", json::array()))
    std::printf("retune #%s  %s, requested by %s at %s\n", str(q, "id").c_str(), str(q, "scope").c_str(),
                str(q, "requested_by").c_str(), human_time(q.value("requested_at", std::int64_t{0})).c_str());
}

int store_status(const Paths& p, bool as_json, const std::string& why) {
  auto store = open_store(p);
  if (!store) {
    std::cerr << "nsa-tunectl: " << store.error() << "\n";
    return exit_code::error_reply;
  }
  try {
    json j;
    j["daemon"] = nullptr;
    j["daemon_unavailable"] = why;
    j["store"] = json{{"path", store->path().string()}, {"schema_version", store->schema_version()},
                      {"epoch", store->epoch()}};
    json devices = json::array();
    for (const auto& d : store->devices())
      devices.push_back(json{{"ordinal", d.ordinal}, {"uuid", d.uuid}, {"name", d.name}, {"arch", d.arch},
                             {"sm_count", d.sm_count}, {"memory_bytes", d.memory_bytes},
                             {"driver_version", d.driver_version}, {"seen_at", d.seen_at}});
    j["recorded_devices"] = devices;
    json pins = json::array();
    for (const auto& pin : store->pins())
      pins.push_back(json{{"arch", pin.arch}, {"backend", pin.backend}, {"reason", pin.reason},
                          {"seeded", pin.seeded}, {"created_by", pin.created_by}});
    j["pins"] = pins;
    json retunes = json::array();
    for (const auto& q : store->pending_retunes())
      retunes.push_back(json{{"id", q.id}, {"scope", q.scope}, {"requested_by", q.requested_by},
                             {"requested_at", q.requested_at}});
    j["pending_retunes"] = retunes;
    j["demand_recorded"] = store->demand(100000).size();
    j["compiled_kernels"] = store->kernel_count();
    if (as_json) {
      std::cout << j.dump(2) << "\n";
      return exit_code::ok;
    }
    std::printf("daemon      not running (%s)\n", why.c_str());
    std::printf("store       %s (schema %d, epoch %lld)\n", store->path().c_str(), store->schema_version(),
                static_cast<long long>(store->epoch()));
    if (devices.empty()) std::printf("devices     none recorded\n");
    for (const auto& d : devices)
      std::printf("device %-4s %s, %s, %s (last seen %s)\n", str(d, "ordinal").c_str(), str(d, "name").c_str(),
                  str(d, "arch").c_str(), str(d, "uuid").c_str(), human_time(d.value("seen_at", std::int64_t{0})).c_str());
    for (const auto& pin : pins)
      std::printf("pin         %s -> %s%s: %s\n", str(pin, "arch").c_str(), str(pin, "backend").c_str(),
                  pin.value("seeded", false) ? " (seeded)" : "", str(pin, "reason").c_str());
    std::printf("demand      %s untuned points recorded\n", str(j, "demand_recorded").c_str());
    std::printf("retunes     %zu pending\n", retunes.size());
    return exit_code::ok;
  } catch (const nsa::cache::StoreFailure& e) {
    std::cerr << "nsa-tunectl: reading the store failed: " << e.what() << "\n";
    return exit_code::error_reply;
  }
}

int cmd_status(const Paths& p, bool as_json) {
  std::string why;
  if (auto c = connect(p, why)) {
    int code = 0;
    auto r = call(*c, p, json{{"op", "status"}}, code);
    if (!r) return code;
    r->erase("id");
    r->erase("ok");
    if (as_json) std::cout << r->dump(2) << "\n";
    else print_daemon_status(*r);
    return exit_code::ok;
  }
  std::cerr << "nsa-tunectl: no daemon answers on " << p.socket.string() << " (" << why
            << "); reading the store " << (p.state_dir / "state.db").string() << " directly\n";
  return store_status(p, as_json, why);
}

// query -------------------------------------------------------------------------------------

struct QueryArgs {
  std::optional<int> device;
  std::string device_uuid, arch, dtype = "bf16";
  int d_qk = 0, d_v = 0, h = 0, h_kv = 0, block = 0, n = 0, batch = 1;
  std::int64_t t_q = 1, t_kv = 0;
  bool as_json = false;
};

int cmd_query(const Paths& p, const QueryArgs& q) {
  json problem{{"dtype", q.dtype}, {"d_qk", q.d_qk}, {"d_v", q.d_v}, {"h", q.h},     {"h_kv", q.h_kv},
               {"block", q.block}, {"n", q.n},       {"t_q", q.t_q}, {"t_kv", q.t_kv}, {"batch", q.batch}};
  if (q.device) problem["device"] = *q.device;
  if (!q.device_uuid.empty()) problem["device_uuid"] = q.device_uuid;
  if (!q.arch.empty()) problem["arch"] = q.arch;
  std::string why;
  auto c = connect(p, why);
  if (!c) return unavailable(p, why);
  int code = 0;
  auto r = call(*c, p, json{{"op", "dispatch"}, {"problems", json::array({problem})}}, code);
  if (!r) return code;
  const json& a = (*r)["answers"][0];
  if (q.as_json) {
    std::cout << a.dump() << "\n";
    return exit_code::ok;
  }
  std::printf("backend     %s\n", str(a, "backend").c_str());
  std::printf("provenance  %s\n", str(a, "provenance").c_str());
  std::printf("arch        %s\n", str(a, "arch").c_str());
  if (!a.value("variant", json()).is_null()) std::printf("variant     %s\n", str(a, "variant").c_str());
  if (!a.value("speedup", json()).is_null()) std::printf("speedup     %.3fx\n", a["speedup"].get<double>());
  if (!a.value("run_id", json()).is_null()) std::printf("run         %s\n", str(a, "run_id").c_str());
  if (!a.value("launch", json()).is_null()) std::printf("launch      %s\n", a["launch"].dump().c_str());
  std::printf("reason      %s\n", str(a, "reason").c_str());
  std::printf("epoch       %s\n", str(*r, "epoch").c_str());
  return exit_code::ok;
}

// pins, pin, unpin, retune --------------------------------------------------------------------

void print_pins(const json& pins) {
  if (pins.empty()) std::printf("no pins\n");
  for (const auto& pin : pins)
    std::printf("%-8s -> %s%s, by %s at %s\n         %s\n", str(pin, "arch").c_str(), str(pin, "backend").c_str(),
                pin.value("seeded", false) ? " (seeded, permanent)" : "", str(pin, "created_by").c_str(),
                human_time(pin.value("created_at", std::int64_t{0})).c_str(), str(pin, "reason").c_str());
}

int cmd_pins(const Paths& p, bool as_json) {
  std::string why;
  json pins = json::array();
  if (auto c = connect(p, why)) {
    int code = 0;
    auto r = call(*c, p, json{{"op", "pins"}}, code);
    if (!r) return code;
    pins = (*r)["pins"];
  } else {
    std::cerr << "nsa-tunectl: no daemon answers on " << p.socket.string() << " (" << why
              << "); reading the store " << (p.state_dir / "state.db").string() << " directly\n";
    auto store = open_store(p);
    if (!store) {
      std::cerr << "nsa-tunectl: " << store.error() << "\n";
      return exit_code::error_reply;
    }
    for (const auto& pin : store->pins())
      pins.push_back(json{{"arch", pin.arch}, {"backend", pin.backend}, {"reason", pin.reason},
                          {"seeded", pin.seeded}, {"created_by", pin.created_by}, {"created_at", pin.created_at}});
  }
  if (as_json) std::cout << pins.dump(2) << "\n";
  else print_pins(pins);
  return exit_code::ok;
}

int cmd_admin(const Paths& p, json request, const std::function<void(const json&)>& print) {
  std::string why;
  auto c = connect(p, why);
  if (!c) return unavailable(p, why);
  int code = 0;
  auto r = call(*c, p, std::move(request), code);
  if (!r) return code;
  print(*r);
  return exit_code::ok;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nsa-tunectl: report, query and administer nsa-tuned, the selection-attention dispatch daemon.",
               "nsa-tunectl"};
  app.footer(
      "\nPaths: flags > NSA_TUNE_SOCKET / NSA_TUNE_STATE_DIR > the config file (--config or NSA_TUNE_CONFIG) > "
      "defaults.\nExit codes: 0 ok, 1 error reply (or unreadable store), 2 usage, 3 daemon unavailable.\n"
      "report, status and pins read the store directly when no daemon answers.");
  app.require_subcommand(1);
  std::string socket, state_dir, config;
  int timeout_ms = 5000;
  app.add_option("--socket", socket, std::string("the daemon's socket; default ") + kDefaultSocket);
  app.add_option("--state-dir", state_dir, std::string("the daemon's state dir, read when no daemon answers; default ") +
                                               kDefaultStateDir);
  app.add_option("--config", config, "the daemon's JSON config file, for its socket and state dir");
  app.add_option("--timeout-ms", timeout_ms, "how long to wait for the daemon; default 5000")->check(CLI::Range(1, 3600000));

  std::string format = "text";
  auto* report = app.add_subcommand("report", "per-architecture verdicts, pins, speedups and errors");
  report->add_option("--format", format, "text (default), json, csv or markdown");

  bool json_out = false;
  auto* status = app.add_subcommand("status", "the daemon's devices, store, connections and tuning");
  status->add_flag("--json", json_out, "print the status as JSON");

  QueryArgs q;
  int device = -1;
  auto* query = app.add_subcommand("query", "ask the daemon which backend to run for one problem");
  query->add_option("--device", device, "device ordinal on the daemon's host (default: device 0)");
  query->add_option("--device-uuid", q.device_uuid, "device UUID (GPU-...)");
  query->add_option("--arch", q.arch, "ask about an arch instead of a device (sm_89, sm_90)");
  query->add_option("--dtype", q.dtype, "bf16 (default) or fp16");
  query->add_option("--d-qk", q.d_qk, "query/key head dim")->required();
  query->add_option("--d-v", q.d_v, "value head dim")->required();
  query->add_option("--h", q.h, "query heads per KV group")->required();
  query->add_option("--h-kv", q.h_kv, "KV heads")->required();
  query->add_option("--block", q.block, "keys per selected block (l')")->required();
  query->add_option("--n", q.n, "selected blocks per query row")->required();
  query->add_option("--t-q", q.t_q, "query rows per sequence (default 1: decode)");
  query->add_option("--t-kv", q.t_kv, "keys per sequence")->required();
  query->add_option("--batch", q.batch, "sequences (default 1)");
  query->add_flag("--json", q.as_json, "print the answer object as JSON");

  auto* pins = app.add_subcommand("pins", "list the pins");
  pins->add_flag("--json", json_out, "print the pins as JSON");

  std::string arch, reason;
  auto* pin = app.add_subcommand("pin", "pin an arch to the sdpa fallback (admin)");
  pin->add_option("ARCH", arch, "the arch, like sm_80")->required();
  pin->add_option("--reason", reason, "why, for the operators who find the pin later")->required();

  auto* unpin = app.add_subcommand("unpin", "remove an operator pin (admin; the seeded sm_89 pin stays)");
  unpin->add_option("ARCH", arch, "the arch, like sm_80")->required();

  std::string scope = "all";
  auto* retune = app.add_subcommand("retune", "queue a re-tune (admin)");
  retune->add_option("SCOPE", scope, "all (default), an arch like sm_90, or a family key");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return exit_code::ok;
  } catch (const CLI::ParseError& e) {
    // Help for a subcommand arrives as CallForHelp from the subcommand's parser too.
    if (e.get_exit_code() == 0) {
      app.exit(e);
      return exit_code::ok;
    }
    std::cerr << "nsa-tunectl: " << e.what() << "\nRun 'nsa-tunectl --help' (or 'nsa-tunectl COMMAND --help').\n";
    return exit_code::usage;
  }

  Settings flags;
  if (!socket.empty()) flags.socket = socket;
  if (!state_dir.empty()) flags.state_dir = state_dir;
  const auto env_lookup = process_env();
  auto env = settings_from_env(env_lookup);
  if (!env) {
    std::cerr << "nsa-tunectl: " << env.error() << "\n";
    return exit_code::usage;
  }
  std::filesystem::path config_file = config;
  if (config_file.empty())
    if (auto v = env_lookup("NSA_TUNE_CONFIG"); v && !v->empty()) config_file = *v;
  Settings file;
  if (!config_file.empty()) {
    auto f = settings_from_file(config_file);
    if (!f) {
      std::cerr << "nsa-tunectl: " << f.error() << "\n";
      return exit_code::usage;
    }
    file = *f;
  }
  auto merged = merge_settings(flags, *env, file, config_file);
  if (!merged) {
    std::cerr << "nsa-tunectl: " << merged.error() << "\n";
    return exit_code::usage;
  }
  Paths paths{merged->socket, merged->state_dir, std::chrono::milliseconds(timeout_ms)};
  // Only a state dir given: the socket `./setup.sh run` puts inside it, when it is there.
  if (merged->sources["socket"] == "default" && merged->sources["state_dir"] != "default") {
    std::error_code ec;
    const auto inside = merged->state_dir / "nsa-tuned.sock";
    if (std::filesystem::is_socket(inside, ec)) paths.socket = inside;
  }

  try {
    if (*report) return cmd_report(paths, format);
    if (*status) return cmd_status(paths, json_out);
    if (*query) {
      if (device >= 0) q.device = device;
      return cmd_query(paths, q);
    }
    if (*pins) return cmd_pins(paths, json_out);
    if (*pin)
      return cmd_admin(paths, json{{"op", "pin"}, {"arch", arch}, {"reason", reason}}, [](const json& r) {
        std::printf("pinned %s to sdpa (epoch %s)\n", str(r["pin"], "arch").c_str(), str(r, "epoch").c_str());
      });
    if (*unpin)
      return cmd_admin(paths, json{{"op", "unpin"}, {"arch", arch}}, [&](const json& r) {
        std::printf("unpinned %s (epoch %s)\n", arch.c_str(), str(r, "epoch").c_str());
      });
    if (*retune)
      return cmd_admin(paths, json{{"op", "retune"}, {"scope", scope}}, [](const json& r) {
        std::printf("queued retune #%s of %s; %s\n", str(r, "request_id").c_str(), str(r, "scope").c_str(),
                    str(r, "tuning_note", "").c_str());
      });
  } catch (const std::exception& e) {
    std::cerr << "nsa-tunectl: " << e.what() << "\n";
    return exit_code::error_reply;
  }
  return exit_code::usage;
}

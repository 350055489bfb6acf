// nsa-tunectl: the operators' command line for nsa-tuned.
//
//   nsa-tunectl [--socket PATH] [--state-dir DIR] [--config FILE] [--timeout-ms N] COMMAND ...
//     report [--format text|json|csv|markdown] [--plot FILE.svg]   per-arch verdicts, pins, speedups
//     status [--json]                            the daemon (or, without one, the store)
//     query --d-qk .. --t-kv .. [--json]         a dispatch from the shell
//     pins [--json]                              the pins
//     pin ARCH --reason TEXT                     force the fallback on an arch (admin)
//     unpin ARCH                                 remove an operator pin (admin)
//     retune [SCOPE] [--wait] [--wait-timeout S] queue a re-tune (admin); --wait draws progress
//     compile --arch sm_90 [--family K] [--design D]  precompile kernels into the store (no GPU)
//
// Paths resolve like the daemon's (flags > NSA_TUNE_SOCKET / NSA_TUNE_STATE_DIR > the config
// file from --config or NSA_TUNE_CONFIG > defaults), so `nsa-tunectl` with no flags talks to
// the daemon that the same environment would start; with only a state dir given, a socket
// named nsa-tuned.sock inside it is used. `report`, `status` and `pins` read the
// store directly (read-only; WAL lets them while a daemon writes) when no daemon answers, and
// say so on stderr.
//
// Exit codes: 0 ok, 1 the daemon answered with an error (or the store could not be read, or a
// variant failed to compile), 2 usage, 3 the daemon is unavailable for an op that needs it,
// 4 `retune --wait` reached --wait-timeout before the request completed.

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/api/protocol.hpp"
#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/sync_client.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/service/report_plot.hpp"
#include "nsa/tuner/kernel_cache.hpp"
#include "nsa/tuner/report.hpp"
#include "nsa/tuner/verdict_policy.hpp"
#include "nsa/tuner/worker_protocol.hpp"

using nlohmann::json;
using namespace nsa::service;

namespace {

namespace exit_code {
constexpr int ok = 0;
constexpr int error_reply = 1;
constexpr int usage = 2;
constexpr int unavailable = 3;
constexpr int wait_timeout = 4;  // retune --wait: --wait-timeout passed first
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
  return nsa::tuner::format_utc(unix_s, "%Y-%m-%d %H:%M:%SZ");
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

/// For the commands that read the store when no daemon answers: says so on stderr (why the
/// daemon did not answer, which file is read instead) and opens the store read-only. nullopt
/// once it has printed why the store cannot be read either.
std::optional<nsa::cache::VerdictStore> open_store_instead(const Paths& p, const std::string& why) {
  const auto path = p.state_dir / "state.db";
  std::cerr << "nsa-tunectl: no daemon answers on " << p.socket.string() << " (" << why << "); reading the store "
            << path.string() << " directly\n";
  auto s = nsa::cache::VerdictStore::open_read_only(path);
  if (!s) {
    std::cerr << "nsa-tunectl: cannot read the store " << path.string() << " (" << s.error().code
              << "): " << s.error().message << "\n";
    return std::nullopt;
  }
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

/// Writes `text` to `path` through a temp file and a rename, so a reader never sees half a file.
std::expected<void, std::string> write_file_atomically(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return std::unexpected("cannot write " + tmp.string() + ": " + std::strerror(errno));
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return std::unexpected("cannot write " + tmp.string() + ": " + std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return std::unexpected("cannot move the plot into place at " + path.string() + ": " + ec.message());
  }
  return {};
}

/// Draws the report into `plot_path` (report --plot). `margin`: the daemon's, else the default.
int write_plot(const json& model, const std::filesystem::path& plot_path, double margin) {
  nsa::service::PlotOptions options;
  options.margin = margin;
  options.subtitle = "store " + str(model.value("store", json::object()), "path") + ", generated " +
                     str(model, "generated_at");
  nsa::service::Plot plot;
  try {
    plot = nsa::service::plot_report_svg(model, options);
  } catch (const std::invalid_argument& e) {
    std::cerr << "nsa-tunectl: cannot plot: " << e.what() << "\n";
    return exit_code::error_reply;
  }
  if (auto w = write_file_atomically(plot_path, plot.svg); !w) {
    std::cerr << "nsa-tunectl: " << w.error() << "\n";
    return exit_code::error_reply;
  }
  std::printf("wrote %s: %zu chart%s, %zu line%s, %zu points%s\n", plot_path.c_str(), plot.groups,
              plot.groups == 1 ? "" : "s", plot.series, plot.series == 1 ? "" : "s", plot.points,
              plot.groups ? "" : " (no verdicts with a measured speedup yet)");
  return exit_code::ok;
}

int cmd_report(const Paths& p, const std::string& format_name, bool format_given, const std::string& plot_path) {
  auto format = nsa::tuner::parse_report_format(format_name);
  if (!format) {
    std::cerr << "nsa-tunectl: unknown report format '" << format_name << "'; use text, json, csv or markdown\n";
    return exit_code::usage;
  }
  // With --plot the report itself is printed only when --format asks for it.
  const bool print = plot_path.empty() || format_given;
  json model;
  double margin = nsa::tuner::PolicyConfig{}.margin;
  std::string why;
  if (auto c = connect(p, why)) {
    int code = 0;
    auto r = call(*c, p, json{{"op", "report"}}, code);
    if (!r) return code;
    model = std::move((*r)["report"]);
    if (!plot_path.empty()) {
      // The margin the daemon decides with, for the chart's margin line.
      auto s = c->request(json{{"op", "status"}});
      if (s && s->value("ok", false)) {
        const json t = s->value("tuning", json());
        if (t.is_object() && t.contains("config") && t["config"].is_object() && t["config"].value("margin", json()).is_number())
          margin = t["config"]["margin"].get<double>();
      }
    }
  } else {
    auto store = open_store_instead(p, why);
    if (!store) return exit_code::error_reply;
    try {
      model = nsa::tuner::build_report(*store, recorded_classes(*store));
    } catch (const nsa::cache::StoreFailure& e) {
      std::cerr << "nsa-tunectl: reading the store failed: " << e.what() << "\n";
      return exit_code::error_reply;
    }
  }
  if (print) std::cout << nsa::tuner::render_report(model, *format);
  if (!plot_path.empty()) return write_plot(model, plot_path, margin);
  return exit_code::ok;
}

// compile -----------------------------------------------------------------------------------

struct CompileArgs {
  std::string arch;
  std::vector<std::string> families;  // family keys; empty: tuner::default_precompile_families()
  std::vector<std::string> designs;   // design names; empty: every design
  unsigned threads = 0;
};

/// "bf16.dqk128.dv128.h16.blk64.n16" or a full family key with its phase (which changes
/// nothing here: every design, decode and prefill, is compiled).
std::optional<nsa::jit::FamilySpec> family_spec(const std::string& key) {
  auto f = nsa::api::Family::parse(key);
  if (!f) f = nsa::api::Family::parse(key + ".decode");
  if (!f) return std::nullopt;
  return nsa::tuner::spec_of(*f);
}

int cmd_compile(const Paths& p, const CompileArgs& a) {
  {
    const std::string& x = a.arch;
    std::size_t i = 3;
    while (i < x.size() && std::isdigit(static_cast<unsigned char>(x[i]))) ++i;
    const bool ok = x.starts_with("sm_") && i - 3 >= 2 && i - 3 <= 3 &&
                    (i == x.size() || (i + 1 == x.size() && (x[i] == 'a' || x[i] == 'f')));
    if (!ok) {
      std::cerr << "nsa-tunectl: --arch '" << x << "' is not an arch name; write it like sm_90 (or sm_90a)\n";
      return exit_code::usage;
    }
  }
  std::vector<nsa::jit::FamilySpec> families;
  for (const auto& key : a.families) {
    auto spec = family_spec(key);
    if (!spec) {
      std::cerr << "nsa-tunectl: --family '" << key
                << "' is not a family key; write it like bf16.dqk128.dv128.h16.blk64.n16 (a phase suffix is allowed)\n";
      return exit_code::usage;
    }
    families.push_back(*spec);
  }
  if (families.empty()) families = nsa::tuner::default_precompile_families();
  std::vector<nsa::jit::KernelVariant> variants = nsa::tuner::precompile_variants(a.arch, families);
  if (!a.designs.empty()) {
    for (const auto& d : a.designs) {
      bool known = false;
      for (auto design : nsa::jit::all_designs()) known = known || nsa::jit::to_string(design) == d;
      if (!known) {
        std::cerr << "nsa-tunectl: --design '" << d
                  << "' is not a design; use one of " << nsa::jit::design_names() << "\n";
        return exit_code::usage;
      }
    }
    std::erase_if(variants, [&](const nsa::jit::KernelVariant& v) {
      return std::find(a.designs.begin(), a.designs.end(), nsa::jit::to_string(v.design)) == a.designs.end();
    });
  }
  if (variants.empty()) {
    std::cerr << "nsa-tunectl: the catalog has no variant of these families and designs for " << a.arch << "\n";
    return exit_code::usage;
  }

  std::error_code ec;
  std::filesystem::create_directories(p.state_dir, ec);
  const auto path = p.state_dir / "state.db";
  auto store = nsa::cache::VerdictStore::open(path);
  if (!store) {
    std::cerr << "nsa-tunectl: cannot open the store " << path.string() << " (" << store.error().code
              << "): " << store.error().message << "\n";
    return exit_code::error_reply;
  }
  std::cerr << "compiling " << variants.size() << " variants for " << a.arch << " into " << path.string() << "\n";
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  auto progress = [&](const nsa::jit::CompileProgress& pr) {
    const std::string last = pr.last ? pr.last->key : std::string();
    const char* what = !pr.last ? "" : !pr.last->result ? "FAILED" : pr.last->from_cache ? "from cache" : "compiled";
    if (tty) {
      std::fprintf(stderr, "\r[%zu/%zu] %zu compiled, %zu from cache, %zu failed  %s\x1b[K", pr.done, pr.total,
                   pr.compiled, pr.from_cache, pr.failed, last.c_str());
    } else {
      std::fprintf(stderr, "[%zu/%zu] %s %s (%.1f s)\n", pr.done, pr.total, what, last.c_str(),
                   pr.last ? pr.last->seconds : 0.0);
    }
    std::fflush(stderr);
  };
  const auto summary = nsa::tuner::compile_into_store(variants, *store, progress, a.threads);
  if (tty) std::fputs("\r\x1b[K", stderr);
  // An arch NVRTC cannot target fails every variant the same way: a few lines say it.
  constexpr std::size_t kShown = 5;
  for (std::size_t i = 0; i < summary.failures.size() && i < kShown; ++i)
    std::cerr << "nsa-tunectl: " << summary.failures[i].message() << "\n";
  if (summary.failures.size() > kShown)
    std::cerr << "nsa-tunectl: ... and " << summary.failures.size() - kShown << " more failed\n";
  for (const auto& e : summary.cache_errors) std::cerr << "nsa-tunectl: " << e << "\n";
  std::printf("%s\n", summary.describe(a.arch).c_str());
  return summary.failed || !summary.cache_errors.empty() ? exit_code::error_reply : exit_code::ok;
}

// status ------------------------------------------------------------------------------------

/// One device of the tuner's status, as a line a person reads:
/// "GPU 0 (NVIDIA H100, sm_90): tuning family 2 of 12 bf16...decode, point 7 of 54 b8...,
///  1m 12s elapsed, ~9m left".
std::string tuning_device_line(const json& d) {
  const std::string state = str(d, "state");
  std::string line = "GPU " + str(d, "device") + " (" + str(d, "name") + ", " + str(d, "arch") + "): " + state;
  if (d.value("experimental", false)) line += " (experimental)";
  if (state == "tuning" || state == "compiling") {
    if (!str(d, "family", "").empty())
      line += " family " + str(d, "family_index") + " of " + str(d, "families") + " " + str(d, "family");
    if (state == "tuning")
      line += ", point " + str(d, "point_index") + " of " + str(d, "points") +
              (str(d, "point", "").empty() ? std::string() : " " + str(d, "point"));
    line += ", " + human_duration(d.value("elapsed_s", 0.0)) + " elapsed";
    const json est = d.value("estimate_s", json());
    line += est.is_number() ? ", ~" + human_duration(est.get<double>()) + " left" : ", estimate after the first point";
    if (!str(d, "trigger", "").empty()) line += " (" + str(d, "trigger") + ")";
  }
  return line;
}

void print_tuning_devices(const json& t) {
  if (!t.is_object()) return;
  for (const auto& d : t.value("devices", json::array())) {
    if (!d.is_object()) continue;
    std::printf("  %s\n", tuning_device_line(d).c_str());
    const std::string variant = str(d, "variant", "");
    if (!variant.empty()) std::printf("    variant now    %s\n", variant.c_str());
    std::printf("    written        %s verdicts, %s measurements, %s worker restarts (run %s)\n",
                str(d, "verdicts", "0").c_str(), str(d, "measurements", "0").c_str(),
                str(d, "worker_restarts", "0").c_str(), str(d, "run_id").c_str());
    const std::string error = str(d, "last_error", "");
    std::printf("    last error     %s\n", error.empty() ? "none" : error.c_str());
    for (const auto& n : d.value("notes", json::array()))
      if (n.is_string()) std::printf("    note           %s\n", n.get<std::string>().c_str());
  }
  const json pending = t.value("pending_requests", json::array());
  if (pending.is_array() && !pending.empty()) {
    std::string ids;
    for (const auto& id : pending) ids += (ids.empty() ? "#" : ", #") + id.dump();
    std::printf("  pending        %s\n", ids.c_str());
  }
}

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
  print_tuning_devices(s.value("tuning", json()));
  for (const auto& q : s.value("pending_retunes", json::array()))
    std::printf("retune #%-4s %s, requested by %s at %s, pending\n", str(q, "id").c_str(), str(q, "scope").c_str(),
                str(q, "requested_by").c_str(), human_time(q.value("requested_at", std::int64_t{0})).c_str());
  int shown = 0;
  for (const auto& q : s.value("recent_retunes", json::array())) {
    if (!q.is_object() || q.value("completed_at", std::int64_t{0}) == 0 || shown == 3) continue;
    ++shown;
    std::printf("retune #%-4s %s, done at %s: %s\n", str(q, "id").c_str(), str(q, "scope").c_str(),
                human_time(q.value("completed_at", std::int64_t{0})).c_str(), str(q, "outcome").c_str());
  }
}

int store_status(const Paths& p, bool as_json, const std::string& why) {
  auto store = open_store_instead(p, why);
  if (!store) return exit_code::error_reply;
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
    auto store = open_store_instead(p, why);
    if (!store) return exit_code::error_reply;
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

// retune --------------------------------------------------------------------------------------

/// The request's entry in a status reply's recent_retunes, or null.
json retune_entry(const json& status, std::int64_t id) {
  for (const auto& q : status.value("recent_retunes", json::array()))
    if (q.is_object() && q.value("id", std::int64_t{-1}) == id) return q;
  return nullptr;
}

bool still_pending(const json& status, std::int64_t id) {
  for (const auto& q : status.value("pending_retunes", json::array()))
    if (q.is_object() && q.value("id", std::int64_t{-1}) == id) return true;
  return false;
}

/// One line of progress for `retune --wait`:
///   retune #7 [#########---------------]  3/8 points  GPU 0 sm_90  bf16...decode  b8...  12.0s, ~20s left
/// `key` gets the part that changes only when the tuner moves on (no times), so that a log that
/// is not a terminal gets a line per step rather than per poll.
std::string progress_line(const json& tuning, std::int64_t id, double waited, std::string& key) {
  const json devices = tuning.is_object() ? tuning.value("devices", json::array()) : json::array();
  const json* busy = nullptr;
  std::size_t busy_count = 0;
  const json* failed = nullptr;
  for (const auto& d : devices) {
    if (!d.is_object()) continue;
    const std::string state = str(d, "state");
    if (state == "tuning" || state == "compiling") {
      if (!busy) busy = &d;
      ++busy_count;
    } else if (state == "failed" && !failed) {
      failed = &d;
    }
  }
  const std::string head = "retune #" + std::to_string(id) + " ";
  if (!busy) {
    if (failed) {
      key = "failed " + str(*failed, "last_error");
      return head + "waiting: GPU " + str(*failed, "device") + " failed (" + str(*failed, "last_error") +
             "); the tuner tries again after its backoff, " + human_duration(waited) + " so far";
    }
    key = "queued";
    return head + "queued: waiting for the tuner (" + (tuning.is_object() ? str(tuning, "state") : "-") + "), " +
           human_duration(waited) + " so far";
  }
  const json& d = *busy;
  const long long k = d.value("point_index", 0LL), n = d.value("points", 0LL);
  constexpr int kBar = 24;
  const int filled = n > 0 ? static_cast<int>(std::clamp(static_cast<double>(k) / n, 0.0, 1.0) * kBar) : 0;
  std::string bar = "[" + std::string(filled, '#') + std::string(kBar - filled, '-') + "]";
  std::string line = head + bar + " " + std::to_string(k) + "/" + std::to_string(n) + " points  GPU " +
                     str(d, "device") + " " + str(d, "arch") + "  " + str(d, "state") + " " + str(d, "family", "") +
                     (str(d, "point", "").empty() ? std::string() : "  " + str(d, "point")) + "  " +
                     human_duration(d.value("elapsed_s", 0.0));
  const json est = d.value("estimate_s", json());
  if (est.is_number()) line += ", ~" + human_duration(est.get<double>()) + " left";
  if (busy_count > 1) line += "  (+" + std::to_string(busy_count - 1) + " more devices)";
  key = str(d, "state") + " " + str(d, "family", "") + " " + std::to_string(k) + "/" + std::to_string(n);
  return line;
}

int cmd_retune(const Paths& p, const std::string& scope, bool wait, double wait_timeout_s) {
  std::string why;
  auto c = connect(p, why);
  if (!c) return unavailable(p, why);
  int code = 0;
  auto r = call(*c, p, json{{"op", "retune"}, {"scope", scope}}, code);
  if (!r) return code;
  const std::int64_t id = r->value("request_id", std::int64_t{0});
  const bool pending = r->value("pending", true);
  std::printf("queued retune #%lld of %s; %s\n", static_cast<long long>(id), str(*r, "scope").c_str(),
              str(*r, "tuning_note", "").c_str());
  if (!wait || !pending) {
    std::fflush(stdout);
    return exit_code::ok;
  }
  std::fflush(stdout);

  // Poll status until the request leaves the pending list; draw progress on stderr.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  const auto start = std::chrono::steady_clock::now();
  std::map<std::string, std::pair<std::int64_t, std::int64_t>> before;  // uuid -> verdicts, measurements
  std::string last_key, last_line;
  bool first = true;
  json st;
  for (;;) {
    auto s = c->request(json{{"op", "status"}});
    if (!s || !s->value("ok", false)) {
      if (tty && !last_line.empty()) std::fputs("\n", stderr);
      std::cerr << "nsa-tunectl: lost the daemon while waiting for retune #" << id << ": "
                << (s ? str((*s)["error"], "message") : s.error().message)
                << "; the request stays queued in the store and runs when the daemon is back\n";
      return s ? exit_code::error_reply : exit_code::unavailable;
    }
    st = std::move(*s);
    const json tuning = st.value("tuning", json());
    if (first) {
      for (const auto& d : tuning.is_object() ? tuning.value("devices", json::array()) : json::array())
        before[str(d, "uuid")] = {d.value("verdicts", std::int64_t{0}), d.value("measurements", std::int64_t{0})};
      first = false;
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!still_pending(st, id)) break;
    std::string key;
    const std::string line = progress_line(tuning, id, waited, key);
    if (tty) {
      // \r and erase-to-end-of-line: one line that updates in place, cut to the terminal's
      // width (a wrapped line would not be overwritten by the next \r).
      winsize ws{};
      std::string shown = line;
      if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10 && shown.size() >= ws.ws_col)
        shown = shown.substr(0, ws.ws_col - 4) + "...";
      std::fprintf(stderr, "\r%s\x1b[K", shown.c_str());
      std::fflush(stderr);
    } else if (key != last_key) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    last_key = key;
    last_line = line;
    if (wait_timeout_s > 0 && waited >= wait_timeout_s) {
      if (tty) std::fputs("\n", stderr);
      std::cerr << "nsa-tunectl: retune #" << id << " did not complete within --wait-timeout " << wait_timeout_s
                << " s; it stays queued (see nsa-tunectl status)\n";
      return exit_code::wait_timeout;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 200 : 500));
  }
  if (tty && !last_line.empty()) std::fputs("\r\x1b[K", stderr);

  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const json entry = retune_entry(st, id);
  std::printf("retune #%lld of %s done in %s: %s\n", static_cast<long long>(id), scope.c_str(),
              human_duration(took).c_str(),
              entry.is_object() && !str(entry, "outcome", "").empty() ? str(entry, "outcome").c_str()
                                                                      : "(no outcome recorded)");
  const json tuning = st.value("tuning", json());
  for (const auto& d : tuning.is_object() ? tuning.value("devices", json::array()) : json::array()) {
    const auto was = before[str(d, "uuid")];
    std::printf("  GPU %s (%s, %s): %lld verdicts and %lld measurements written while waiting%s%s\n",
                str(d, "device").c_str(), str(d, "name").c_str(), str(d, "arch").c_str(),
                static_cast<long long>(d.value("verdicts", std::int64_t{0}) - was.first),
                static_cast<long long>(d.value("measurements", std::int64_t{0}) - was.second),
                str(d, "last_error", "").empty() ? "" : "; last error: ",
                str(d, "last_error", "").c_str());
  }
  std::printf("see nsa-tunectl report for the verdicts\n");
  return exit_code::ok;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nsa-tunectl: report, query and administer nsa-tuned, the selection-attention dispatch daemon.",
               "nsa-tunectl"};
  app.footer(
      "\nPaths: flags > NSA_TUNE_SOCKET / NSA_TUNE_STATE_DIR > the config file (--config or NSA_TUNE_CONFIG) > "
      "defaults.\nExit codes: 0 ok, 1 error reply (or unreadable store, or a variant failed to compile), 2 usage, "
      "3 daemon unavailable, 4 retune --wait gave up at --wait-timeout (the request stays queued).\n"
      "report, status and pins read the store directly when no daemon answers; compile needs no daemon and no GPU.");
  app.require_subcommand(1);
  std::string socket, state_dir, config;
  int timeout_ms = 5000;
  app.add_option("--socket", socket, std::string("the daemon's socket; default ") + kDefaultSocket);
  app.add_option("--state-dir", state_dir, std::string("the daemon's state dir, read when no daemon answers; default ") +
                                               kDefaultStateDir);
  app.add_option("--config", config, "the daemon's JSON config file, for its socket and state dir");
  app.add_option("--timeout-ms", timeout_ms, "how long to wait for the daemon; default 5000")->check(CLI::Range(1, 3600000));

  std::string format = "text", plot_path;
  auto* report = app.add_subcommand("report", "per-architecture verdicts, pins, speedups and errors");
  auto* format_opt = report->add_option("--format", format, "text (default), json, csv or markdown");
  report->add_option("--plot", plot_path,
                     "also draw speedup against selected length per family group into this SVG file (the report "
                     "is then printed only when --format is given)");

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
  bool wait = false;
  double wait_timeout_s = 0;
  auto* retune = app.add_subcommand("retune", "queue a re-tune (admin)");
  retune->add_option("SCOPE", scope, "all (default), an arch like sm_90, or a family key");
  retune->add_flag("--wait", wait, "wait until the tuner has done it, with a progress bar on stderr");
  retune->add_option("--wait-timeout", wait_timeout_s, "give up waiting after this many seconds (default: no limit)")
      ->check(CLI::NonNegativeNumber);

  CompileArgs compile_args;
  auto* compile = app.add_subcommand(
      "compile", "compile every kernel variant for an arch into the store, ahead of tuning (no GPU needed)");
  compile->add_option("--arch", compile_args.arch, "the target arch, like sm_90")->required();
  compile->add_option("--family", compile_args.families,
                      "only this family, like bf16.dqk128.dv128.h16.blk64.n16 (repeatable; default: the paper "
                      "config and D_qk=D_v=128, h=16, block 64, n=16, bf16 and fp16)");
  compile->add_option("--design", compile_args.designs,
                      "only this design: " + nsa::jit::design_names() + " (repeatable)");
  compile->add_option("--threads", compile_args.threads, "parallel NVRTC compiles (default: all cores)");

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
    if (*report) return cmd_report(paths, format, format_opt->count() > 0, plot_path);
    if (*compile) return cmd_compile(paths, compile_args);
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
    if (*retune) return cmd_retune(paths, scope, wait, wait_timeout_s);
  } catch (const std::exception& e) {
    std::cerr << "nsa-tunectl: " << e.what() << "\n";
    return exit_code::error_reply;
  }
  return exit_code::usage;
}

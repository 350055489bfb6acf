#include "nsa/service/tuning.hpp"

#include <chrono>
#include <cstdlib>
#include <set>

#include <unistd.h>

#include "nsa/service/log.hpp"
#include "nsa/tuner/supervisor.hpp"

namespace nsa::service {
namespace {

using nlohmann::json;

bool executable(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

void log_from_tuner(tuner::LogLevel level, const std::string& text) {
  switch (level) {
    case tuner::LogLevel::debug: NSA_DEBUG("%s", text.c_str()); break;
    case tuner::LogLevel::info: NSA_INFO("%s", text.c_str()); break;
    case tuner::LogLevel::warn: NSA_WARN("%s", text.c_str()); break;
    case tuner::LogLevel::error: NSA_ERROR("%s", text.c_str()); break;
  }
}

}  // namespace

std::expected<std::filesystem::path, std::string> resolve_worker(const std::filesystem::path& configured) {
  const bool given = !configured.empty();
  const std::filesystem::path wanted = given ? configured : tuner::default_worker_path();
  const std::string what = "the worker binary " + (given ? wanted.string() : std::string("nsa-tune-worker"));
  const std::string from = given ? " (set by NSA_TUNE_WORKER or the config file's tuning.worker)" : "";
  if (wanted.has_parent_path()) {
    if (executable(wanted)) return wanted;
    std::error_code ec;
    const bool exists = std::filesystem::exists(wanted, ec);
    return std::unexpected("the worker binary " + wanted.string() +
                           (exists ? " is not an executable file" : " does not exist") + from +
                           "; install nsa-tune-worker next to nsa-tuned or point NSA_TUNE_WORKER at it");
  }
  // A bare name: where exec would find it.
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const auto end = dirs.find(':', start);
    const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty() && executable(std::filesystem::path(dir) / wanted)) return std::filesystem::path(dir) / wanted;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return std::unexpected(what + from + " is neither next to nsa-tuned nor in PATH; install it next to nsa-tuned or "
                                       "point NSA_TUNE_WORKER at it");
}

std::expected<jit::DriverProbe, std::string> probe_from_test_devices(const std::string& text) {
  const std::string where = "NSA_TUNE_TEST_DEVICES (test only)";
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return std::unexpected(where + " must be a JSON object like {\"devices\":[{\"arch\":\"sm_90\"}]}");
  jit::DriverProbe probe;
  probe.driver_loaded = true;
  probe.driver_version = 13000;
  for (const auto& [key, value] : j.items()) {
    if (key == "driver_version") {
      if (!value.is_number_integer() || value.get<std::int64_t>() <= 0)
        return std::unexpected(where + ": \"driver_version\" must be a positive integer like 13000");
      probe.driver_version = value.get<int>();
    } else if (key != "devices") {
      return std::unexpected(where + ": unknown key \"" + key + "\" (known: driver_version, devices)");
    }
  }
  auto devices = j.find("devices");
  if (devices == j.end() || !devices->is_array())
    return std::unexpected(where + ": \"devices\" must be an array (empty for a host without a GPU)");
  for (std::size_t i = 0; i < devices->size(); ++i) {
    const json& d = (*devices)[i];
    const std::string at = where + ": devices[" + std::to_string(i) + "]";
    if (!d.is_object()) return std::unexpected(at + " must be an object");
    jit::DeviceInfo info;
    info.ordinal = static_cast<int>(i);
    info.uuid = "GPU-test-" + std::to_string(i);
    info.name = "Fake GPU";
    info.sm_count = 132;
    info.memory_bytes = 80ull << 30;
    info.l2_bytes = 50ull << 20;
    info.max_shared_per_block_optin = 227 * 1024;
    for (const auto& [key, value] : d.items()) {
      if (key == "arch" || key == "name" || key == "uuid") {
        if (!value.is_string() || value.get_ref<const std::string&>().empty())
          return std::unexpected(at + ": \"" + key + "\" must be a non-empty string");
        (key == "arch" ? info.arch : key == "name" ? info.name : info.uuid) = value.get<std::string>();
      } else if (key == "sm_count" || key == "memory_bytes") {
        if (!value.is_number_integer() || value.get<std::int64_t>() <= 0)
          return std::unexpected(at + ": \"" + key + "\" must be a positive integer");
        if (key == "sm_count") info.sm_count = value.get<int>();
        else info.memory_bytes = value.get<std::uint64_t>();
      } else {
        return std::unexpected(at + ": unknown key \"" + key + "\" (known: arch, name, uuid, sm_count, memory_bytes)");
      }
    }
    const std::string digits = info.arch.size() > 3 ? info.arch.substr(3) : "";
    if (info.arch.substr(0, 3) != "sm_" || digits.size() < 2 || digits.size() > 3 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      return std::unexpected(at + ": \"arch\" is required and looks like \"sm_90\"");
    info.cc_major = std::atoi(digits.substr(0, digits.size() - 1).c_str());
    info.cc_minor = digits.back() - '0';
    probe.devices.push_back(std::move(info));
  }
  if (probe.devices.empty())
    probe.problem = "NSA_TUNE_TEST_DEVICES lists no devices (a test stand-in for a host without a GPU)";
  return probe;
}

Tuning::Tuning(const Config& config, const HostInfo& host) : m_config(config) {
  for (const auto& d : host.devices) m_devices.push_back(d.record);
  if (config.no_tune) {
    auto src = config.sources.find("no_tune");
    m_off = "disabled (--no-tune, set by " +
            (src == config.sources.end() ? std::string("the configuration") : src->second) + ")";
    return;
  }
  if (m_devices.empty()) {
    m_off = "no usable GPU on this host, nothing to tune (" +
            (host.driver_problem.empty() ? std::string("the driver reports no devices") : host.driver_problem) + ")";
    return;
  }
  auto worker = resolve_worker(config.tuning.worker);
  if (!worker) {
    m_off = worker.error();
    return;
  }
  m_worker = *worker;
}

Tuning::~Tuning() { stop(); }

void Tuning::start(std::function<void(std::int64_t)> on_verdicts) {
  if (!m_off.empty() || m_service) return;
  tuner::TuningConfig tc = m_config.tuning;
  tc.worker = m_worker;
  auto service = std::make_unique<tuner::TuningService>(m_config.store_path(), m_devices, std::move(tc),
                                                        &log_from_tuner);
  service->on_verdicts(std::move(on_verdicts));
  if (auto r = service->start(); !r) {
    m_off = "the tuner could not start: " + r.error();
    return;
  }
  m_service = std::move(service);
}

void Tuning::stop() {
  const bool first = !m_stopping.exchange(true);
  if (!m_service) return;
  const auto start = std::chrono::steady_clock::now();
  m_service->stop();
  if (first)
    NSA_INFO("tuner stopped in %.2f s (workers interrupted, unfinished runs recorded as abandoned)",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

json Tuning::status(const std::vector<cache::RetuneRequest>& pending) const {
  if (m_service && m_off.empty()) {  // running, or stopped ("state": "stopped")
    json j = m_service->status();
    j["reason"] = nullptr;
    return j;
  }
  json ids = json::array();
  for (const auto& r : pending) ids.push_back(r.id);
  return json{{"state", "off"},
              {"reason", m_off},
              {"devices", json::array()},
              {"pending_requests", std::move(ids)},
              {"config", tuner::to_json(m_config.tuning)}};
}

std::expected<Tuning::Queued, std::string> Tuning::request(const std::string& scope, const std::string& by) {
  if (!m_off.empty()) return std::unexpected(m_off);
  if (!on()) return std::unexpected(std::string("nsa-tuned is stopping"));
  auto id = m_service->request(scope, by);
  if (!id) return std::unexpected(id.error());
  Queued q{*id, false};
  const json st = m_service->status();
  for (const auto& p : st.value("pending_requests", json::array()))
    if (p.is_number_integer() && p.get<std::int64_t>() == *id) q.pending = true;
  return q;
}

std::string Tuning::summary(std::size_t pending) const {
  const std::string requests =
      std::to_string(pending) + " retune request" + (pending == 1 ? "" : "s") + " pending";
  if (!m_off.empty()) return "off: " + m_off + (pending ? "; " + requests : "");
  if (!m_service) return "on: not started yet";
  const json st = m_service->status();
  std::size_t busy = 0, failed = 0, total = 0;
  for (const auto& d : st.value("devices", json::array())) {
    ++total;
    const std::string state = d.value("state", "");
    if (state == "tuning" || state == "compiling") ++busy;
    if (state == "failed") ++failed;
  }
  std::string s = "on: " + st.value("state", std::string("?"));
  if (busy) s += ", " + std::to_string(busy) + " of " + std::to_string(total) + " devices busy";
  if (failed) s += ", " + std::to_string(failed) + " failed (see last_error)";
  return s + ", " + requests;
}

}  // namespace nsa::service

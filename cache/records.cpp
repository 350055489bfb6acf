#include "nsa/cache/records.hpp"

#include <array>
#include <utility>

namespace nsa::cache {

namespace {

// The spellings are stored in the database (CHECK constraints in cache/schema.cpp list them
// too): changing one is a schema migration, not a refactoring.
constexpr std::array<std::pair<RunStatus, std::string_view>, 4> kRunStatus{{
    {RunStatus::running, "running"},
    {RunStatus::finished, "finished"},
    {RunStatus::failed, "failed"},
    {RunStatus::abandoned, "abandoned"},
}};

constexpr std::array<std::pair<MeasurementStatus, std::string_view>, 6> kMeasurementStatus{{
    {MeasurementStatus::ok, "ok"},
    {MeasurementStatus::numerics_failed, "numerics_failed"},
    {MeasurementStatus::compile_failed, "compile_failed"},
    {MeasurementStatus::crashed, "crashed"},
    {MeasurementStatus::timeout, "timeout"},
    {MeasurementStatus::skipped, "skipped"},
}};

}  // namespace

DeviceClass class_of(const DeviceRecord& device, const std::string& source_hash) {
  return DeviceClass{device.arch, device.name, device.driver_version, device.nvrtc_version,
                     source_hash};
}

std::string describe(const DeviceClass& cls) {
  std::string out = cls.arch;
  out += ' ';
  out += cls.gpu_name.empty() ? std::string("(unnamed GPU)") : cls.gpu_name;
  out += ", driver ";
  out += std::to_string(cls.driver_version);
  out += ", NVRTC ";
  out += cls.nvrtc_version.empty() ? std::string("?") : cls.nvrtc_version;
  out += ", sources ";
  out += cls.source_hash.empty() ? std::string("?") : cls.source_hash.substr(0, 8);
  return out;
}

std::string to_string(RunStatus status) {
  for (const auto& [value, name] : kRunStatus)
    if (value == status) return std::string(name);
  return "unknown";
}

std::string to_string(MeasurementStatus status) {
  for (const auto& [value, name] : kMeasurementStatus)
    if (value == status) return std::string(name);
  return "unknown";
}

std::optional<RunStatus> parse_run_status(std::string_view text) {
  for (const auto& [value, name] : kRunStatus)
    if (name == text) return value;
  return std::nullopt;
}

std::optional<MeasurementStatus> parse_measurement_status(std::string_view text) {
  for (const auto& [value, name] : kMeasurementStatus)
    if (name == text) return value;
  return std::nullopt;
}

}  // namespace nsa::cache

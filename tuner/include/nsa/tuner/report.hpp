#pragma once
// The operators' report: what was measured and decided, per architecture. Built from the store
// as a JSON model (the daemon's `report` reply carries it; nsa-tunectl builds it from the store
// directly when no daemon runs), then rendered. docs/report.md explains how to read it.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/cache/records.hpp"
#include "nsa/cache/verdict_store.hpp"

namespace nsa::tuner {

enum class ReportFormat { text, json, csv, markdown };
/// "text", "json", "csv", "markdown" (or "md"); nullopt for anything else.
std::optional<ReportFormat> parse_report_format(std::string_view);

/// The report model. `current_classes` are the device classes of this host now (empty on a host
/// without a GPU, or when read by a tool that does not probe): verdicts of other classes are
/// reported as stale; with none given nothing is known, no verdict is marked stale and each
/// class's `current` is null (a reader may pass cache::class_of(device, source hash) for the
/// store's devices to get staleness without probing). Shape of the model: docs/report.md.
/// Store read failures propagate as cache::StoreFailure.
nlohmann::json build_report(const cache::VerdictStore&,
                            const std::vector<cache::DeviceClass>& current_classes);

/// Renders a model made by build_report (possibly received over the socket, possibly from
/// another build): missing or mistyped fields print as "-" rather than throwing. Throws
/// std::invalid_argument only when `report` is not a report at all (not an object, or no
/// "archs" array).
std::string render_report(const nlohmann::json& report, ReportFormat);

/// `unix_seconds` as UTC time in the strftime `format` ("%Y-%m-%dT%H:%M:%SZ", ...): how the
/// report, its renderers and nsa-tunectl print the store's timestamps.
std::string format_utc(std::int64_t unix_seconds, const char* format);

}  // namespace nsa::tuner

#include "schema.hpp"

#include <array>

namespace nsa::cache::schema {

namespace {

// Version 1: the store of the first release. Devices, device classes (everything besides the
// shape that a verdict depends on), compiled kernels with their full stale key, tuning runs,
// measurements, verdicts (history: rows are only ever added), pins, and `meta` for the verdict
// epoch. REAL columns that may hold NaN are nullable: SQLite stores a NaN as NULL, and the store
// reads NULL back as NaN.
constexpr std::string_view kV1 = R"sql(
CREATE TABLE meta (
  key   TEXT PRIMARY KEY NOT NULL,
  value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('verdict_epoch', '0');

CREATE TABLE devices (
  uuid           TEXT PRIMARY KEY NOT NULL CHECK (uuid <> ''),
  ordinal        INTEGER NOT NULL CHECK (ordinal >= 0),
  name           TEXT NOT NULL,
  arch           TEXT NOT NULL,
  sm_count       INTEGER NOT NULL,
  memory_bytes   INTEGER NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version  TEXT NOT NULL,
  seen_at        INTEGER NOT NULL
);

CREATE TABLE device_classes (
  id             INTEGER PRIMARY KEY,
  arch           TEXT NOT NULL CHECK (arch <> ''),
  gpu_name       TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version  TEXT NOT NULL,
  source_hash    TEXT NOT NULL,
  UNIQUE (arch, gpu_name, driver_version, nvrtc_version, source_hash)
);

CREATE TABLE compiled_kernels (
  variant_key   TEXT NOT NULL CHECK (variant_key <> ''),
  arch          TEXT NOT NULL,
  source_hash   TEXT NOT NULL,
  options       TEXT NOT NULL,
  nvrtc_version TEXT NOT NULL,
  cubin         BLOB NOT NULL,
  registers     INTEGER NOT NULL,
  shared_bytes  INTEGER NOT NULL,
  spill_bytes   INTEGER NOT NULL,
  created_at    INTEGER NOT NULL,
  PRIMARY KEY (variant_key, arch, source_hash, options, nvrtc_version)
);

CREATE TABLE tuning_runs (
  id           INTEGER PRIMARY KEY,
  class_id     INTEGER NOT NULL REFERENCES device_classes (id),
  device_uuid  TEXT NOT NULL,
  trigger      TEXT NOT NULL,
  experimental INTEGER NOT NULL CHECK (experimental IN (0, 1)),
  status       TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'abandoned')),
  started_at   INTEGER NOT NULL,
  finished_at  INTEGER NOT NULL DEFAULT 0,
  note         TEXT NOT NULL DEFAULT ''
);

CREATE TABLE measurements (
  id        INTEGER PRIMARY KEY,
  run_id    INTEGER NOT NULL REFERENCES tuning_runs (id),
  family    TEXT NOT NULL CHECK (family <> ''),
  point     TEXT NOT NULL CHECK (point <> ''),
  backend   TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')),
  variant   TEXT NOT NULL,
  median_us REAL,
  spread_us REAL,
  rel_l2    REAL,
  max_abs   REAL,
  status    TEXT NOT NULL CHECK (status IN ('ok', 'numerics_failed', 'compile_failed', 'crashed',
                                            'timeout', 'skipped')),
  detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX measurements_by_run ON measurements (run_id, id);

CREATE TABLE verdicts (
  id              INTEGER PRIMARY KEY,
  class_id        INTEGER NOT NULL REFERENCES device_classes (id),
  family          TEXT NOT NULL CHECK (family <> ''),
  point           TEXT NOT NULL CHECK (point <> ''),
  backend         TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')),
  variant         TEXT NOT NULL,
  baseline_us     REAL,
  best_us         REAL,
  speedup         REAL,
  rel_l2          REAL,
  baseline_rel_l2 REAL,
  run_id          INTEGER REFERENCES tuning_runs (id),
  experimental    INTEGER NOT NULL CHECK (experimental IN (0, 1)),
  reason          TEXT NOT NULL DEFAULT '',
  created_at      INTEGER NOT NULL
);
CREATE INDEX verdicts_by_key ON verdicts (class_id, family, point, id);

CREATE TABLE pins (
  arch       TEXT PRIMARY KEY NOT NULL CHECK (arch <> ''),
  backend    TEXT NOT NULL CHECK (backend IN ('sdpa', 'sparse')),
  reason     TEXT NOT NULL,
  seeded     INTEGER NOT NULL CHECK (seeded IN (0, 1)),
  created_by TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
)sql";

// Version 2: the queues between clients, operators and the tuner. Demand counts the requests
// for (arch, family, point) that had no verdict, so the tuner tunes what clients use; retune
// requests are what operators asked for and the tuner has (not) done.
constexpr std::string_view kV2 = R"sql(
CREATE TABLE demand (
  arch     TEXT NOT NULL CHECK (arch <> ''),
  family   TEXT NOT NULL CHECK (family <> ''),
  point    TEXT NOT NULL,
  count    INTEGER NOT NULL CHECK (count >= 0),
  first_at INTEGER NOT NULL,
  last_at  INTEGER NOT NULL,
  PRIMARY KEY (arch, family, point)
);
CREATE INDEX demand_by_count ON demand (count DESC, last_at DESC);

CREATE TABLE retune_requests (
  id           INTEGER PRIMARY KEY,
  scope        TEXT NOT NULL CHECK (scope <> ''),
  requested_by TEXT NOT NULL,
  requested_at INTEGER NOT NULL,
  completed_at INTEGER NOT NULL DEFAULT 0,
  outcome      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX retune_requests_pending ON retune_requests (completed_at, id);
)sql";

constexpr std::array<Migration, 2> kMigrations{{
    {1, "devices, device classes, compiled kernels, runs, measurements, verdicts, pins, meta", kV1},
    {2, "demand and retune requests", kV2},
}};

}  // namespace

std::span<const Migration> migrations() { return kMigrations; }

int current_version() { return kMigrations.back().version; }

}  // namespace nsa::cache::schema

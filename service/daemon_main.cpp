// nsa-tuned: start-up, serve, shut down. Each step that can fail says what failed and what to do
// in one log line and exits with the code --help documents (1 cannot serve, 2 store error,
// 64 usage), so a unit manager and a person both know what happened.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <optional>
#include <thread>

#include <grp.h>
#include <unistd.h>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/service/asio.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/handler.hpp"
#include "nsa/service/log.hpp"
#include "nsa/service/server.hpp"
#include "nsa/service/state.hpp"
#include "nsa/service/tuning.hpp"

using namespace nsa::service;

namespace {

std::expected<AdminPolicy, std::string> admin_policy(const Config& c) {
  AdminPolicy p;
  p.daemon_uid = ::geteuid();
  if (c.admin_group.empty()) return p;
  char buf[16384];
  group gr{};
  group* found = nullptr;
  int rc = ::getgrnam_r(c.admin_group.c_str(), &gr, buf, sizeof buf, &found);
  if (rc != 0 || !found) {
    return std::unexpected("admin group '" + c.admin_group + "' (" + c.sources.at("admin_group") +
                           ") does not exist; create it (groupadd) or fix the setting");
  }
  p.admin_gid = found->gr_gid;
  p.admin_group = c.admin_group;
  return p;
}

int run(int argc, char** argv) {
  auto loaded = load_daemon_config(argc, argv, process_env());
  if (!loaded) {
    const auto& e = loaded.error();
    std::fputs(e.text.c_str(), e.code == 0 ? stdout : stderr);
    if (!e.text.empty() && e.text.back() != '\n') std::fputc('\n', e.code == 0 ? stdout : stderr);
    return e.code;
  }
  Config config = std::move(*loaded);
  // Absolute from here on: the log, status and the unlink at exit all mean the same file
  // whatever the working directory.
  {
    std::error_code ec;
    auto abs_state = std::filesystem::absolute(config.state_dir, ec);
    if (!ec) config.state_dir = abs_state.lexically_normal();
    auto abs_socket = std::filesystem::absolute(config.socket, ec);
    if (!ec && abs_socket.string().size() <= 107) config.socket = abs_socket.lexically_normal();
  }
  log::set_level(config.log_level);
  // Whether it tunes is logged once the GPUs are known ("tuning on" / "tuning off: why").
  NSA_INFO("nsa-tuned %s (pid %d) starting: state dir %s (%s), socket %s (%s), config %s", kVersion,
           static_cast<int>(::getpid()), config.state_dir.c_str(), config.sources.at("state_dir").c_str(),
           config.socket.c_str(), config.sources.at("socket").c_str(),
           config.config_file.empty() ? "none" : config.config_file.c_str());

  auto admin = admin_policy(config);
  if (!admin) {
    NSA_ERROR("%s", admin.error().c_str());
    return daemon_exit::usage;
  }

  std::error_code fs_ec;
  std::filesystem::create_directories(config.state_dir, fs_ec);
  if (fs_ec) {
    NSA_ERROR("cannot create the state dir %s: %s; create it for this user or pass --state-dir",
              config.state_dir.c_str(), fs_ec.message().c_str());
    return daemon_exit::store_error;
  }

  // One daemon per state dir and per socket. The locks are taken before the socket is probed,
  // so two daemons starting together cannot both find it stale.
  auto state_lock = InstanceLock::acquire(config.state_dir / "nsa-tuned.lock");
  if (!state_lock) {
    NSA_ERROR("refusing to start: %s; one daemon per state dir", state_lock.error().c_str());
    return daemon_exit::cannot_serve;
  }
  {
    std::error_code ec;
    if (config.socket.has_parent_path()) std::filesystem::create_directories(config.socket.parent_path(), ec);
  }
  auto socket_lock = InstanceLock::acquire(config.socket.string() + ".lock");
  if (!socket_lock) {
    NSA_ERROR("refusing to start: %s; stop it first or choose another --socket", socket_lock.error().c_str());
    return daemon_exit::cannot_serve;
  }
  std::string detail;
  switch (probe_socket(config.socket, &detail)) {
    case SocketState::absent:
      break;
    case SocketState::stale:
      if (::unlink(config.socket.c_str()) != 0) {
        NSA_ERROR("cannot remove the stale socket %s: %s; remove it by hand or choose another --socket",
                  config.socket.c_str(), std::strerror(errno));
        return daemon_exit::cannot_serve;
      }
      NSA_INFO("replaced the stale socket %s (its daemon is gone)", config.socket.c_str());
      break;
    case SocketState::live:
      NSA_ERROR("refusing to start: a daemon%s is already serving on %s; stop it first or choose another --socket",
                detail.empty() ? "" : (" (" + detail + ")").c_str(), config.socket.c_str());
      return daemon_exit::cannot_serve;
    case SocketState::foreign:
      NSA_ERROR("refusing to start: %s is in the way (%s); remove it or choose another --socket",
                config.socket.c_str(), detail.c_str());
      return daemon_exit::cannot_serve;
  }

  auto store = nsa::cache::VerdictStore::open(config.store_path());
  if (!store) {
    NSA_ERROR("cannot open the store %s (%s): %s", config.store_path().c_str(), store.error().code.c_str(),
              store.error().message.c_str());
    return daemon_exit::store_error;
  }
  NSA_INFO("store %s: schema %d, epoch %lld", config.store_path().c_str(), store->schema_version(),
           static_cast<long long>(store->epoch()));

  nsa::jit::DriverProbe probe;
  if (const char* fake = std::getenv("NSA_TUNE_TEST_DEVICES"); fake && *fake) {
    // TEST ONLY: the end-to-end tests run the tuner against a worker stand-in on hosts without
    // a GPU. Never set in production: the daemon would answer for GPUs it does not have.
    auto p = probe_from_test_devices(fake);
    if (!p) {
      NSA_ERROR("%s", p.error().c_str());
      return daemon_exit::usage;
    }
    probe = std::move(*p);
    NSA_WARN("TEST ONLY: NSA_TUNE_TEST_DEVICES replaces the GPU probe with %zu made-up devices",
             probe.devices.size());
  } else {
    probe = nsa::jit::probe_devices();
  }
  HostInfo host = host_info_from(probe, nsa::jit::nvrtc_version(), nsa::jit::kernel_source_hash(),
                                 static_cast<std::int64_t>(std::time(nullptr)));
  if (!host.driver_problem.empty()) {
    NSA_WARN("no usable GPU: %s; serving anyway (device queries are answered sdpa/no_device)",
             host.driver_problem.c_str());
  } else {
    for (const auto& d : host.devices)
      NSA_INFO("GPU %d: %s, %s, %d SMs, %.1f GiB, %s, driver %d, NVRTC %s", d.record.ordinal, d.record.name.c_str(),
               d.record.arch.c_str(), d.record.sm_count, d.record.memory_bytes / 1073741824.0, d.record.uuid.c_str(),
               host.driver_version, host.nvrtc_version.c_str());
  }

  auto created = State::create(std::move(*store), std::move(host));
  if (!created) {
    NSA_ERROR("cannot record this host's devices in the store: %s", created.error().message.c_str());
    return daemon_exit::store_error;
  }
  std::unique_ptr<State> state = std::move(*created);

  // Declared in this order so that unwinding destroys the tuner (joining its threads, which
  // post to the io_context) before the io_context.
  asio::io_context io(1);
  Tuning tuning(config, state->host());
  ServiceStats stats;
  stats.started_at_unix = static_cast<std::int64_t>(std::time(nullptr));
  Handler handler(*state, config, *admin, stats, tuning);
  Server server(io, config, *state, handler, stats);
  state->on_epoch_change([&server](std::int64_t epoch) {
    NSA_INFO("epoch moved to %lld", static_cast<long long>(epoch));
    server.broadcast_epoch(epoch);
  });
  if (auto r = server.listen(); !r) {
    NSA_ERROR("%s", r.error().c_str());
    return daemon_exit::cannot_serve;
  }

  // Verdicts land on a tuner thread; the snapshot, the memo and the sessions belong to the io
  // thread, so the tuner only posts. The refresh there moves the epoch and tells subscribers.
  tuning.start([&io, &state](std::int64_t epoch) {
    asio::post(io, [&state, epoch] {
      try {
        if (!state->refresh()) NSA_DEBUG("verdicts landed at epoch %lld (already served)", static_cast<long long>(epoch));
      } catch (const nsa::cache::StoreFailure& e) {
        NSA_ERROR("cannot read the verdicts the tuner wrote (serving the last snapshot): %s", e.what());
      }
    });
  });
  if (tuning.on()) {
    NSA_INFO("tuning on: %zu device%s, worker %s", state->host().devices.size(),
             state->host().devices.size() == 1 ? "" : "s", tuning.worker().c_str());
  } else if (config.no_tune) {
    NSA_INFO("tuning off: %s", tuning.off_reason().c_str());
  } else {
    NSA_WARN("tuning off: %s; serving stored verdicts, pins and fallbacks", tuning.off_reason().c_str());
  }

  // The first SIGTERM/SIGINT stops gracefully; a second one closes every connection at once
  // (for an operator who does not want to wait out the grace period). The tuner is stopped on
  // a thread of its own at the first signal, so that its workers are interrupted at once while
  // the io thread finishes the requests it has.
  std::jthread tuner_stopper;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int signo) {
        if (ec) return;
        const char* name = signo == SIGTERM ? "SIGTERM" : "SIGINT";
        if (!server.stopping()) {
          NSA_INFO("%s received: finishing in-flight requests (again to close connections at once)", name);
          signals.async_wait(on_signal);  // armed before stop(), which may finish at once
          if (tuning.on()) tuner_stopper = std::jthread([&tuning] { tuning.stop(); });
          server.stop();
        } else {
          NSA_WARN("second %s: closing every connection now", name);
          server.stop(std::chrono::milliseconds(0));
        }
      };
  signals.async_wait(on_signal);
  server.on_stopped([&signals] { signals.cancel(); });
  server.start();
  NSA_INFO("serving on %s (%zu pins, %zu current verdicts, epoch %lld)", config.socket.c_str(),
           state->snapshot()->pins.size(), state->snapshot()->verdict_count(),
           static_cast<long long>(state->snapshot()->epoch));

  io.run();
  if (tuner_stopper.joinable()) tuner_stopper.join();
  tuning.stop();  // idempotent; here when io.run() ended without a signal

  int code = daemon_exit::ok;
  if (auto r = state->flush_demand(); !r) {
    NSA_ERROR("demand of %zu untuned points could not be written at shutdown: %s", state->pending_demand(),
              r.error().message.c_str());
    code = daemon_exit::store_error;
  }
  state.reset();  // closes the store (checkpointing its WAL)
  server.unlink_socket();
  NSA_INFO("stopped (%llu requests served)", static_cast<unsigned long long>(stats.requests));
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  try {
    return run(argc, argv);
  } catch (const nsa::cache::StoreFailure& e) {
    NSA_ERROR("store failure: %s", e.what());
    return daemon_exit::store_error;
  } catch (const std::exception& e) {
    NSA_ERROR("fatal: %s", e.what());
    return daemon_exit::cannot_serve;
  }
}

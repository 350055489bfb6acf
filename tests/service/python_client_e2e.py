"""The pure-Python client (api/python/nsa_tune) against the real nsa-tuned, driven by
e2e_python_client_test.cpp: dispatch, the memo, an epoch change dropping it, the fallback within
the budget once the daemon is stopped, and answers again after a restart.

Usage: python_client_e2e.py SOCKET DAEMON_PID DAEMON_ARGV_JSON
Exits 0 when every check passed; otherwise prints what failed and exits 1. The daemon it
restarts is stopped (SIGTERM) before it exits.
"""

import json
import os
import signal
import subprocess
import sys
import time

from nsa_tune import Client, DaemonError, Problem

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def eventually(pred, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def main():
    socket_path, pid, argv = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    shape = dict(d_qk=128, d_v=128, h=16, h_kv=4, block=64, n=16, t_q=1, t_kv=32768, batch=64)
    sm89 = Problem(arch="sm_89", **shape)
    # A generous budget for the functional part: the test machine may be busy.
    c = Client(socket_path, budget_us=500000, client_name="python_client_e2e")
    try:
        a = c.dispatch(sm89)
        check(a.backend == "sdpa" and a.provenance == "pinned", "sm_89 is sdpa/pinned: %s" % (a,))
        check("M4-02" in a.reason, "the pin's reason names the ADR")
        check(c.stats()["misses"] == 1, "the first dispatch asked the daemon")
        c.dispatch(sm89)
        check(c.stats()["hits"] == 1, "the second came from the memo: %s" % c.stats())

        check(eventually(lambda: c.epoch is not None), "the client learned the epoch")
        before = c.epoch
        reply = c.pin("sm_80", "python e2e epoch test")
        check(reply["epoch"] > before, "pin moved the epoch")
        check(eventually(lambda: c.epoch is not None and c.epoch > before), "the subscription saw the new epoch")
        c.dispatch(sm89)
        check(c.stats()["misses"] == 2, "the memo was dropped: %s" % c.stats())
        sm80 = c.dispatch(Problem(arch="sm_80", **shape))
        check(sm80.provenance == "pinned", "the new pin is in force: %s" % (sm80,))
        try:
            c.unpin("sm_89")
            check(False, "unpin sm_89 must be refused")
        except DaemonError as e:
            check(e.code == "refused", "unpin sm_89 is refused: %s" % e)

        # Stop the daemon; a client with the default 2 ms budget answers the fallback within it.
        os.kill(pid, signal.SIGTERM)
        check(eventually(lambda: not os.path.exists(socket_path)), "the daemon removed its socket on SIGTERM")
        fast = Client(socket_path, subscribe=False)
        other = Problem(arch="sm_89", **dict(shape, t_kv=4096))
        t0 = time.monotonic()
        a = fast.dispatch(other)
        took_ms = (time.monotonic() - t0) * 1e3
        check(a.backend == "sdpa" and a.provenance == "daemon_unavailable", "fallback without a daemon: %s" % (a,))
        check(took_ms < 2.0 + 20.0, "the fallback came within the budget (%.2f ms; 20 ms slack for a busy host)" % took_ms)
        fast.close()
        check(c.dispatch(other).provenance == "daemon_unavailable", "the long-lived client falls back too")

        # Restart: the same client answers again without being reopened.
        log = open(os.path.join(os.path.dirname(socket_path), "python-restart.log"), "w")
        restarted = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            check(eventually(lambda: c.dispatch(other).provenance == "pinned", 10.0),
                  "the client answers again after the restart")
        finally:
            restarted.send_signal(signal.SIGTERM)
            check(restarted.wait(10) == 0, "the restarted daemon stopped cleanly")
    finally:
        c.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

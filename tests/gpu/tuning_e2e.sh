#!/usr/bin/env bash
# The tuner end to end on a GPU host, driven the way an operator would (issue 4's evidence):
#   1. an empty state dir: nsa-tuned starts, answers `untuned`, tunes the default plan (timed);
#   2. the report (text, markdown, SVG plot) and dispatch answers that are now `measured`;
#   3. a restart serves the stored verdicts at once and compiles nothing (the store's compiled
#      kernel rows are unchanged);
#   4. a deliberately faulting variant (NSA_TUNE_TEST_FAULT, test-only) is contained: recorded as
#      crashed, the worker restarted, while a client keeps getting answers from the daemon.
#
#   tests/gpu/tuning_e2e.sh PREFIX LOGDIR [PHASE...]
#
# PREFIX is an install (./setup.sh dist); PHASE is any of tune, restart, fault (default: all three,
# in that order). The state dir is $NSA_E2E_STATE (default /tmp/nsa-tune-e2e), created empty by
# `tune` and reused by the later phases, so they can run in separate calls on the same host.
# Exits non-zero on the first failed expectation; everything it saw is under LOGDIR.
set -u -o pipefail
prefix=$(cd "$1" && pwd); logs=$2
mkdir -p "$logs"
bin=$prefix/bin
state=${NSA_E2E_STATE:-/tmp/nsa-tune-e2e}
phases=("${@:3}"); ((${#phases[@]})) || phases=(tune restart fault)
want() { [[ " ${phases[*]} " == *" $1 "* ]]; }
sock=$state/nsa-tuned.sock
export PYTHONPATH=$prefix/lib/python3/site-packages${PYTHONPATH:+:$PYTHONPATH}
pid=
fail() { echo "FAIL: $*" | tee -a "$logs/summary.txt"; [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; exit 1; }
note() { echo "$*" | tee -a "$logs/summary.txt"; }
ctl() { "$bin/nsa-tunectl" --socket "$sock" --state-dir "$state" "$@"; }
json_get() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

start_daemon() {
  "$bin/nsa-tuned" --state-dir "$state" --socket "$sock" --log-level info >>"$logs/daemon.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do [[ -S $sock ]] && ctl status --json >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "nsa-tuned did not come up (daemon.log)"
}
stop_daemon() {
  kill -TERM "$pid"; wait "$pid"; local rc=$?; pid=
  [[ $rc -eq 0 ]] || fail "nsa-tuned exited $rc on SIGTERM"
}
decode=(--d-qk 128 --d-v 128 --h 16 --h-kv 4 --block 64 --n 16 --t-q 1 --t-kv 32768 --batch 64)
paper=(--d-qk 192 --d-v 128 --h 16 --h-kv 4 --block 64 --n 16 --t-q 1 --t-kv 32768 --batch 64)
kernel_rows() { python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select count(*), coalesce(max(created_at),0) from compiled_kernels').fetchone())" "$state/state.db"; }
wait_idle() {  # $1: limit in seconds; prints progress every 15 s
  local t0=$SECONDS s st
  while (( SECONDS - t0 < $1 )); do
    s=$(ctl status --json) || fail "status failed while tuning"
    st=$(json_get "d['tuning']['state'] if d.get('tuning') else 'none'" <<<"$s")
    pend=$(json_get "len(d['tuning']['pending_requests']) if d.get('tuning') else 0" <<<"$s")
    if [[ $st == idle && $pend == 0 ]]; then return 0; fi
    (( (SECONDS - t0) % 15 == 0 )) && json_get "[(x['state'], x['family'], x['point_index'], x['points'], x['verdicts'], x['measurements'], x['worker_restarts'], x['last_error']) for x in d['tuning']['devices']]" <<<"$s"
    sleep 1
  done
  return 1
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$logs/summary.txt"

# 1. empty state dir: untuned, then the default plan.
if want tune; then
rm -rf "$state"; mkdir -p "$state"
t_start=$SECONDS
start_daemon
ctl query --json "${decode[@]}" >"$logs/answer_before.json" || fail "query before tuning"
[[ $(json_get "d['provenance']" <"$logs/answer_before.json") == untuned ]] || note "note: first answer was not untuned: $(cat "$logs/answer_before.json")"
wait_idle "${NSA_E2E_TUNE_LIMIT:-600}" || fail "the default plan did not finish within ${NSA_E2E_TUNE_LIMIT:-600} s"
t_tune=$((SECONDS - t_start))
note "default plan tuned in ${t_tune} s (daemon start to idle)"
ctl status >"$logs/status_after_tuning.txt"

# 2. report and answers.
ctl report >"$logs/report.txt" || fail "report"
ctl report --format markdown >"$logs/report.md" || fail "report markdown"
ctl report --format json >"$logs/report.json" || fail "report json"
ctl report --plot "$logs/speedup.svg" >/dev/null || fail "report --plot"
python3 -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$logs/speedup.svg" || fail "plot is not XML"
ctl query --json "${decode[@]}" >"$logs/answer_decode.json" || fail "query decode"
ctl query --json "${paper[@]}" >"$logs/answer_paper.json" || fail "query paper"
ctl query --json --arch sm_89 "${decode[@]}" >"$logs/answer_sm89.json" || fail "query sm_89"
for f in answer_decode answer_paper answer_sm89; do note "$f: $(json_get "(d['backend'], d['provenance'], d['variant'], d['speedup'], d['reason'])" <"$logs/$f.json")"; done
[[ $(json_get "d['provenance']" <"$logs/answer_decode.json") == measured ]] || fail "decode answer is not measured after tuning"
[[ $(json_get "d['provenance']" <"$logs/answer_sm89.json") == pinned ]] || fail "sm_89 answer is not pinned"
stop_daemon
fi

# 3. restart: answers at once, nothing recompiled, nothing re-tuned.
if want restart; then
before=$(kernel_rows)
t0=$(date +%s.%N)
start_daemon
ctl query --json "${decode[@]}" >"$logs/answer_restart.json" || fail "query after restart"
t1=$(date +%s.%N)
[[ $(json_get "d['provenance']" <"$logs/answer_restart.json") == measured ]] || fail "restart does not serve the stored verdict"
sleep 5; wait_idle 60 || fail "restart started re-tuning"
after=$(kernel_rows)
note "restart: first measured answer $(python3 -c "print(round($t1-$t0,2))") s after start; compiled_kernels (rows, newest) before $before after $after"
[[ $before == "$after" ]] || fail "the restart compiled kernels"
stop_daemon
fi

# 4. containment: a faulting variant while a client keeps asking.
if want fault; then
[[ -f $logs/report.json ]] || ctl report --format json >"$logs/report.json"
NSA_TUNE_TEST_FAULT=illegal_address start_daemon
family=$(json_get "d['archs'][0]['families'][0]['family'] if d['archs'] and d['archs'][0]['families'] else ''" <"$logs/report.json")
[[ -n $family ]] || family=all
ctl retune "$family" >/dev/null || fail "retune"
answers=0; errors=0
while :; do
  if ctl --timeout-ms 1000 query --json "${decode[@]}" >/dev/null 2>&1; then answers=$((answers+1)); else errors=$((errors+1)); fi
  s=$(ctl status --json) || { errors=$((errors+1)); continue; }
  [[ $(json_get "d['tuning']['state']" <<<"$s") == idle && $(json_get "len(d['tuning']['pending_requests'])" <<<"$s") == 0 ]] && break
  (( answers + errors > 5000 )) && fail "fault retune did not finish"
done
kill -0 "$pid" || fail "the daemon died during the fault run"
python3 - "$state/state.db" <<'PY' | tee -a "$logs/summary.txt"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute("select status, variant, detail from measurements where variant like '%test_fault%' order by id").fetchall()
print("fault measurements:", rows[-3:] if rows else "none")
if not any(r[0] in ("crashed", "timeout") for r in rows): sys.exit("FAIL: the faulting variant was not recorded as crashed")
PY
[[ $? -eq 0 ]] || fail "fault not recorded"
note "during the fault run: $answers answers, $errors failed queries; daemon alive"
ctl status >"$logs/status_after_fault.txt"
stop_daemon
fi
note "PASS: ${phases[*]}"

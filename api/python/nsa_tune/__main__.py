"""python -m nsa_tune: ask nsa-tuned from a shell.

    python -m nsa_tune query --arch sm_89 --d-qk 128 --d-v 128 --h 16 --h-kv 4 --block 64 --n 16 \\
                             --t-q 1 --t-kv 32768 --batch 64
    python -m nsa_tune status | pins | report | ping
    python -m nsa_tune pin sm_80 "reason"  |  unpin sm_80  |  retune [SCOPE]

Prints JSON. Exit status: 0 answered; 1 the daemon was unavailable (query prints the fallback
answer); 2 bad arguments or an invalid problem; 3 the daemon answered with an error.
"""

import argparse
import json
import sys

from .client import DEFAULT_BUDGET_US, Client, DaemonError, DaemonUnavailable, InvalidProblem, Problem


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nsa_tune", description="Ask nsa-tuned from a shell.")
    p.add_argument("--socket", help="daemon socket (default: $NSA_TUNE_SOCKET or /run/nsa-tune/nsa-tuned.sock)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for status, report and admin ops")
    # The same options after the command too ("query --socket S ..."), without overriding them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("query", parents=[common], help="which backend for a shape (a dispatch)")
    target = q.add_mutually_exclusive_group()
    target.add_argument("--device", type=int, help="device ordinal on the daemon's host (default 0)")
    target.add_argument("--device-uuid", help="device UUID (GPU-...)")
    target.add_argument("--arch", help="a GPU class instead of a device, e.g. sm_89")
    q.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    q.add_argument("--d-qk", type=int, default=128)
    q.add_argument("--d-v", type=int, default=128)
    q.add_argument("--h", type=int, default=16, help="query heads per KV group")
    q.add_argument("--h-kv", type=int, default=4)
    q.add_argument("--block", type=int, default=64)
    q.add_argument("--n", type=int, default=16)
    q.add_argument("--t-q", type=int, default=1)
    q.add_argument("--t-kv", type=int, required=True)
    q.add_argument("--batch", type=int, default=1)
    q.add_argument("--budget-us", type=int, default=DEFAULT_BUDGET_US * 50,
                   help="budget of the dispatch in microseconds (default 100000: a shell is not a hot path)")

    for name in ("status", "pins", "report", "ping"):
        sub.add_parser(name, parents=[common])
    pin = sub.add_parser("pin", parents=[common], help="admin: pin an arch to sdpa")
    pin.add_argument("arch")
    pin.add_argument("reason")
    unpin = sub.add_parser("unpin", parents=[common], help="admin: remove an operator pin")
    unpin.add_argument("arch")
    retune = sub.add_parser("retune", parents=[common], help="admin: queue a re-tune")
    retune.add_argument("scope", nargs="?", default="all")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "query":
        try:
            problem = Problem(d_qk=args.d_qk, d_v=args.d_v, h=args.h, h_kv=args.h_kv, block=args.block, n=args.n,
                              t_q=args.t_q, t_kv=args.t_kv, batch=args.batch, dtype=args.dtype, device=args.device,
                              device_uuid=args.device_uuid, arch=args.arch)
        except InvalidProblem as e:
            print("nsa_tune: invalid problem (%s): %s" % (e.code, e.message), file=sys.stderr)
            return 2
        with Client(args.socket, budget_us=args.budget_us, subscribe=False) as c:
            try:
                a = c.dispatch(problem)
            except InvalidProblem as e:
                print("nsa_tune: invalid problem (%s): %s" % (e.code, e.message), file=sys.stderr)
                return 2
        out = a.to_json()
        out["family"], out["point"] = problem.family_key, problem.point_key
        print(json.dumps(out, indent=2))
        return 1 if a.provenance == "daemon_unavailable" else 0

    with Client(args.socket, timeout=args.timeout, subscribe=False) as c:
        try:
            if args.command == "status":
                result = c.status()
            elif args.command == "pins":
                result = c.pins()
            elif args.command == "report":
                result = c.report()
            elif args.command == "ping":
                result = {"epoch": c.ping()}
            elif args.command == "pin":
                result = c.pin(args.arch, args.reason)
            elif args.command == "unpin":
                result = c.unpin(args.arch)
            else:
                result = c.retune(args.scope)
        except DaemonUnavailable as e:
            print("nsa_tune: %s" % e, file=sys.stderr)
            return 1
        except DaemonError as e:
            print("nsa_tune: the daemon answered %s: %s" % (e.code, e.message), file=sys.stderr)
            return 3
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pure-Python client of nsa-tuned (protocol 1, docs/protocol.md). Python 3.8+, stdlib only.

How a dispatch is answered, and why it never blocks beyond the budget (the same design as the
C library, api/client/client.cpp):

1. The memo, a dict keyed by the whole (frozen, validated) Problem: a hit is one dict lookup.
2. If the background thread knows the daemon is down or speaks another protocol version, the
   fallback is answered at once.
3. Otherwise an idle connection is taken from the pool, or a new one is made and the hello is
   pipelined with the dispatch; every socket operation gets the time left until one deadline
   (start + budget).
4. A reply in time fills the answer and is memoized if its epoch is current. Anything else (no
   daemon, no reply in time, EOF, garbage, another protocol) closes that connection, so that a
   late reply is never read as the reply to the next request, and answers the fallback:
   backend "sdpa", provenance "daemon_unavailable", with a reason that says which it was.
   Fallbacks are never memoized.

A daemon thread holds a ``subscribe`` connection: every different epoch it learns drops the memo,
and when the subscription is lost it marks the daemon down, empties the pool and reconnects with
exponential backoff (10 ms doubling to 2 s by default); coming back drops the memo too, since the
daemon may have restarted on a new driver meanwhile. ``close()`` wakes it through a pipe and
joins it at once.

The other operations (status, report, pins, retune, pin, unpin) are not on anyone's hot path: they
use a plain timeout (5 s by default) and raise ``DaemonUnavailable`` or ``DaemonError``.
"""

import json
import os
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

__all__ = [
    "PROTOCOL_VERSION", "DEFAULT_SOCKET", "MAX_PROBLEMS_PER_REQUEST", "Problem", "Answer", "Client",
    "NsaTuneError", "InvalidProblem", "DaemonError", "DaemonUnavailable", "default_socket_path",
]

VERSION = "0.1.0"
PROTOCOL_VERSION = 1
DEFAULT_SOCKET = "/run/nsa-tune/nsa-tuned.sock"
MAX_FRAME_BYTES = 64 * 1024
MAX_REPLY_FRAME_BYTES = 16 * 1024 * 1024
MAX_PROBLEMS_PER_REQUEST = 256
DEFAULT_BUDGET_US = 2000

PROVENANCES = ("pinned", "measured", "untuned", "no_device", "daemon_unavailable")
BACKENDS = ("sdpa", "sparse")
_SHAPE_ERRORS = ("bad_shape", "bad_type", "missing_field", "bad_request")


class NsaTuneError(Exception):
    """Base of the errors this module raises."""


class InvalidProblem(NsaTuneError, ValueError):
    """A problem breaks a rule of docs/protocol.md ("Problems"). ``code`` is the protocol's error
    code (bad_shape, bad_type, missing_field, bad_request); ``message`` names the field and rule."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class DaemonError(NsaTuneError):
    """The daemon answered a request with an error reply (``code``, ``message``)."""

    def __init__(self, code: str, message: str):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class DaemonUnavailable(NsaTuneError):
    """No answer from the daemon: not running, too slow, another protocol version, or garbage."""


def default_socket_path() -> str:
    """$NSA_TUNE_SOCKET when set and non-empty, else /run/nsa-tune/nsa-tuned.sock."""
    return os.environ.get("NSA_TUNE_SOCKET") or DEFAULT_SOCKET


# ---- problems ------------------------------------------------------------------------------

_PROBLEM_FIELDS = ("device", "device_uuid", "arch", "dtype", "d_qk", "d_v", "h", "h_kv", "block", "n",
                   "t_q", "t_kv", "batch")
_REQUIRED = ("dtype", "d_qk", "d_v", "h", "h_kv", "block", "n", "t_q", "t_kv", "batch")
_INT_FIELDS = ("device", "d_qk", "d_v", "h", "h_kv", "block", "n", "t_q", "t_kv", "batch")
_ARCH_RE = re.compile(r"^sm_[1-9][0-9]{1,2}[af]?$")


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        diag, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            up = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1]))
            diag = up
    return row[len(b)]


def _type_phrase(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, (list, tuple)):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return "a " + type(v).__name__


def _excerpt(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


@dataclass(frozen=True)
class Problem:
    """One selection-attention call (docs/protocol.md, "Problems"). Validated on construction:
    an invalid problem raises InvalidProblem with the same code and message the daemon would give.
    The target is at most one of ``device``, ``device_uuid``, ``arch``; none means device 0.
    Frozen and hashable, so it is its own memo key."""

    d_qk: int
    d_v: int
    h: int
    h_kv: int
    block: int
    n: int
    t_q: int
    t_kv: int
    batch: int
    dtype: str = "bf16"
    device: Optional[int] = None
    device_uuid: Optional[str] = None
    arch: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("device_uuid", "arch", "dtype"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise InvalidProblem("bad_type", "field '%s' must be a string, got %s (%s)"
                                     % (name, _excerpt(v), _type_phrase(v)))
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if v is None and name == "device":
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidProblem("bad_type", "field '%s' must be an integer, got %s (%s)"
                                     % (name, _excerpt(v), _type_phrase(v)))
        err = self._rule_violation()
        if err:
            raise InvalidProblem(*err)

    def _rule_violation(self):
        targets = sum(x is not None for x in (self.device, self.device_uuid, self.arch))
        if targets > 1:
            return ("bad_request", "give at most one of device, device_uuid and arch (none means device 0)")
        if self.device is not None and not 0 <= self.device <= 1023:
            return ("bad_shape", "device=%d is not a device ordinal; use 0..1023" % self.device)
        if self.device_uuid is not None:
            if self.device_uuid == "":
                return ("bad_shape", "device_uuid is empty; leave the field out to mean device 0")
            if len(self.device_uuid.encode()) > 64 or not all(" " < c < "\x7f" for c in self.device_uuid):
                return ("bad_shape", "device_uuid must be at most 64 printable ASCII characters without spaces, "
                                     "like \"GPU-8f1c2d3e-...\"")
        if self.arch is not None:
            if self.arch == "":
                return ("bad_shape", "arch is empty; write it like sm_90, or leave it out")
            if not _ARCH_RE.match(self.arch):
                return ("bad_shape", "arch \"%s\" is not an arch name; write it like sm_89, sm_90 or sm_90a"
                        % self.arch[:32])
        if self.dtype not in ("bf16", "fp16"):
            return ("bad_shape", "dtype \"%s\" is not supported; use \"bf16\" or \"fp16\"" % self.dtype[:32])
        for label, v in (("D_qk", self.d_qk), ("D_v", self.d_v)):
            if v % 8 != 0:
                return ("bad_shape", "%s=%d is not a multiple of 8; head dims must be multiples of 8 in [8, 256]"
                        % (label, v))
            if not 8 <= v <= 256:
                return ("bad_shape", "%s=%d is outside [8, 256]; head dims must be multiples of 8 in [8, 256]"
                        % (label, v))
        if not 1 <= self.h <= 64:
            return ("bad_shape", "h=%d query heads per KV group is outside [1, 64]" % self.h)
        if not 1 <= self.h_kv <= 1024:
            return ("bad_shape", "H_kv=%d is outside [1, 1024]" % self.h_kv)
        if not (16 <= self.block <= 256 and self.block & (self.block - 1) == 0):
            return ("bad_shape", "block=%d must be a power of two in [16, 256]" % self.block)
        if not 1 <= self.n <= 128:
            return ("bad_shape", "n=%d selected blocks per row is outside [1, 128]" % self.n)
        if not 1 <= self.t_kv < 2 ** 31:
            return ("bad_shape", "T_kv=%d is outside [1, 2^31)" % self.t_kv)
        if not 1 <= self.t_q <= self.t_kv:
            return ("bad_shape", "T_q=%d is outside [1, T_kv=%d]; query rows sit at the end of the keys, so there "
                                 "are never more of them than keys" % (self.t_q, self.t_kv))
        if self.batch < 1:
            return ("bad_shape", "batch=%d must be at least 1" % self.batch)
        if not self.batch <= 2 ** 31 - 1:
            return ("bad_shape", "batch=%d is too large" % self.batch)
        if self.batch * self.h_kv * self.t_q > 2 ** 48:
            return ("bad_shape", "batch*H_kv*T_q = %d query rows exceeds the limit 2^48"
                    % (self.batch * self.h_kv * self.t_q))
        return None

    @classmethod
    def from_json(cls, obj: Any) -> "Problem":
        """Parses a problem object of the protocol, with the daemon's checks in the daemon's order:
        unknown fields, JSON types, missing fields, then the rules."""
        if not isinstance(obj, dict):
            raise InvalidProblem("bad_request", "a problem must be a JSON object, got %s" % _type_phrase(obj))
        for key in obj:
            if key in _PROBLEM_FIELDS:
                continue
            best = min(_PROBLEM_FIELDS, key=lambda f: _edit_distance(key, f))
            d = _edit_distance(key, best)
            shown = key if len(key) <= 40 else key[:37] + "..."
            if d <= 2 and d < max(len(key), len(best)):
                raise InvalidProblem("bad_request", "unknown field '%s' (did you mean %s?)" % (shown, best))
            raise InvalidProblem("bad_request", "unknown field '%s'; a problem has the fields %s"
                                 % (shown, ", ".join(_PROBLEM_FIELDS)))
        for name in ("device_uuid", "arch", "dtype"):
            if name in obj and not isinstance(obj[name], str):
                raise InvalidProblem("bad_type", "field '%s' must be a string, got %s (%s)"
                                     % (name, _excerpt(obj[name]), _type_phrase(obj[name])))
        for name in _INT_FIELDS:
            if name in obj and (isinstance(obj[name], bool) or not isinstance(obj[name], int)):
                raise InvalidProblem("bad_type", "field '%s' must be an integer, got %s (%s)"
                                     % (name, _excerpt(obj[name]), _type_phrase(obj[name])))
        for name in _REQUIRED:
            if name not in obj:
                raise InvalidProblem("missing_field", "problem is missing the field '%s'" % name)
        return cls(**obj)

    def to_json(self) -> Dict[str, Any]:
        out = {}  # type: Dict[str, Any]
        if self.device is not None:
            out["device"] = self.device
        if self.device_uuid is not None:
            out["device_uuid"] = self.device_uuid
        if self.arch is not None:
            out["arch"] = self.arch
        for name in _REQUIRED:
            out[name] = getattr(self, name)
        return out

    @property
    def phase(self) -> str:
        return "decode" if self.t_q == 1 else "prefill"

    @property
    def family_key(self) -> str:
        """``bf16.dqk128.dv128.h16.blk64.n16.decode``: what a kernel is compiled for."""
        return "%s.dqk%d.dv%d.h%d.blk%d.n%d.%s" % (self.dtype, self.d_qk, self.d_v, self.h, self.block, self.n,
                                                 self.phase)

    @property
    def point_key(self) -> str:
        """``b64.hkv4.tq1.tkv32768``: where in its family the problem sits."""
        return "b%d.hkv%d.tq%d.tkv%d" % (self.batch, self.h_kv, self.t_q, self.t_kv)


# ---- answers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """The answer to one problem (docs/protocol.md, "Answers"). ``epoch`` is the daemon epoch the
    answer belongs to (None for a fallback)."""

    backend: str
    provenance: str
    reason: str
    variant: Optional[str] = None
    launch: Optional[Dict[str, Any]] = field(default=None, hash=False)  # compared, not hashed (a dict)
    speedup: Optional[float] = None
    run_id: Optional[int] = None
    arch: Optional[str] = None
    epoch: Optional[int] = None

    @property
    def sparse(self) -> bool:
        return self.backend == "sparse"

    @classmethod
    def fallback(cls, reason: str) -> "Answer":
        return cls(backend="sdpa", provenance="daemon_unavailable", reason=reason)

    @classmethod
    def from_json(cls, obj: Any, epoch: Optional[int] = None) -> "Answer":
        """Parses an answer object; ValueError for a malformed one (same rules as the C++
        answer_from_json: a sparse answer must be measured and name its variant)."""
        if not isinstance(obj, dict):
            raise ValueError("an answer must be a JSON object")
        for name in ("backend", "provenance", "reason"):
            if not isinstance(obj.get(name), str):
                raise ValueError("answer has no string field '%s'" % name)
        if obj["backend"] not in BACKENDS:
            raise ValueError("answer has unknown backend '%s'" % obj["backend"])
        if obj["provenance"] not in PROVENANCES:
            raise ValueError("answer has unknown provenance '%s'" % obj["provenance"])

        def opt(name, ok, what):
            v = obj.get(name)
            if v is not None and not ok(v):
                raise ValueError("answer field '%s' must be %s or null" % (name, what))
            return v

        variant = opt("variant", lambda v: isinstance(v, str), "a string")
        launch = opt("launch", lambda v: isinstance(v, dict), "an object")
        speedup = opt("speedup", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                      "a non-negative number")
        run_id = opt("run_id", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                     "a non-negative integer")
        arch = opt("arch", lambda v: isinstance(v, str), "a string")
        if obj["backend"] == "sparse" and not variant:
            raise ValueError("sparse answer without a variant")
        if obj["backend"] == "sparse" and obj["provenance"] != "measured":
            raise ValueError("sparse answer with provenance '%s'; only 'measured' can choose sparse"
                             % obj["provenance"])
        if obj["provenance"] == "daemon_unavailable":
            raise ValueError("an answer with provenance daemon_unavailable, which only clients may give")
        return cls(backend=obj["backend"], provenance=obj["provenance"], reason=obj["reason"],
                   variant=variant or None, launch=launch, speedup=None if speedup is None else float(speedup),
                   run_id=run_id, arch=arch or None, epoch=epoch)

    def to_json(self) -> Dict[str, Any]:
        return {"backend": self.backend, "provenance": self.provenance, "variant": self.variant,
                "launch": self.launch, "speedup": self.speedup, "run_id": self.run_id, "arch": self.arch,
                "reason": self.reason}


# ---- connections ---------------------------------------------------------------------------

class _Failure(Exception):
    """Why an exchange failed; ``kind`` is one of no_daemon, timeout, closed, garbage,
    incompatible, io, cancelled."""

    def __init__(self, kind: str, message: str, known: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.known = known  # answered from the background thread's knowledge, without trying


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


class _Conn:
    """A connected Unix socket and the bytes of replies not yet taken. Every wait is bounded by a
    deadline (time.monotonic()) and, when given, interrupted by a readable ``cancel_fd``."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect(cls, path: str, deadline: float, cancel_fd: Optional[int] = None) -> "_Conn":
        if not path or len(path.encode()) > 107:
            raise _Failure("io", "socket path '%s' is empty or longer than 107 bytes" % path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            err = s.connect_ex(path)
        except OSError as e:
            s.close()
            raise _Failure("no_daemon", "connect to %s: %s" % (path, e.strerror))
        if err in (11, 115):  # EAGAIN / EINPROGRESS: the listener's backlog is full
            try:
                cls._wait(s, "w", deadline, cancel_fd, "room in the daemon's accept queue")
            except _Failure:
                s.close()
                raise
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            s.close()
            kind = "no_daemon" if err in (2, 111, 88) else "io"  # ENOENT, ECONNREFUSED, ENOTSOCK
            raise _Failure(kind, "connect to %s: %s" % (path, os.strerror(err)))
        return cls(s)

    @staticmethod
    def _wait(s: socket.socket, mode: str, deadline: float, cancel_fd: Optional[int], what: str) -> None:
        while True:
            left = None if deadline == float("inf") else _left(deadline)
            if left is not None and left <= 0:
                raise _Failure("timeout", "no %s within the budget" % what)
            rl = [s] if mode == "r" else []
            wl = [s] if mode == "w" else []
            if cancel_fd is not None:
                rl.append(cancel_fd)
            try:
                r, w, x = select.select(rl, wl, [], left)
            except InterruptedError:
                continue
            if cancel_fd is not None and cancel_fd in r:
                raise _Failure("cancelled", "client is closing")
            if r or w:
                return

    def send(self, data: bytes, deadline: float, cancel_fd: Optional[int] = None) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                self._wait(self.sock, "w", deadline, cancel_fd, "room to send the request")
            except (BrokenPipeError, ConnectionResetError) as e:
                raise _Failure("closed", "send: %s" % e.strerror)
            except OSError as e:
                raise _Failure("io", "send: %s" % e.strerror)

    def read_frame(self, deadline: Optional[float], cancel_fd: Optional[int] = None,
                   what: str = "reply") -> Dict[str, Any]:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                line = line.rstrip(b"\r")
                if not line:
                    continue
                try:
                    obj = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    obj = None
                if not isinstance(obj, dict):
                    start = "".join(c if " " <= c < "\x7f" else "?" for c in line[:40].decode("latin-1"))
                    raise _Failure("garbage", "a reply that is not a JSON object: '%s'" % start)
                return obj
            if len(self.buf) > MAX_REPLY_FRAME_BYTES:
                raise _Failure("garbage", "a reply frame larger than 16 MiB")
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                self._wait(self.sock, "r", deadline if deadline is not None else float("inf"), cancel_fd, what)
                continue
            except ConnectionResetError as e:
                raise _Failure("closed", "recv: %s" % e.strerror)
            except OSError as e:
                raise _Failure("io", "recv: %s" % e.strerror)
            if not chunk:
                raise _Failure("closed", "the daemon closed the connection")
            self.buf += chunk

    def read_reply(self, deadline: float, cancel_fd: Optional[int] = None, what: str = "reply") -> Dict[str, Any]:
        while True:
            frame = self.read_frame(deadline, cancel_fd, what)
            if "event" in frame:
                continue
            if not isinstance(frame.get("ok"), bool):
                raise _Failure("garbage", "a reply without a boolean 'ok'")
            return frame

    def hello(self, name: str, deadline: float, cancel_fd: Optional[int] = None, then: bytes = b"") -> Dict[str, Any]:
        """Hello (with ``then`` pipelined behind it); returns the reply. Raises _Failure
        "incompatible" for another protocol version."""
        self.send(_frame({"op": "hello", "id": "hello", "protocol": PROTOCOL_VERSION, "client": name}) + then,
                  deadline, cancel_fd)
        r = self.read_reply(deadline, cancel_fd, "hello reply")
        daemon = r.get("daemon") if isinstance(r.get("daemon"), str) else "unknown version"
        theirs = r.get("protocol")
        if r["ok"] is not True:
            err = r.get("error") if isinstance(r.get("error"), dict) else {}
            if err.get("code") == "version_mismatch":
                raise _Failure("incompatible", "daemon %s speaks protocol %s, this client speaks protocol %d"
                               % (daemon, theirs if isinstance(theirs, int) else "?", PROTOCOL_VERSION))
            raise _Failure("garbage", "the daemon refused hello: %s %s" % (err.get("code"), err.get("message")))
        if not isinstance(theirs, int) or isinstance(theirs, bool):
            raise _Failure("garbage", "a hello reply without an integer 'protocol'")
        if theirs != PROTOCOL_VERSION:
            raise _Failure("incompatible", "daemon %s speaks protocol %d, this client speaks protocol %d"
                           % (daemon, theirs, PROTOCOL_VERSION))
        if not isinstance(r.get("epoch"), int):
            raise _Failure("garbage", "a hello reply without an integer 'epoch'")
        return r

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _frame(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _describe(f: _Failure, budget_us: int) -> str:
    if f.kind == "no_daemon":
        what = "no daemon listening (%s)" % f.message
    elif f.kind == "timeout":
        what = "%s (%d us)" % (f.message, budget_us)
    elif f.kind == "garbage":
        what = "the daemon replied garbage (%s)" % f.message
    elif f.kind == "incompatible":
        what = "protocol version mismatch: %s" % f.message
    else:
        what = f.message
    return "nsa-tuned unavailable: %s%s; answering sdpa" % (what, "; retrying in the background" if f.known else "")


# ---- the client ----------------------------------------------------------------------------

ProblemLike = Union[Problem, Dict[str, Any]]


class Client:
    """A client of nsa-tuned. Thread-safe. Use as a context manager or call ``close()``.

    ``dispatch``/``dispatch_many`` never take longer than ``budget_us`` (default 2000 us) and never
    raise for daemon trouble: they answer the fallback (``provenance == "daemon_unavailable"``).
    They raise InvalidProblem for an invalid problem (a bug in the caller, not daemon trouble).
    The other operations use ``timeout`` seconds and raise DaemonUnavailable or DaemonError.
    """

    def __init__(self, socket_path: Optional[str] = None, budget_us: int = DEFAULT_BUDGET_US,
                 client_name: Optional[str] = None, backoff_min: float = 0.010, backoff_max: float = 2.0,
                 memo_capacity: int = 65536, timeout: float = 5.0, subscribe: bool = True):
        self.socket_path = socket_path or default_socket_path()
        self.budget_us = int(budget_us) if budget_us and budget_us > 0 else DEFAULT_BUDGET_US
        self.client_name = client_name or ("nsa_tune.py/%s" % VERSION)
        self.timeout = timeout
        self._backoff_min = backoff_min if backoff_min > 0 else 0.010
        self._backoff_max = max(self._backoff_min, backoff_max if backoff_max > 0 else 2.0)
        self._memo_capacity = memo_capacity if memo_capacity > 0 else 65536
        self._memo = {}  # type: Dict[Problem, Answer]
        self._epoch = None  # type: Optional[int]
        self._lock = threading.Lock()       # memo writes and the epoch
        self._pool_lock = threading.Lock()
        self._idle = []  # type: List[_Conn]
        self._state = "unknown"             # unknown, up, down, incompatible
        self._state_reason = None  # type: Optional[_Failure]
        self._stats = {"hits": 0, "misses": 0, "fallbacks": 0, "reconnects": 0, "epoch_changes": 0}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = None  # type: Optional[threading.Thread]
        if subscribe:
            self._thread = threading.Thread(target=self._subscription_loop, name="nsa-tune-subscriber", daemon=True)
            self._thread.start()

    # -- lifecycle --

    def close(self) -> None:
        """Stops the background thread (at once) and closes every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        with self._pool_lock:
            for c in self._idle:
                c.close()
            self._idle = []
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- state --

    @property
    def epoch(self) -> Optional[int]:
        """The daemon's epoch as last learned, or None before any."""
        return self._epoch

    def stats(self) -> Dict[str, int]:
        """hits, misses, fallbacks, reconnects, epoch_changes (counters since open)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self._stats[name] += k

    # -- dispatch --

    def dispatch(self, problem: ProblemLike) -> Answer:
        """The answer for one problem, within the budget. Raises InvalidProblem for an invalid one."""
        return self.dispatch_many([problem])[0]

    def dispatch_many(self, problems: Sequence[ProblemLike]) -> List[Answer]:
        """answers[i] for problems[i], all within one budget. Memoized answers come from the memo;
        the rest go to the daemon in requests of at most 256 problems."""
        deadline = time.monotonic() + self.budget_us / 1e6
        ps = [p if isinstance(p, Problem) else Problem.from_json(p) for p in problems]
        out = [None] * len(ps)  # type: List[Optional[Answer]]
        missing = []
        memo = self._memo
        for i, p in enumerate(ps):
            a = memo.get(p)
            if a is not None:
                out[i] = a
            else:
                missing.append(i)
        hits = len(ps) - len(missing)
        if hits or missing:
            with self._lock:
                self._stats["hits"] += hits
                self._stats["misses"] += len(missing)
        for start in range(0, len(missing), MAX_PROBLEMS_PER_REQUEST):
            chunk = missing[start:start + MAX_PROBLEMS_PER_REQUEST]
            for i, a in zip(chunk, self._exchange([ps[i] for i in chunk], deadline)):
                out[i] = a
        return out  # type: ignore[return-value]

    def _exchange(self, ps: List[Problem], deadline: float) -> List[Answer]:
        frame = _frame({"op": "dispatch", "id": "dispatch", "problems": [p.to_json() for p in ps]})
        try:
            r = self._request(frame, deadline)
        except _Failure as f:
            return self._fallback(len(ps), _describe(f, self.budget_us))
        if r["ok"] is not True:
            err = r.get("error") if isinstance(r.get("error"), dict) else {}
            code, message = str(err.get("code", "")), str(err.get("message", ""))
            m = re.match(r"problems\[(\d+)\]: ", message)
            if code in _SHAPE_ERRORS and m and int(m.group(1)) < len(ps):
                raise InvalidProblem(code, "the daemon rejected it: " + message[m.end():])
            if not code:
                return self._fallback(len(ps), _describe(_Failure("garbage", "an error reply without a code"),
                                                         self.budget_us))
            return self._fallback(len(ps), "nsa-tuned unavailable: the daemon answered %s: %s; answering sdpa"
                                  % (code, message))
        answers, epoch = r.get("answers"), r.get("epoch")
        if not isinstance(answers, list) or len(answers) != len(ps) or not isinstance(epoch, int):
            n = len(answers) if isinstance(answers, list) else "no"
            return self._fallback(len(ps), _describe(_Failure(
                "garbage", "a dispatch reply without 'epoch' or with %s answers for %d problems" % (n, len(ps))),
                self.budget_us))
        try:
            parsed = [Answer.from_json(a, epoch) for a in answers]
        except ValueError as e:
            return self._fallback(len(ps), _describe(_Failure("garbage", str(e)), self.budget_us))
        with self._lock:
            if self._epoch is None or epoch > self._epoch:
                self._set_epoch_locked(epoch)
            if epoch == self._epoch:
                for p, a in zip(ps, parsed):
                    if len(self._memo) >= self._memo_capacity:
                        self._memo.clear()
                    self._memo[p] = a
        return parsed

    def _fallback(self, n: int, reason: str) -> List[Answer]:
        self._count("fallbacks", n)
        return [Answer.fallback(reason) for _ in range(n)]

    def _set_epoch_locked(self, e: int) -> None:
        if self._epoch is not None and e != self._epoch:
            # Replace rather than clear: readers holding the old dict never see a half-cleared one.
            self._memo = {}
            self._stats["epoch_changes"] += 1
        self._epoch = e

    def _adopt_epoch(self, e: int, resubscribed: bool = False) -> None:
        """From the subscription: any different epoch is a change. ``resubscribed``: the
        subscription was lost and is back, and what happened meanwhile (a restart on a new driver)
        cannot be ruled out, so the memo goes even if the epoch looks the same."""
        with self._lock:
            if resubscribed and e == self._epoch and self._memo:
                self._memo = {}
                self._stats["epoch_changes"] += 1
            if e != self._epoch:
                self._set_epoch_locked(e)

    def _request(self, frame: bytes, deadline: float) -> Dict[str, Any]:
        if self._state in ("down", "incompatible") and self._state_reason is not None:
            f = self._state_reason
            raise _Failure(f.kind, f.message, known=True)
        for _attempt in range(2):
            with self._pool_lock:
                conn = self._idle.pop() if self._idle else None
            pooled = conn is not None
            try:
                if conn is not None:
                    conn.send(frame, deadline)
                else:
                    conn = _Conn.connect(self.socket_path, deadline)
                    conn.hello(self.client_name, deadline, then=frame)
                r = conn.read_reply(deadline)
            except _Failure as f:
                if conn is not None:
                    conn.close()
                if f.kind == "no_daemon":
                    self._mark("down", f)
                elif f.kind == "incompatible":
                    self._mark("incompatible", f)
                if pooled and f.kind == "closed" and _left(deadline) > 0:
                    continue  # an idle connection the daemon closed (a restart): one fresh try
                raise
            self._give_back(conn)
            return r
        raise _Failure("closed", "the daemon closed the connection")

    def _give_back(self, conn: _Conn) -> None:
        with self._pool_lock:
            if len(self._idle) < 8 and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _mark(self, state: str, why: _Failure) -> None:
        self._state_reason = why
        self._state = state

    # -- the background subscription --

    def _subscription_loop(self) -> None:
        try:
            self._subscribe_forever()
        except Exception as e:  # never die silently: the client then degrades to no memo drops
            self._mark("down", _Failure("io", "the subscription thread failed: %r" % e))

    def _subscribe_forever(self) -> None:
        backoff = self._backoff_min
        ever = False
        sub = _frame({"op": "subscribe", "id": "subscribe"})
        while not self._stop.is_set():
            deadline = time.monotonic() + 2.0
            conn = None
            try:
                conn = _Conn.connect(self.socket_path, deadline, self._wake_r)
                conn.hello(self.client_name, deadline, self._wake_r, then=sub)
                r = conn.read_reply(deadline, self._wake_r, "subscribe reply")
                if r["ok"] is not True or not isinstance(r.get("epoch"), int):
                    raise _Failure("garbage", "the daemon refused subscribe: %s" % json.dumps(r)[:200])
            except _Failure as f:
                if conn is not None:
                    conn.close()
                if f.kind == "cancelled":
                    return
                if f.kind != "timeout":  # a daemon that hangs is not "down": misses keep trying
                    self._mark("incompatible" if f.kind == "incompatible" else "down", f)
                    self._drop_idle()  # to the daemon that is gone (it may have died before replying)
                if self._wait(backoff):
                    return
                backoff = min(backoff * 2, self._backoff_max)
                continue
            if ever:  # counted before the epoch is adopted: whoever sees the new epoch sees it
                self._count("reconnects")
            self._adopt_epoch(r["epoch"], resubscribed=ever)
            ever = True
            backoff = self._backoff_min
            self._state = "up"
            lost = _Failure("closed", "the daemon closed the subscription")
            try:
                while True:
                    ev = conn.read_frame(None, self._wake_r, "event")
                    if ev.get("event") == "epoch" and isinstance(ev.get("epoch"), int):
                        self._adopt_epoch(ev["epoch"])
            except _Failure as f:
                lost = f
            conn.close()
            if lost.kind == "cancelled":
                return
            self._mark("down", lost)
            self._drop_idle()

    def _drop_idle(self) -> None:
        """Closes the idle request connections (their daemon is gone)."""
        with self._pool_lock:
            for c in self._idle:
                c.close()
            self._idle = []

    def _wait(self, seconds: float) -> bool:
        """Sleeps for a backoff; True when the client is closing."""
        select.select([self._wake_r], [], [], seconds)
        return self._stop.is_set()

    # -- the other operations (timeout, exceptions) --

    def call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Sends one request on a fresh connection and returns the success reply. Raises
        DaemonUnavailable (no daemon, timeout, other protocol, garbage) or DaemonError (an error
        reply: its code and message)."""
        deadline = time.monotonic() + self.timeout
        conn = None
        try:
            conn = _Conn.connect(self.socket_path, deadline)
            hello = conn.hello(self.client_name, deadline, then=_frame(request) if request.get("op") != "hello" else b"")
            if request.get("op") == "hello":
                return hello
            r = conn.read_reply(deadline)
        except _Failure as f:
            raise DaemonUnavailable(_describe(f, int(self.timeout * 1e6)).replace("; answering sdpa", ""))
        finally:
            if conn is not None:
                conn.close()
        if r["ok"] is not True:
            err = r.get("error") if isinstance(r.get("error"), dict) else {}
            raise DaemonError(str(err.get("code", "")), str(err.get("message", "")))
        return r

    def hello(self) -> Dict[str, Any]:
        """The hello reply: protocol, daemon (version), epoch."""
        return self.call({"op": "hello"})

    def ping(self) -> int:
        """The daemon's current epoch."""
        return self.call({"op": "ping", "id": 1})["epoch"]

    def status(self) -> Dict[str, Any]:
        return self.call({"op": "status", "id": 1})

    def report(self) -> Dict[str, Any]:
        """The report model (docs/report.md)."""
        return self.call({"op": "report", "id": 1})["report"]

    def pins(self) -> List[Dict[str, Any]]:
        return self.call({"op": "pins", "id": 1})["pins"]

    def retune(self, scope: str = "all") -> Dict[str, Any]:
        """Admin: queues a re-tune of "all", an arch ("sm_90") or a family key."""
        return self.call({"op": "retune", "id": 1, "scope": scope})

    def pin(self, arch: str, reason: str) -> Dict[str, Any]:
        """Admin: pins ``arch`` to sdpa with ``reason``. Returns the reply (``pin``, ``epoch``)."""
        return self.call({"op": "pin", "id": 1, "arch": arch, "reason": reason, "backend": "sdpa"})

    def unpin(self, arch: str) -> Dict[str, Any]:
        """Admin: removes an operator pin (the seeded SM 8.9 pin is refused)."""
        return self.call({"op": "unpin", "id": 1, "arch": arch})

"""nsa_tune: the pure-Python client of nsa-tuned, the daemon that says which selection-attention
backend (a sparse NSA selection kernel, or the packed-SDPA fallback) to run for a shape on this GPU.

    from nsa_tune import Client, Problem
    with Client() as c:                       # $NSA_TUNE_SOCKET or /run/nsa-tune/nsa-tuned.sock
        a = c.dispatch(Problem(d_qk=128, d_v=128, h=16, h_kv=4, block=64, n=16,
                               t_q=1, t_kv=32768, batch=64))
        if a.sparse:
            run_variant(a.variant, a.launch)
        else:
            run_packed_sdpa()

dispatch never blocks longer than the budget (2 ms by default) and never raises for daemon
trouble: without an answer in time it returns backend "sdpa", provenance "daemon_unavailable".
Python 3.8+, standard library only. Protocol: docs/protocol.md. Command line: python -m nsa_tune.
"""

from .client import (DEFAULT_SOCKET, MAX_PROBLEMS_PER_REQUEST, PROTOCOL_VERSION, VERSION, Answer, Client,
                     DaemonError, DaemonUnavailable, InvalidProblem, NsaTuneError, Problem, default_socket_path)

__version__ = VERSION
__all__ = ["Answer", "Client", "DaemonError", "DaemonUnavailable", "InvalidProblem", "NsaTuneError", "Problem",
           "PROTOCOL_VERSION", "DEFAULT_SOCKET", "MAX_PROBLEMS_PER_REQUEST", "default_socket_path", "__version__"]

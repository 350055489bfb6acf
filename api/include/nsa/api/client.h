/*
 * nsa-tune client library: asks the local nsa-tuned daemon which selection-attention backend to
 * run for a shape, from any language that can call C.
 *
 *   nsa_tune_client* c = nsa_tune_client_open(NULL);          // defaults: $NSA_TUNE_SOCKET, 2 ms
 *   nsa_tune_problem p;
 *   nsa_tune_problem_init(&p);                                 // device 0, bf16, zeros
 *   p.d_qk = 128; p.d_v = 128; p.h = 16; p.h_kv = 4; p.block = 64; p.n = 16;
 *   p.t_q = 1; p.t_kv = 32768; p.batch = 64;
 *   nsa_tune_answer a;
 *   nsa_tune_dispatch(c, &p, &a);                              // always fills `a`
 *   if (a.backend == NSA_TUNE_BACKEND_SPARSE) run_variant(a.variant, a.launch_json);
 *   else run_packed_sdpa();
 *   nsa_tune_client_close(c);
 *
 * Contracts shared by every function:
 *  - No call blocks its caller longer than the client's budget (default 2000 us), whatever the
 *    daemon does: absent, hung, slow, of another protocol version or replying garbage. In those
 *    cases the answer is the safe fallback (backend sdpa, provenance DAEMON_UNAVAILABLE) with a
 *    reason saying which of them it was.
 *  - Answers are memoized per client, keyed by the whole problem; a memoized answer costs a hash
 *    lookup under a shared lock (no system call). The memo is dropped whenever the daemon's
 *    epoch changes; a background thread holds a `subscribe` connection to learn of it and
 *    reconnects with exponential backoff (a reconnect drops the memo too: the daemon may have
 *    restarted on a new driver meanwhile). Fallbacks are never memoized.
 *  - Every function is thread-safe on one client, except nsa_tune_client_close, which must not
 *    race with other calls on the same client. No C++ exception ever leaves this library.
 *  - After fork(), the child must not use a client opened by the parent (its background thread
 *    does not exist in the child); open a new one.
 *  - Strings in the structs are NUL-terminated UTF-8.
 *
 * The protocol underneath is specified in docs/protocol.md.
 */
#ifndef NSA_TUNE_CLIENT_H
#define NSA_TUNE_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#if defined(NSA_TUNE_CLIENT_BUILDING)
#define NSA_TUNE_API __attribute__((visibility("default")))
#else
#define NSA_TUNE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nsa_tune_client nsa_tune_client;

typedef enum nsa_tune_dtype { NSA_TUNE_DTYPE_BF16 = 0, NSA_TUNE_DTYPE_FP16 = 1 } nsa_tune_dtype;

typedef enum nsa_tune_backend {
  NSA_TUNE_BACKEND_SDPA = 0,   /* the packed-SDPA fallback */
  NSA_TUNE_BACKEND_SPARSE = 1  /* the sparse selection kernel named by `variant` */
} nsa_tune_backend;

/* Why the answer is what it is (docs/protocol.md, "Answers"). */
typedef enum nsa_tune_provenance {
  NSA_TUNE_PROVENANCE_PINNED = 0,             /* a policy pin for the arch (SM 8.9: always sdpa) */
  NSA_TUNE_PROVENANCE_MEASURED = 1,           /* a verdict measured on this device class */
  NSA_TUNE_PROVENANCE_UNTUNED = 2,            /* nobody measured this family here yet */
  NSA_TUNE_PROVENANCE_NO_DEVICE = 3,          /* the daemon has no usable GPU for the target */
  NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE = 4, /* no answer within the budget: the fallback */
  NSA_TUNE_PROVENANCE_INVALID_PROBLEM = 5     /* the problem was rejected; `reason` says why */
} nsa_tune_provenance;

/* Return codes. */
#define NSA_TUNE_OK 0               /* answered by the daemon or from the memo */
#define NSA_TUNE_FALLBACK 1         /* the daemon was unavailable: the fallback answer */
#define NSA_TUNE_INVALID_PROBLEM 2  /* the problem is invalid: sdpa, INVALID_PROBLEM, reason */
#define NSA_TUNE_EINVAL (-1)        /* a NULL client, problem or answer pointer: nothing filled */

#define NSA_TUNE_UUID_BYTES 64
#define NSA_TUNE_ARCH_BYTES 16
#define NSA_TUNE_VARIANT_BYTES 256
#define NSA_TUNE_REASON_BYTES 512
#define NSA_TUNE_LAUNCH_BYTES 4096

/* One selection-attention call (docs/protocol.md, "Problems"). The target is `arch` when it is
 * non-empty, else `device_uuid` when non-empty, else the ordinal `device` (0 by default); setting
 * both `arch` and `device_uuid` makes the problem invalid. */
typedef struct nsa_tune_problem {
  int32_t device;                            /* device ordinal on the daemon's host */
  char device_uuid[NSA_TUNE_UUID_BYTES];     /* "GPU-8f1c...", or "" */
  char arch[NSA_TUNE_ARCH_BYTES];            /* "sm_89", "sm_90a", or "" */
  int32_t dtype;  /* an nsa_tune_dtype (fixed-size fields keep the struct layout the same in C and C++) */
  int32_t d_qk;   /* query/key head dim: multiple of 8 in [8, 256] */
  int32_t d_v;    /* value head dim: multiple of 8 in [8, 256] */
  int32_t h;      /* query heads per KV group, [1, 64] */
  int32_t h_kv;   /* KV heads */
  int32_t block;  /* keys per selected block: power of two in [16, 256] */
  int32_t n;      /* selected blocks per query row, [1, 128] */
  int64_t t_q;    /* query rows per sequence, [1, t_kv] */
  int64_t t_kv;   /* keys per sequence */
  int32_t batch;
} nsa_tune_problem;

/* The answer to one problem (docs/protocol.md, "Answers"). Fields that do not apply are zero or
 * empty strings. */
typedef struct nsa_tune_answer {
  int32_t backend;     /* an nsa_tune_backend */
  int32_t provenance;  /* an nsa_tune_provenance */
  double speedup;                          /* MEASURED: baseline time / best sparse time; else 0 */
  int64_t run_id;                          /* MEASURED: the tuning run; else 0 */
  int64_t epoch;                           /* the daemon epoch of the answer; -1 for a fallback */
  char variant[NSA_TUNE_VARIANT_BYTES];    /* the variant key, or "" */
  char arch[NSA_TUNE_ARCH_BYTES];          /* the arch the answer is for ("sm_90"), or "" */
  char reason[NSA_TUNE_REASON_BYTES];      /* one line for people; truncated with "..." if long */
  char launch_json[NSA_TUNE_LAUNCH_BYTES]; /* SPARSE: the launch object as compact JSON, else "" */
} nsa_tune_answer;

typedef struct nsa_tune_client_options {
  /* Unix socket of the daemon. NULL or "": $NSA_TUNE_SOCKET if set and non-empty, else
   * /run/nsa-tune/nsa-tuned.sock. Copied by open. */
  const char* socket_path;
  /* Longest time any call may take, in microseconds. <= 0: 2000. */
  int64_t budget_us;
  /* Names the client in the daemon's log ("my-trainer/1.2"). NULL: "libnsa_tune_client/<version>". */
  const char* client_name;
  /* Reconnect backoff of the background thread, in microseconds. <= 0: 10000 and 2000000. */
  int64_t backoff_min_us;
  int64_t backoff_max_us;
  /* Most memoized answers kept; when full, the memo is cleared before the next insert.
   * <= 0: 65536. */
  int64_t memo_capacity;
} nsa_tune_client_options;

typedef struct nsa_tune_stats {
  uint64_t hits;          /* answers served from the memo */
  uint64_t misses;        /* answers that needed the daemon (whatever came of it) */
  uint64_t fallbacks;     /* answers that were the daemon_unavailable fallback */
  uint64_t reconnects;    /* times the background subscription was re-established after a loss */
  uint64_t invalid;       /* problems rejected as invalid */
  uint64_t epoch_changes; /* times the memo was dropped: the epoch changed, or the subscription
                             came back after a loss (the daemon may have restarted) */
} nsa_tune_stats;

/* Sets every option to its default (all zero / NULL). */
NSA_TUNE_API void nsa_tune_client_options_init(nsa_tune_client_options* options);

/* Sets a problem to device 0, bf16, and zero for every shape field (which is invalid until the
 * caller fills the shape in). */
NSA_TUNE_API void nsa_tune_problem_init(nsa_tune_problem* problem);

/* Creates a client and starts its background thread, which connects to the daemon. Never blocks
 * on the daemon: a client can be opened before the daemon starts, and its calls fall back until
 * the daemon is there. `options` may be NULL for all defaults. Returns NULL only when memory or a
 * thread could not be had. A socket path too long for a Unix socket is not an error here: every
 * dispatch then falls back with a reason that says so. */
NSA_TUNE_API nsa_tune_client* nsa_tune_client_open(const nsa_tune_client_options* options);

/* Stops the background thread (promptly: it does not wait for a backoff to end), closes every
 * connection and frees the client. NULL is ignored. */
NSA_TUNE_API void nsa_tune_client_close(nsa_tune_client* client);

/* Answers one problem; always fills `answer` (unless a pointer is NULL). Returns NSA_TUNE_OK for
 * an answer from the daemon or the memo, NSA_TUNE_FALLBACK for the daemon_unavailable fallback,
 * NSA_TUNE_INVALID_PROBLEM when the problem breaks a rule (checked locally first, no system
 * call; or rejected by the daemon), NSA_TUNE_EINVAL for a NULL pointer. Within the budget. */
NSA_TUNE_API int nsa_tune_dispatch(nsa_tune_client* client, const nsa_tune_problem* problem,
                                   nsa_tune_answer* answer);

/* Answers `count` problems: answers[i] for problems[i]. Memoized ones come from the memo; the
 * others go to the daemon in as few requests as the protocol allows (256 problems each), all
 * within one budget. Returns NSA_TUNE_OK when every answer came from the daemon or the memo,
 * else NSA_TUNE_FALLBACK if any answer is a fallback, else NSA_TUNE_INVALID_PROBLEM; each
 * answer's provenance tells which is which. NSA_TUNE_EINVAL for NULL pointers (count 0 is OK). */
NSA_TUNE_API int nsa_tune_dispatch_many(nsa_tune_client* client, const nsa_tune_problem* problems,
                                        size_t count, nsa_tune_answer* answers);

/* The daemon's epoch as last learned (from a reply or the subscription), or -1 before any. */
NSA_TUNE_API int64_t nsa_tune_epoch(const nsa_tune_client* client);

/* Copies the client's counters into `stats`. Returns NSA_TUNE_OK, or NSA_TUNE_EINVAL. */
NSA_TUNE_API int nsa_tune_client_stats(const nsa_tune_client* client, nsa_tune_stats* stats);

/* The library's version ("0.1.0"); a static string. */
NSA_TUNE_API const char* nsa_tune_version(void);

/* The protocol version this library speaks (1). */
NSA_TUNE_API int nsa_tune_protocol_version(void);

#ifdef __cplusplus
}
#endif

#endif /* NSA_TUNE_CLIENT_H */

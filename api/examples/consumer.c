/* The smallest user of libnsa_tune_client, in C: one dispatch, printed.
 * Build it against an installed client: see CMakeLists.txt next to it. */
#include <stdio.h>

#include <nsa/api/client.h>

int main(int argc, char** argv) {
  nsa_tune_client_options options;
  nsa_tune_client_options_init(&options);
  options.socket_path = argc > 1 ? argv[1] : NULL; /* NULL: $NSA_TUNE_SOCKET or the default */
  nsa_tune_client* client = nsa_tune_client_open(&options);
  if (!client) return 2;

  nsa_tune_problem p;
  nsa_tune_problem_init(&p);
  p.d_qk = 128, p.d_v = 128, p.h = 16, p.h_kv = 4, p.block = 64, p.n = 16;
  p.t_q = 1, p.t_kv = 32768, p.batch = 64;

  nsa_tune_answer a;
  int rc = nsa_tune_dispatch(client, &p, &a);
  printf("libnsa_tune_client %s: rc=%d backend=%s provenance=%d variant=%s\nreason: %s\n", nsa_tune_version(), rc,
         a.backend == NSA_TUNE_BACKEND_SPARSE ? "sparse" : "sdpa", a.provenance, a.variant, a.reason);
  nsa_tune_client_close(client);
  return rc < 0 ? 1 : 0;
}

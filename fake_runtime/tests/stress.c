/*
 * stress.c: the fake runtime's locking and lifetime under concurrent use, in plain C so it
 * can run under ThreadSanitizer and LeakSanitizer (Python cannot). Built with the fake's
 * sources by tests/fake_runtime/test_native_stress.py:
 *   stress MODEL_JSON  -> exit 0 and "ok ..." when every invariant held
 * Invariants: every accepted run gets exactly one terminal callback; calls on busy handles
 * fail cleanly; destroy while running (blocking or async) returns and frees everything;
 * stale handles return -1; no allocation or handle is left at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rkllm.h"
#include "rkllm_fake.h"

#define N_WORKERS 4
#define ROUNDS 40

static atomic_long g_accepted, g_terminal, g_tokens;
static const char* g_model;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "stress: check failed at line %d: %s\n", __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

static int on_result(RKLLMResult* r, void* ud, LLMCallState state) {
    (void)ud;
    if (state == RKLLM_RUN_FINISH || state == RKLLM_RUN_ERROR) atomic_fetch_add(&g_terminal, 1);
    else if (r->text) atomic_fetch_add(&g_tokens, 1);
    return 0;
}

static LLMHandle make_handle(void) {
    RKLLMParam p = rkllm_createDefaultParam();
    p.model_path = g_model;
    p.max_new_tokens = 64;
    LLMHandle h = NULL;
#if RKLLM_ABI == 12
    CHECK(rkllm_init(&h, &p, on_result) == 0);
#else
    RKLLMCallback cb = {on_result, NULL, NULL, NULL, NULL, NULL};
    CHECK(rkllm_init(&h, &p, &cb) == 0);
#endif
    return h;
}

static RKLLMInput g_input;
static RKLLMInferParam g_infer;

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static int running(LLMHandle h) {
#if RKLLM_ABI == 12
    return rkllm_is_running(h) == 0;
#else
    return rkllm_is_running(h) == 1;
#endif
}

/* Each worker: async runs with aborts, config calls while busy and idle, blocking runs. */
static void* worker(void* arg) {
    unsigned seed = (unsigned)(size_t)arg;
    LLMHandle h = make_handle();
    for (int round = 0; round < ROUNDS; round++) {
        if (rkllm_run_async(h, &g_input, &g_infer, NULL) == 0) atomic_fetch_add(&g_accepted, 1);
        int sizes[8];
        char empty[] = "";
        /* Busy or idle, these must either work or fail cleanly. */
        (void)rkllm_get_kv_cache_size(h, sizes);
        (void)rkllm_set_chat_template(h, empty, empty, empty);
        if (rand_r(&seed) % 2) rkllm_abort(h);
        nap_us(rand_r(&seed) % 300);
        while (running(h)) nap_us(50);
        if (rkllm_run(h, &g_input, &g_infer, NULL) == 0) atomic_fetch_add(&g_accepted, 1);
        CHECK(!running(h));
        CHECK(rkllm_get_kv_cache_size(h, sizes) == 0);
    }
    CHECK(rkllm_destroy(h) == 0);
    CHECK(rkllm_destroy(h) == -1);
    CHECK(rkllm_abort(h) == -1);
    return NULL;
}

typedef struct {
    LLMHandle h;
    int rc;
} blocking_arg;

static void* blocking_run(void* arg) {
    blocking_arg* b = arg;
    b->rc = rkllm_run(b->h, &g_input, &g_infer, NULL);
    return NULL;
}

/* Destroy a handle while another thread is blocked in rkllm_run on it. */
static void destroy_during_blocking_run(void) {
    for (int k = 0; k < 10; k++) {
        blocking_arg b = {make_handle(), 99};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, blocking_run, &b) == 0);
        nap_us(100 * (long)k);
        CHECK(rkllm_destroy(b.h) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        CHECK(b.rc == 0 || b.rc == -1); /* finished, aborted, or refused: never stuck */
        if (b.rc == 0) atomic_fetch_add(&g_accepted, 1);
    }
}

/* Destroy while an async run is going, with another thread aborting at the same time. */
static void* aborter(void* arg) {
    LLMHandle h = arg;
    for (int k = 0; k < 200; k++) {
        if (rkllm_abort(h) != 0) break; /* destroyed */
        nap_us(20);
    }
    return NULL;
}

static void destroy_during_async_run(void) {
    for (int k = 0; k < 10; k++) {
        LLMHandle h = make_handle();
        CHECK(rkllm_run_async(h, &g_input, &g_infer, NULL) == 0);
        atomic_fetch_add(&g_accepted, 1);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, aborter, h) == 0);
        nap_us(50 * (long)k);
        CHECK(rkllm_destroy(h) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
}

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_JSON\n", argv[0]);
        return 2;
    }
    g_model = argv[1];
    g_input.role = "user";
    g_input.input_type = RKLLM_INPUT_PROMPT;
    g_input.prompt_input = "stress the runtime";
    g_infer.mode = RKLLM_INFER_GENERATE;

    pthread_t threads[N_WORKERS];
    for (size_t k = 0; k < N_WORKERS; k++) CHECK(pthread_create(&threads[k], NULL, worker, (void*)(k + 1)) == 0);
    destroy_during_blocking_run();
    destroy_during_async_run();
    for (size_t k = 0; k < N_WORKERS; k++) CHECK(pthread_join(threads[k], NULL) == 0);

    RKLLMFakeStats s;
    rkllm_fake_stats(&s);
    CHECK(atomic_load(&g_terminal) == atomic_load(&g_accepted));
    CHECK(s.runs_started == s.runs_finished);
    CHECK(s.runs_finished == atomic_load(&g_accepted));
    CHECK(s.live_handles == 0);
    CHECK(s.live_allocations == 0);
    printf("ok runs=%ld tokens=%ld aborts=%lld\n", atomic_load(&g_accepted), atomic_load(&g_tokens),
           (long long)s.aborts);
    return 0;
}

/*
 * destroy_during_run.c: rkllm_destroy while rkllm_run is blocked, in plain C so it also runs
 * under AddressSanitizer / ThreadSanitizer. Driven by tests/fake_runtime/test_destroy_during_run.py:
 *   destroy_during_run MODEL_JSON MODE
 * MODE "signal": SIGINT reaches the thread blocked in rkllm_run, whose handler calls
 * rkllm_destroy (twice: the second is -1), as the vendor's C demo does on Ctrl-C.
 * MODE "signal-exit": the same, and the handler then calls exit(42) as that demo does.
 * MODE "thread": another thread calls rkllm_destroy.
 * Exit 0 and "ok ..." when: rkllm_run returned after exactly one terminal callback, the first
 * destroy returned 0, the handle is gone (-1 from abort / destroy / is_running), the runtime
 * thread had SIGINT blocked, and the fake holds no allocation and no handle.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rkllm.h"
#include "rkllm_fake.h"

#define CHECK(cond)                                                                             \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "destroy_during_run: check failed at line %d: %s\n", __LINE__, #cond); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

static LLMHandle g_handle;
static pthread_t g_main;
static atomic_int g_tokens, g_terminal, g_worker_blocks_sigint = -1;
static volatile sig_atomic_t g_handler_rc = 99, g_handler_rc2 = 99, g_exit_in_handler;

static int on_result(RKLLMResult* result, void* userdata, LLMCallState state) {
    (void)result, (void)userdata;
    if (atomic_load(&g_worker_blocks_sigint) < 0) {
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        atomic_store(&g_worker_blocks_sigint, sigismember(&cur, SIGINT) == 1);
    }
    if (state == RKLLM_RUN_FINISH || state == RKLLM_RUN_ERROR) atomic_fetch_add(&g_terminal, 1);
    else atomic_fetch_add(&g_tokens, 1);
    return 0;
}

/* The vendor demo's exit_handler, minus its iostream output. */
static void on_sigint(int sig) {
    (void)sig;
    g_handler_rc = rkllm_destroy(g_handle);
    g_handler_rc2 = rkllm_destroy(g_handle);
    if (g_exit_in_handler) exit(g_handler_rc == 0 ? 42 : 43);
}

/* Polls (1 ms steps, 20 s deadline) until the run has produced a few tokens. */
static void wait_for_tokens(int n) {
    struct timespec step = {0, 1000000};
    for (int k = 0; k < 20000 && atomic_load(&g_tokens) < n; k++) nanosleep(&step, NULL);
    CHECK(atomic_load(&g_tokens) >= n);
}

static void* interrupter(void* arg) {
    const char* mode = arg;
    wait_for_tokens(3);
    if (strcmp(mode, "thread") == 0) CHECK(rkllm_destroy(g_handle) == 0);
    else CHECK(pthread_kill(g_main, SIGINT) == 0);
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_JSON signal|signal-exit|thread\n", argv[0]);
        return 2;
    }
    const char* mode = argv[2];
    g_exit_in_handler = strcmp(mode, "signal-exit") == 0;
    g_main = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGINT, &sa, NULL) == 0);

    RKLLMParam param = rkllm_createDefaultParam();
    param.model_path = argv[1];
    param.max_context_len = 4096;
    param.max_new_tokens = 4000;
#if RKLLM_ABI == 12
    CHECK(rkllm_init(&g_handle, &param, on_result) == 0);
#else
    RKLLMCallback cb = {on_result, NULL, NULL, NULL, NULL, NULL};
    CHECK(rkllm_init(&g_handle, &param, &cb) == 0);
#endif
    RKLLMInput input;
    memset(&input, 0, sizeof input);
    input.role = "user";
    input.input_type = RKLLM_INPUT_PROMPT;
    input.prompt_input = "a long answer, please";
    RKLLMInferParam infer;
    memset(&infer, 0, sizeof infer);
    infer.mode = RKLLM_INFER_GENERATE;

    /* The helper must not take the SIGINT itself: block it there (it inherits this mask). */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pthread_t helper;
    CHECK(pthread_create(&helper, NULL, interrupter, (void*)mode) == 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    int rc = rkllm_run(g_handle, &input, &infer, NULL);
    CHECK(pthread_join(helper, NULL) == 0);

    CHECK(rc == 0); /* the aborted run ended with FINISH */
    CHECK(atomic_load(&g_terminal) == 1);
    CHECK(atomic_load(&g_tokens) < 4000); /* it was cut short */
    if (strcmp(mode, "thread") != 0) {
        CHECK(g_handler_rc == 0);
        CHECK(g_handler_rc2 == -1);
    }
    CHECK(atomic_load(&g_worker_blocks_sigint) == 1);
    CHECK(rkllm_abort(g_handle) == -1);
    CHECK(rkllm_is_running(g_handle) == -1);
    CHECK(rkllm_destroy(g_handle) == -1); /* twice, as the vendor's 1.3.0 Flask server does */
    RKLLMFakeStats s;
    rkllm_fake_stats(&s);
    CHECK(s.live_handles == 0);
    CHECK(s.live_allocations == 0);
    CHECK(s.aborts == 1);
    CHECK(s.runs_started == 1 && s.runs_finished == 1);
    printf("ok mode=%s tokens=%d\n", mode, atomic_load(&g_tokens));
    return 0;
}

/*
 * ceiling.c: the fake runtime's raw token rate with a no-op C callback, the ceiling any
 * binding can reach. Built and run by `python -m benchmarks`:
 *   ceiling MODEL_JSON N_TOKENS  ->  prints {"tokens": N, "seconds": S}
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "rkllm.h"

static long g_tokens;

static int on_result(RKLLMResult* result, void* userdata, LLMCallState state) {
    (void)result;
    (void)userdata;
    if (state == RKLLM_RUN_NORMAL || state == RKLLM_RUN_WAITING) g_tokens++;
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_JSON N_TOKENS\n", argv[0]);
        return 2;
    }
    RKLLMParam param = rkllm_createDefaultParam();
    param.model_path = argv[1];
    param.max_new_tokens = atoi(argv[2]);
    param.max_context_len = 4096;
    LLMHandle handle = NULL;
#if RKLLM_ABI == 12
    int rc = rkllm_init(&handle, &param, on_result);
#else
    RKLLMCallback cb = {on_result, NULL, NULL, NULL, NULL, NULL};
    int rc = rkllm_init(&handle, &param, &cb);
#endif
    if (rc != 0) return 1;
    RKLLMInput input = {0};
    input.role = "user";
    input.input_type = RKLLM_INPUT_PROMPT;
    input.prompt_input = "benchmark";
    RKLLMInferParam infer = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = rkllm_run(handle, &input, &infer, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rkllm_destroy(handle);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("{\"tokens\": %ld, \"seconds\": %.6f}\n", g_tokens, seconds);
    return rc == 0 ? 0 : 1;
}

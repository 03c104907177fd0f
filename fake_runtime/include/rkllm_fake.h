/*
 * rkllm_fake.h: symbols only the rkllm-sdk fake runtime exports, for tests.
 * Every name starts with rkllm_fake_; a real librkllmrt.so has none of them.
 */
#ifndef RKLLM_SDK_RKLLM_FAKE_H
#define RKLLM_SDK_RKLLM_FAKE_H

#include <stddef.h>
#include <stdint.h>

#include "rkllm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t live_allocations; /* blocks the fake holds right now */
    int64_t live_bytes;
    int64_t live_handles;
    int64_t runs_started;
    int64_t runs_finished;
    int64_t callbacks;        /* result callbacks made */
    int64_t aborts;           /* runs that ended because of rkllm_abort / destroy */
    int64_t buffer_releases;  /* output buffers freed because a callback returned 2 */
    int64_t kv_shifts;        /* context-window shifts */
    int64_t tokenizer_calls;  /* 1.3 tokenizer callbacks made */
    int64_t embed_calls;      /* 1.3 embedding callbacks made */
} RKLLMFakeStats;

/* Copies the process-wide counters into *out. */
void rkllm_fake_stats(RKLLMFakeStats* out);
/* The runtime version this build emulates: "1.2.3" or "1.3.0". */
const char* rkllm_fake_version(void);
/*
 * Writes a JSON object describing what the last run of `handle` received (inputs,
 * roles, templated text, checksums, sampling, mode, ...) into buf (NUL-terminated,
 * truncated to cap). Returns the full length, or -1 for a bad handle / no run yet.
 */
int rkllm_fake_last_input(LLMHandle handle, char* buf, size_t cap);
/*
 * Writes the bytes batch `batch` of the handle's KV cache stands for, position by position
 * (prefill text as templated, then each generated token's bytes; placeholders for token and
 * embedding inputs), into buf (NUL-terminated, truncated to cap). Returns the full length,
 * or -1 for a bad handle, a batch outside [0, n_batch) or a running handle.
 */
int rkllm_fake_kv_text(LLMHandle handle, int batch, char* buf, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* RKLLM_SDK_RKLLM_FAKE_H */

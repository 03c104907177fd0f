/* fake.h: the fake runtime's handle and run state, shared by every source file. */
#ifndef FAKE_FAKE_H
#define FAKE_FAKE_H

#include <pthread.h>
#include <stdatomic.h>

#include "json.h"
#include "model.h"
#include "rkllm.h"
#include "rkllm_fake.h"
#include "util.h"

#if RKLLM_ABI == 12
#define FK_VERSION "1.2.3"
#else
#define FK_VERSION "1.3.0"
#endif

#define MAX_BATCH 8
#define TEXT_CAP 64         /* initial bytes of a batch's text buffer (grown when held text needs more) */
#define POISON_BYTE 0x7E    /* '~': what a stale text pointer reads after its callback */

typedef struct {
    int32_t top_k;
    float top_p, temperature, repeat_penalty, frequency_penalty, presence_penalty;
    int32_t mirostat;
    float mirostat_tau, mirostat_eta;
} sampling;

typedef struct {
    char* name;
    char* path;
    float scale;
} lora_entry;

typedef struct {
    int32_t* tokens; /* what the KV cache holds, in position order */
    size_t* off;     /* position i stands for text.data[off[i], off[i + 1]) (n + 1 entries) */
    sbuf text;       /* the bytes of every position, in order (rkllm_fake_kv_text) */
    size_t n;
    size_t sys_len;  /* leading tokens that belong to the system prompt */
} kv_state;

typedef struct { /* a loaded prompt cache */
    int32_t* ids;
    size_t* off;     /* n + 1 offsets into text; NULL for a version-1 file (ids only) */
    char* text;
    size_t n;
} pcache_t;

typedef struct { /* one run's request, copied when rkllm_run is called */
    int n_batch;
    RKLLMInput inputs[MAX_BATCH];
    int mode;
    int keep_history;
    long max_new_tokens;
    sampling samp;
    const lora_entry* lora;
    char* cache_save_path;
    void* userdata;
} job_t;

typedef struct fake_handle {
    uintptr_t id; /* what the caller holds as LLMHandle; never reused in a process */
    int refs;     /* guarded by the registry lock */
    fake_model model;
    int max_context_len;
    int max_new_tokens;
    int n_keep;
    int n_batch;
    int use_cross_attn;
    int ignore_eos;
    sampling samp;
    char* img_start; /* 1.2: from RKLLMParam */
    char* img_end;
    char* img_content;

    LLMResultCallback result_cb;
    void* result_ud;
#if RKLLM_ABI == 13
    LLMTokenizerCallback tokenizer_cb;
    void* tokenizer_ud;
    LLMGetEmbedCallback embed_cb;
    void* embed_ud;
#endif

    int custom_template;
    char* tpl_system;
    char* tpl_prefix;
    char* tpl_postfix;

    json* tools; /* parsed tools array, or NULL */
    char* tools_json;
    char* tools_system;
    char* tool_response;

    lora_entry* loras;
    size_t n_loras;

    pcache_t pcache; /* the loaded prompt cache */
    int pcache_loaded;

    RKLLMCrossAttnParam cross;
    int cross_set;

    kv_state kv[MAX_BATCH];
    int paused;              /* the last run ended by a callback returning 1 */
    int paused_keep_history; /* ... and that run's keep_history */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* a job is waiting, or quit */
    pthread_cond_t done_cv;  /* a job finished */
    int wake_fd;             /* eventfd: abort / destroy wake a sleeping prefill or decode step */
    int has_job, running, quit;
    uint64_t job_seq, done_seq;
    int last_rc;
    atomic_int abort_flag;
    job_t job;

    char* text[MAX_BATCH]; /* each batch's callback text, text_cap[b] bytes */
    size_t text_cap[MAX_BATCH];
    RKLLMResult results[MAX_BATCH];
    float* out_buf; /* logits / hidden states handed to the callback */
    size_t out_cap; /* floats */
    sbuf last_input; /* JSON, guarded by mu */
    int has_last_input;
} fake_handle;

/* Process-wide counters behind rkllm_fake_stats. */
typedef struct {
    atomic_llong live_handles, runs_started, runs_finished, callbacks, aborts, buffer_releases,
        kv_shifts, tokenizer_calls, embed_calls;
} fake_counters;
extern fake_counters g_counters;

/* handle.c: a handle's memory, its runtime thread, sleeping and waking. */
/* Allocates a handle with its locks, wake fd, KV caches and text buffers; NULL if no fd. */
fake_handle* handle_new(int n_batch, int max_context_len);
/* Starts the handle's runtime thread (with process signals blocked on it); 0 or -1. */
int handle_start(fake_handle* h);
void handle_free(fake_handle* h);
int on_worker(const fake_handle* h);
/* Sleeps until deadline (now_ms clock) unless aborted first; returns 1 if aborted. */
int sleep_until(fake_handle* h, double deadline_ms);
/* Sets the abort flag and wakes a sleeping step: only atomics and write(2), so a signal
 * handler may call it. */
void handle_abort(fake_handle* h);

/* registry.c: a handle is valid only while listed. acquire() takes a reference that keeps
 * it alive (rkllm_destroy waits for every reference to be released). */
fake_handle* acquire(LLMHandle handle);
void release(fake_handle* h);
void registry_add(fake_handle* h);
/* Unlists the handle (no new call can reach it); 0, or -1 when it is not listed. */
int registry_remove(LLMHandle handle, fake_handle** out);
/* Waits until no call holds a reference to an unlisted handle. */
void registry_wait_unused(fake_handle* h);
/* For configuration calls: the handle acquired with its mu locked, or NULL (logged: not a
 * live handle, or a task is running); done_idle unlocks, releases and returns rc. */
fake_handle* acquire_idle(LLMHandle handle, const char* fn);
int done_idle(fake_handle* h, int rc);

/* run.c: runs h->job on the handle's thread; returns rkllm_run's return code. */
int run_execute(fake_handle* h);

/* kv.c */
void kv_clear(fake_handle* h, int keep_system_prompt);
/* Removes positions [s, e) (ids and their text); sys_len is the caller's to adjust. */
void kv_remove(kv_state* kv, size_t s, size_t e);
/* Reads a prompt cache file (at most cap positions) into *out: 0, -1 when it cannot be
 * opened, -2 when it is not a prompt cache. */
int prompt_cache_read(const char* path, size_t cap, pcache_t* out);
void pcache_free(pcache_t* pc);

#endif

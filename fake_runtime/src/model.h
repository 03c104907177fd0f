/* model.h: the fake's model file ("format": "rkllm-fake/1") and fault specifications. */
#ifndef FAKE_MODEL_H
#define FAKE_MODEL_H

#include <stddef.h>

typedef struct {
    int init_fail;        /* non-zero: rkllm_init returns this code */
    int run_fail;         /* non-zero: rkllm_run / rkllm_run_async return this code */
    long error_after;     /* >= 0: RKLLM_RUN_ERROR after this many generated tokens */
    long hang_after;      /* >= 0: stop producing after this many tokens until aborted */
    long crash_after;     /* >= 0: abort() the process after this many tokens */
    double slow_prefill_ms; /* extra prefill time per run */
    double start_delay_ms;  /* time rkllm_run / rkllm_run_async take before the run counts as running */
} fake_faults;

typedef struct {
    char* match; /* substring of the prompt */
    char* reply;
} script_rule;

/* "waiting_text": what a RKLLM_RUN_WAITING callback carries (fake_runtime/README.md, A11). */
typedef enum {
    WAITING_TEXT_HELD = 0,    /* "held" (default): "", the bytes wait for the next NORMAL callback */
    WAITING_TEXT_PARTIAL = 1, /* "partial": the token's own bytes, a character's first bytes included */
} waiting_text_mode;

typedef struct {
    char* name;
    int vocab_size;
    int hidden_size;
    double decode_ms;
    double prefill_ms;
    int thinking;
    int internal_tokenizer;
    int internal_embedding;
    int natural_end; /* 0: never stop before max_new_tokens */
    waiting_text_mode waiting_text;
    int num_layers, num_kv_heads, head_dim; /* cross-attention cache geometry */
    script_rule* script;
    size_t n_script;
    fake_faults faults;
} fake_model;

/* Loads and validates path; returns 0, or -1 with a message in err. */
int model_load(fake_model* m, const char* path, char* err, size_t errcap);
void model_free(fake_model* m);
/* Parses "key[=value],..." fault text into f (starting from its current values). */
int faults_parse(fake_faults* f, const char* text, char* err, size_t errcap);
void faults_init(fake_faults* f);

#endif

/* batch.h: one batch of one run, and the steps of a run that work on it (prefill.c,
 * template.c, reply.c, kv.c, output.c), used by run.c. */
#ifndef FAKE_BATCH_H
#define FAKE_BATCH_H

#include "fake.h"

typedef struct {
    sbuf templated;   /* the text the model "sees" (prompt / multimodal inputs) */
    sbuf tags;        /* "[tokens n=.. fnv=..] " lines proving what arrays arrived */
    sbuf reply;       /* what the batch emits; grows when generation is endless */
    size_t emitted;   /* bytes of reply decoded into tokens so far */
    size_t sent;      /* bytes of reply handed to callbacks so far (<= emitted) */
    int32_t* prefill; /* token ids this run adds to the KV cache */
    size_t n_prefill;
    sbuf ptext;       /* the bytes each prefill position stands for, in order */
    size_t* pend;     /* prefill position k ends at ptext.data + pend[k] */
    size_t n_pend, pend_cap;
    size_t sys_tokens; /* leading prefill tokens that are the system prompt */
    size_t computed;   /* prefill tokens actually computed (prompt cache reuse) */
    long generated;
    int done;
    int endless;
    int has_token;    /* a token was decoded for this batch in the current step */
    uint64_t rng;
    const char* text; /* the user's text (prompt / multimodal prompt), or "" */
    const char* role;
} batch_run;

/* template.c: wraps text in the chat template; returns the byte length of the system part. */
size_t apply_template(fake_handle* h, sbuf* out, int with_system, const char* role, const char* text,
                      int thinking);

/* reply.c: appends batch b's whole answer (think block, tags, scripted / tool / generated). */
void choose_reply(fake_handle* h, int b, batch_run* br, const RKLLMInput* in);

/* prefill.c: reads input b of the job (template, tokens, arrays, 1.3 callbacks) and chooses the
 * reply; 0, or -1 with a message in err. */
int prepare_batch(fake_handle* h, int b, batch_run* br, char* err, size_t errcap);
/* Records what the run received, for rkllm_fake_last_input. */
void report_input(fake_handle* h, const batch_run* brs);

/* kv.c */
/* Makes room for `need` more tokens (the context-window shift); 0 if impossible. */
int kv_make_room(fake_handle* h, kv_state* kv, size_t need);
/* Appends n positions: ids, and their bytes (position k is text[ends[k-1], ends[k]), from 0). */
void kv_push(kv_state* kv, const int32_t* ids, size_t n, const char* text, const size_t* ends);
int save_prompt_cache(const char* path, const kv_state* kv, char* err, size_t errcap);

/* output.c: what the callbacks are handed, and the callbacks themselves. */
void fill_outputs(float* dst, int mode, size_t first_pos, size_t n_tokens, int width);
void poison_outputs(fake_handle* h, size_t floats);
int call_back(fake_handle* h, LLMCallState state);
void clear_results(fake_handle* h);
void set_text(fake_handle* h, int b, const char* bytes, size_t n);
/* Gives each batch that decoded a token this step its callback text and returns the step's
 * state (NORMAL or WAITING), following the model's "waiting_text" (A11, A16). */
LLMCallState token_texts(fake_handle* h, batch_run* brs, int nb, long limit);

#endif

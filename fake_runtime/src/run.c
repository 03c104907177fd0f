/* run.c: one run of the fake runtime on the handle's own thread, as named steps: start,
 * prefill, the logits / hidden-state callback or the decode loop, the terminal callback.
 * What differs between the ABIs sits in small helpers, never inside the decode loop. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "textgen.h"

typedef struct {
    fake_handle* h;
    job_t* job;
    int nb;
    batch_run brs[MAX_BATCH];
    char err[256];
    int error, aborted, paused;
    double t0, t_prefill_end, t_gen_end;
} run_ctx;

/* ---- per-ABI helpers ------------------------------------------------------------------ */

#if RKLLM_ABI == 13
/* 1.3, a model without an internal embedding layer: the embedding callback for one token. */
static int embed_generated_token(fake_handle* h, int32_t token_id, char* err, size_t errcap) {
    if (h->model.internal_embedding) return 0;
    size_t bytes = (size_t)h->model.hidden_size * sizeof(float);
    float* emb = fk_calloc((size_t)h->model.hidden_size, sizeof(float));
    atomic_fetch_add(&g_counters.embed_calls, 1);
    int erc = h->embed_cb(h->embed_ud, &token_id, 1, emb, bytes);
    fk_free(emb);
    if (erc == 0) return 0;
    snprintf(err, errcap, "embedding callback returned %d", erc);
    return -1;
}

/* 1.3: a callback returning 2 frees the logits / hidden-state buffer at once (a pointer kept
 * past the callback is then a use after free). */
static void release_outputs_if_asked(fake_handle* h, int ret) {
    if (ret != 2) return;
    fk_free(h->out_buf);
    h->out_buf = NULL;
    h->out_cap = 0;
    atomic_fetch_add(&g_counters.buffer_releases, 1);
}
#else
static int embed_generated_token(fake_handle* h, int32_t token_id, char* err, size_t errcap) {
    (void)h, (void)token_id, (void)err, (void)errcap;
    return 0; /* 1.2 models always embed internally */
}

static void release_outputs_if_asked(fake_handle* h, int ret) {
    (void)h, (void)ret; /* 2 means "continue" on 1.2 */
}
#endif

/* ---- steps ---------------------------------------------------------------------------- */

static void run_start(run_ctx* r) {
    fake_handle* h = r->h;
    atomic_fetch_add(&g_counters.runs_started, 1);
    r->t0 = r->t_prefill_end = r->t_gen_end = now_ms();
    for (int b = 0; b < r->nb; b++) {
        sb_init(&r->brs[b].templated);
        sb_init(&r->brs[b].tags);
        sb_init(&r->brs[b].reply);
        sb_init(&r->brs[b].ptext);
    }
    if (!h->paused && r->job->keep_history == 0) kv_clear(h, 0);
    h->paused = 0;
}

/* Whether prefill position k equals the prompt cache's: same id and, when the file kept
 * text (version 2), the same bytes (the fake's ids are hashes, which can collide). */
static int same_as_cached(const pcache_t* pc, const batch_run* br, size_t k) {
    if (k >= pc->n || br->prefill[k] != pc->ids[k]) return 0;
    if (!pc->off) return 1;
    size_t from = k ? br->pend[k - 1] : 0, len = br->pend[k] - from;
    return pc->off[k + 1] - pc->off[k] == len && memcmp(pc->text + pc->off[k], br->ptext.data + from, len) == 0;
}

/* Context checks, prompt-cache reuse and KV append for every batch; returns the most
 * tokens any batch computes. */
static size_t fill_kv(run_ctx* r) {
    fake_handle* h = r->h;
    size_t max_computed = 0;
    for (int b = 0; b < r->nb; b++) {
        batch_run* br = &r->brs[b];
        kv_state* kv = &h->kv[b];
        if (!kv_make_room(h, kv, br->n_prefill)) {
            snprintf(r->err, sizeof r->err, "input of %zu tokens does not fit max_context_len %d (KV holds %zu)",
                     br->n_prefill, h->max_context_len, kv->n);
            r->error = 1;
            break;
        }
        size_t reuse = 0;
        if (h->pcache_loaded && kv->n == 0) {
            while (reuse < br->n_prefill && same_as_cached(&h->pcache, br, reuse)) reuse++;
            if (reuse == br->n_prefill) reuse--; /* the last token is always computed */
        }
        br->computed = br->n_prefill - reuse;
        if (br->computed > max_computed) max_computed = br->computed;
        if (kv->n == 0) kv->sys_len = br->sys_tokens;
        kv_push(kv, br->prefill, br->n_prefill, br->ptext.data, br->pend);
    }
    return max_computed;
}

/* Reads the inputs, fills the KV cache, takes the prefill's time, saves the prompt cache. */
static void run_prefill(run_ctx* r) {
    fake_handle* h = r->h;
    for (int b = 0; b < r->nb && !r->error; b++)
        r->error = prepare_batch(h, b, &r->brs[b], r->err, sizeof r->err) != 0;
    if (r->error) return;
    size_t max_computed = fill_kv(r);
    if (r->error) return;
    report_input(h, r->brs);
    double prefill_ms = h->model.prefill_ms * (double)max_computed + h->model.faults.slow_prefill_ms;
    if (prefill_ms > 0) r->aborted = sleep_until(h, r->t0 + prefill_ms);
    else r->aborted = atomic_load(&h->abort_flag) != 0;
    r->t_prefill_end = r->t_gen_end = now_ms();
    const char* path = r->job->cache_save_path;
    if (path && !r->aborted && save_prompt_cache(path, &h->kv[0], r->err, sizeof r->err)) r->error = 1;
}

/* Hidden-layer / logits mode: one callback with every prefill token's row, no decoding. */
static void run_outputs(run_ctx* r) {
    fake_handle* h = r->h;
    int mode = r->job->mode;
    int width = mode == RKLLM_INFER_GET_LOGITS ? h->model.vocab_size : h->model.hidden_size;
    size_t total = 0;
    for (int b = 0; b < r->nb; b++) total += r->brs[b].n_prefill * (size_t)width;
    if (total > h->out_cap) {
        fk_free(h->out_buf);
        h->out_buf = fk_malloc(total * sizeof(float));
        h->out_cap = total;
    }
    clear_results(h);
    size_t off = 0;
    for (int b = 0; b < r->nb; b++) {
        int n = (int)r->brs[b].n_prefill;
        fill_outputs(h->out_buf + off, mode, h->kv[b].n - r->brs[b].n_prefill, (size_t)n, width);
        set_text(h, b, "", 0);
        if (mode == RKLLM_INFER_GET_LOGITS)
            h->results[b].logits = (RKLLMResultLogits){h->out_buf + off, width, n};
        else
            h->results[b].last_hidden_layer = (RKLLMResultLastHiddenLayer){h->out_buf + off, width, n};
        off += (size_t)n * (size_t)width;
    }
    int ret = call_back(h, RKLLM_RUN_NORMAL);
    if (ret == 1) r->paused = 1;
    release_outputs_if_asked(h, ret);
    poison_outputs(h, total);
}

/* Injected faults that act before token `step`; returns 1 when the run stops here. */
static int fault_before_token(run_ctx* r, long step) {
    const fake_faults* fl = &r->h->model.faults;
    if (fl->crash_after >= 0 && step == fl->crash_after) {
        fk_log('E', "injected fault: crash after %ld tokens", step);
        abort();
    }
    if (fl->error_after >= 0 && step == fl->error_after) {
        snprintf(r->err, sizeof r->err, "injected fault: error after %ld tokens", step);
        r->error = 1;
        return 1;
    }
    if (fl->hang_after >= 0 && step == fl->hang_after) {
        sleep_until(r->h, INFINITY);
        r->aborted = 1;
        return 1;
    }
    return 0;
}

/* Decodes batch b's next token into its result (text is set later, by token_texts) and the
 * KV cache; returns 1 if the batch produced a token. */
static int decode_token(run_ctx* r, int b, long limit) {
    fake_handle* h = r->h;
    batch_run* br = &r->brs[b];
    RKLLMResult* res = &h->results[b];
    memset(res, 0, sizeof *res);
    res->token_id = -1;
    br->has_token = 0;
    if (!br->done && br->generated >= limit) br->done = 1;
    if (!br->done && br->emitted == br->reply.len) {
        if (br->endless) gen_sentence(&br->reply, &br->rng);
        else br->done = 1;
    }
    if (br->done) return 0;
    size_t len = tok_next(br->reply.data, br->reply.len, br->emitted);
    const char* piece = br->reply.data + br->emitted;
    res->token_id = tok_id(piece, len, h->model.vocab_size);
    br->emitted += len;
    br->generated++;
    br->has_token = 1;
    if (!kv_make_room(h, &h->kv[b], 1)) {
        snprintf(r->err, sizeof r->err, "context full and n_keep leaves nothing to shift");
        r->error = 1;
    } else {
        kv_push(&h->kv[b], &res->token_id, 1, piece, &len);
    }
    if (embed_generated_token(h, res->token_id, r->err, sizeof r->err)) r->error = 1;
    return 1;
}

/* The next token is decoded after the callback returns: the runtime calls back from its
 * decode loop, so a slow consumer slows generation (no catching up). */
static void pace(run_ctx* r) {
    r->t_gen_end = now_ms();
    if (r->h->model.decode_ms <= 0) return;
    if (sleep_until(r->h, now_ms() + r->h->model.decode_ms)) r->aborted = 1;
    r->t_gen_end = now_ms();
}

static void run_decode(run_ctx* r) {
    fake_handle* h = r->h;
    long limit = r->job->max_new_tokens > 0 ? r->job->max_new_tokens : h->max_context_len;
    for (long step = 0; !r->error && !r->aborted && !r->paused; step++) {
        if (atomic_load(&h->abort_flag)) {
            r->aborted = 1;
            break;
        }
        if (fault_before_token(r, step)) break;
        int active = 0;
        for (int b = 0; b < r->nb; b++) active |= decode_token(r, b, limit);
        if (r->error || !active) break;
        LLMCallState state = token_texts(h, r->brs, r->nb, limit);
        int ret = call_back(h, state);
        poison_outputs(h, 0);
        if (ret == 1) {
            r->paused = 1;
            r->t_gen_end = now_ms();
            break;
        }
        pace(r);
    }
}

/* The one terminal callback: FINISH (also after abort and pause) or ERROR; then the KV
 * policy and cleanup. Returns rkllm_run's return code. */
static int run_finish(run_ctx* r) {
    fake_handle* h = r->h;
    job_t* job = r->job;
    if (r->aborted) atomic_fetch_add(&g_counters.aborts, 1);
    clear_results(h);
    for (int b = 0; b < r->nb; b++) {
        RKLLMPerfStat* p = &h->results[b].perf;
        p->prefill_time_ms = (float)(r->t_prefill_end - r->t0);
        p->prefill_tokens = (int)r->brs[b].computed;
        p->generate_time_ms = (float)(r->t_gen_end - r->t_prefill_end);
        p->generate_tokens = (int)r->brs[b].generated;
        p->memory_usage_mb = vm_hwm_mb();
    }
    if (r->error) fk_log('E', "%s", r->err);
    call_back(h, r->error ? RKLLM_RUN_ERROR : RKLLM_RUN_FINISH);
    if (fk_log_level() >= 1) {
        const RKLLMPerfStat* p = &h->results[0].perf;
        fk_log('I', "prefill %d tokens in %.2f ms, generate %d tokens in %.2f ms, peak memory %.2f MB",
               p->prefill_tokens, (double)p->prefill_time_ms, p->generate_tokens, (double)p->generate_time_ms,
               (double)p->memory_usage_mb);
    }
    if (r->paused) {
        h->paused = 1;
        h->paused_keep_history = job->keep_history;
    } else if (job->keep_history == 0) {
        kv_clear(h, 0);
    }
    for (int b = 0; b < r->nb; b++) {
        sb_free(&r->brs[b].templated);
        sb_free(&r->brs[b].tags);
        sb_free(&r->brs[b].reply);
        sb_free(&r->brs[b].ptext);
        fk_free(r->brs[b].pend);
        fk_free(r->brs[b].prefill);
    }
    fk_free(job->cache_save_path);
    job->cache_save_path = NULL;
    atomic_fetch_add(&g_counters.runs_finished, 1);
    return r->error ? -1 : 0;
}

int run_execute(fake_handle* h) {
    run_ctx r;
    memset(&r, 0, sizeof r);
    r.h = h;
    r.job = &h->job;
    r.nb = h->job.n_batch;
    run_start(&r);
    run_prefill(&r);
    if (!r.error && !r.aborted) {
        if (r.job->mode != RKLLM_INFER_GENERATE) run_outputs(&r);
        else run_decode(&r);
    }
    return run_finish(&r);
}

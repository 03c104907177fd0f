/* run.c: one run of the fake runtime, on the handle's own thread: template, prefill, KV
 * cache, reply selection, token-by-token callbacks, modes, faults and perf. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake.h"
#include "textgen.h"

typedef struct {
    sbuf templated;   /* the text the model "sees" (prompt / multimodal inputs) */
    sbuf tags;        /* "[tokens n=.. fnv=..] " lines proving what arrays arrived */
    sbuf reply;       /* what the batch emits; grows when generation is endless */
    size_t emitted;   /* bytes of reply already delivered */
    int32_t* prefill; /* token ids this run adds to the KV cache */
    size_t n_prefill;
    size_t sys_tokens; /* leading prefill tokens that are the system prompt */
    size_t computed;   /* prefill tokens actually computed (prompt cache reuse) */
    long generated;
    int done;
    int endless;
    uint64_t rng;
    const char* text; /* the user's text (prompt / multimodal prompt), or "" */
    const char* role;
} batch_run;

static const char* role_of(const RKLLMInput* in) { return in->role ? in->role : "user"; }

int sleep_until(fake_handle* h, double deadline_ms) {
    if (atomic_load(&h->abort_flag)) return 1;
    pthread_mutex_lock(&h->mu);
    while (!atomic_load(&h->abort_flag)) {
        if (isinf(deadline_ms)) {
            pthread_cond_wait(&h->sleep_cv, &h->mu);
            continue;
        }
        double left = deadline_ms - now_ms();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long ns = (long long)ts.tv_nsec + (long long)(left * 1e6);
        ts.tv_sec += (time_t)(ns / 1000000000LL);
        ts.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&h->sleep_cv, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return atomic_load(&h->abort_flag) != 0;
}

void kv_clear(fake_handle* h, int keep_system_prompt) {
    for (int b = 0; b < h->n_batch; b++) {
        if (keep_system_prompt) {
            if (h->kv[b].n > h->kv[b].sys_len) h->kv[b].n = h->kv[b].sys_len;
        } else {
            h->kv[b].n = 0;
            h->kv[b].sys_len = 0;
        }
    }
}

/* Makes room for `need` more tokens by dropping the oldest ones after the kept prefix,
 * half of the droppable part at a time (the context-window shift). 0 if impossible. */
static int kv_make_room(fake_handle* h, kv_state* kv, size_t need) {
    size_t max = (size_t)h->max_context_len;
    if (kv->n + need <= max) return 1;
    size_t keep = h->n_keep < 0 ? kv->sys_len : (size_t)h->n_keep;
    if (keep > kv->n) keep = kv->n;
    if (need > max - (keep < max ? keep : max) || keep >= max) return 0;
    size_t droppable = kv->n - keep;
    size_t drop = droppable / 2;
    size_t min_drop = kv->n + need - max;
    if (drop < min_drop) drop = min_drop;
    if (drop == 0 || drop > droppable) return 0;
    memmove(kv->tokens + keep, kv->tokens + keep + drop, (kv->n - keep - drop) * sizeof(int32_t));
    kv->n -= drop;
    if (kv->sys_len > keep) kv->sys_len = keep;
    atomic_fetch_add(&g_counters.kv_shifts, 1);
    return 1;
}

static void kv_push(fake_handle* h, kv_state* kv, const int32_t* ids, size_t n) {
    memcpy(kv->tokens + kv->n, ids, n * sizeof(int32_t));
    kv->n += n;
    (void)h;
}

/* ---- chat template ------------------------------------------------------------------ */

static void put_system(fake_handle* h, sbuf* out) {
    if (h->custom_template) {
        sb_puts(out, h->tpl_system);
        if (h->tools) sb_printf(out, "\n<tools>\n%s\n</tools>\n", h->tools_json);
        return;
    }
    sb_puts(out, "<|im_start|>system\n");
    sb_puts(out, h->tools && h->tools_system[0] ? h->tools_system : "You are a helpful assistant.");
    if (h->tools) sb_printf(out, "\n\n# Tools\n<tools>\n%s\n</tools>", h->tools_json);
    sb_puts(out, "<|im_end|>\n");
}

/* Wraps text in the template; returns the byte length of the system part. */
static size_t apply_template(fake_handle* h, sbuf* out, int with_system, const char* role,
                             const char* text, int thinking) {
    size_t sys = 0;
    if (with_system) {
        put_system(h, out);
        sys = out->len;
    }
    sb_puts(out, h->custom_template ? h->tpl_prefix : "<|im_start|>user\n");
    if (strcmp(role, "tool") == 0)
        sb_printf(out, "<%s>\n%s\n</%s>", h->tool_response, text, h->tool_response);
    else
        sb_puts(out, text);
    if (h->custom_template) {
        sb_puts(out, h->tpl_postfix);
    } else {
        sb_puts(out, "<|im_end|>\n<|im_start|>assistant\n");
        /* Qwen3's template closes an empty think block when thinking is off. */
        if (h->model.thinking && !thinking) sb_puts(out, "<think>\n\n</think>\n\n");
    }
    return sys;
}

/* ---- replies ------------------------------------------------------------------------ */

static void write_json_value(sbuf* out, const json* v) {
    switch (v->type) {
    case JSON_NULL: sb_puts(out, "null"); break;
    case JSON_BOOL: sb_puts(out, v->boolean ? "true" : "false"); break;
    case JSON_NUMBER:
        if (v->number == floor(v->number) && fabs(v->number) < 1e15) sb_printf(out, "%.0f", v->number);
        else sb_printf(out, "%.17g", v->number);
        break;
    case JSON_STRING: sb_json_string(out, v->string, v->length); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        sb_puts(out, v->type == JSON_ARRAY ? "[" : "{");
        for (size_t k = 0; k < v->count; k++) {
            if (k) sb_puts(out, ", ");
            if (v->type == JSON_OBJECT) {
                sb_json_string(out, v->keys[k], strlen(v->keys[k]));
                sb_puts(out, ": ");
            }
            write_json_value(out, &v->items[k]);
        }
        sb_puts(out, v->type == JSON_ARRAY ? "]" : "}");
        break;
    }
}

static const json* tool_function(const json* tool) {
    const json* fn = json_get(tool, "function");
    return fn ? fn : tool;
}

/* A deterministic value for one required property, from its JSON schema. */
static void schema_value(sbuf* out, const char* prop, const json* schema) {
    const json* def = json_get(schema, "default");
    const json* en = json_get(schema, "enum");
    const json* type = json_get(schema, "type");
    const json* min = json_get(schema, "minimum");
    const char* t = type && type->type == JSON_STRING ? type->string : "";
    if (def) write_json_value(out, def);
    else if (en && en->type == JSON_ARRAY && en->count) write_json_value(out, &en->items[0]);
    else if (strcmp(t, "string") == 0) sb_printf(out, "\"fake-%s\"", prop);
    else if (strcmp(t, "integer") == 0) sb_printf(out, "%.0f", min && min->type == JSON_NUMBER ? ceil(min->number) : 1.0);
    else if (strcmp(t, "number") == 0) {
        if (min && min->type == JSON_NUMBER) write_json_value(out, min);
        else sb_puts(out, "0.5");
    } else if (strcmp(t, "boolean") == 0) sb_puts(out, "true");
    else if (strcmp(t, "array") == 0) sb_puts(out, "[]");
    else if (strcmp(t, "object") == 0) sb_puts(out, "{}");
    else sb_puts(out, "null");
}

static int tool_calls_reply(fake_handle* h, sbuf* out, const char* text) {
    int calls = 0;
    for (size_t k = 0; h->tools && k < h->tools->count; k++) {
        const json* fn = tool_function(&h->tools->items[k]);
        const json* name = json_get(fn, "name");
        if (!strstr(text, name->string)) continue;
        if (calls++) sb_puts(out, "\n");
        sb_puts(out, "<tool_call>\n{\"name\": ");
        sb_json_string(out, name->string, name->length);
        sb_puts(out, ", \"arguments\": {");
        const json* params = json_get(fn, "parameters");
        const json* props = json_get(params, "properties");
        const json* req = json_get(params, "required");
        size_t written = 0;
        for (size_t r = 0; req && req->type == JSON_ARRAY && r < req->count; r++) {
            if (req->items[r].type != JSON_STRING) continue;
            const char* prop = req->items[r].string;
            if (written++) sb_puts(out, ", ");
            sb_json_string(out, prop, strlen(prop));
            sb_puts(out, ": ");
            schema_value(out, prop, json_get(props, prop));
        }
        sb_puts(out, "}}\n</tool_call>");
    }
    return calls;
}

static void choose_reply(fake_handle* h, batch_run* br, const RKLLMInput* in) {
    int thinking = h->model.thinking && (h->custom_template || in->enable_thinking);
    if (thinking) {
        sb_puts(&br->reply, "<think>\n");
        sbuf think;
        sb_init(&think);
        uint64_t rng = br->rng ^ 0x7468696e6bULL;
        int n = 1 + (int)(splitmix64(&rng) % 2);
        for (int k = 0; k < n; k++) gen_sentence(&think, &rng);
        sb_put(&br->reply, think.data, think.len);
        sb_free(&think);
        sb_puts(&br->reply, "\n</think>\n\n");
    }
    sb_put(&br->reply, br->tags.data, br->tags.len);
    for (size_t k = 0; k < h->model.n_script; k++) {
        if (strstr(br->text, h->model.script[k].match)) {
            sb_puts(&br->reply, h->model.script[k].reply);
            return;
        }
    }
    if (strcmp(br->role, "tool") == 0) {
        sb_printf(&br->reply, "The tool returned: %s", br->text);
        return;
    }
    if (br->text[0] && tool_calls_reply(h, &br->reply, br->text)) return;
    sbuf answer;
    sb_init(&answer);
    int n = 1 + (int)(splitmix64(&br->rng) % 3);
    for (int k = 0; k < n; k++) gen_sentence(&answer, &br->rng);
    sb_put(&br->reply, answer.data, answer.len);
    sb_free(&answer);
}

/* ---- inputs ------------------------------------------------------------------------- */

static void tag(batch_run* br, const char* what, const char* shape, uint64_t fnv) {
    sb_printf(&br->tags, "[%s n=%s fnv=%016llx] ", what, shape, (unsigned long long)fnv);
}

/* Pseudo token ids for embedding rows (they take KV positions like real tokens). */
static void push_embed_ids(batch_run* br, const float* rows, size_t n_rows, size_t width, int vocab) {
    br->prefill = fk_realloc(br->prefill, (br->n_prefill + n_rows + 1) * sizeof(int32_t));
    for (size_t r = 0; r < n_rows; r++)
        br->prefill[br->n_prefill++] =
            (int32_t)(fnv1a(FNV_OFFSET, rows + r * width, width * sizeof(float)) % (uint64_t)vocab);
}

/* Text -> token ids, through the 1.3 tokenizer callback when the model has none. */
static int tokenize(fake_handle* h, batch_run* br, const char* s, size_t n, char* err, size_t errcap) {
#if RKLLM_ABI == 13
    if (!h->model.internal_tokenizer) {
        int32_t cap = h->max_context_len;
        int32_t* buf = fk_calloc((size_t)cap, sizeof(int32_t));
        atomic_fetch_add(&g_counters.tokenizer_calls, 1);
        int got = h->tokenizer_cb(h->tokenizer_ud, s, (int32_t)n, buf, cap);
        if (got < 0 || got > cap) {
            snprintf(err, errcap, "tokenizer callback returned %d (capacity %d)", got, cap);
            fk_free(buf);
            return -1;
        }
        for (int k = 0; k < got; k++) {
            if (buf[k] < 0 || buf[k] >= h->model.vocab_size) {
                snprintf(err, errcap, "tokenizer callback gave token id %d outside [0, %d)", buf[k],
                         h->model.vocab_size);
                fk_free(buf);
                return -1;
            }
        }
        char shape[32];
        snprintf(shape, sizeof shape, "%d", got);
        tag(br, "tokenizer", shape, fnv1a(FNV_OFFSET, buf, (size_t)got * sizeof(int32_t)));
        br->prefill = fk_realloc(br->prefill, (br->n_prefill + (size_t)got + 1) * sizeof(int32_t));
        memcpy(br->prefill + br->n_prefill, buf, (size_t)got * sizeof(int32_t));
        br->n_prefill += (size_t)got;
        fk_free(buf);
        return 0;
    }
#else
    (void)err;
    (void)errcap;
#endif
    br->n_prefill = tok_ids(s, n, h->model.vocab_size, &br->prefill, br->n_prefill);
    return 0;
}

static const char* or_default(const char* s, const char* d) { return s ? s : d; }

/* Replaces the first `placeholder` in text with start + end markers, or prepends them. */
static void place_media(sbuf* out, const char* text, const char* placeholder, const char* start,
                        const char* end) {
    const char* at = strstr(text, placeholder);
    size_t before = at ? (size_t)(at - text) : 0;
    sb_put(out, text, before);
    sb_puts(out, start);
    sb_puts(out, end);
    sb_puts(out, at ? at + strlen(placeholder) : text);
}

static int prepare_batch(fake_handle* h, int b, batch_run* br, char* err, size_t errcap) {
    const RKLLMInput* in = &h->job.inputs[b];
    int hidden = h->model.hidden_size, vocab = h->model.vocab_size;
    int fresh = h->kv[b].n == 0;
    br->role = role_of(in);
    br->text = "";
    char shape[96];
    switch (in->input_type) {
    case RKLLM_INPUT_PROMPT: {
        br->text = in->prompt_input;
        size_t sys = apply_template(h, &br->templated, fresh, br->role, br->text, in->enable_thinking);
        if (tokenize(h, br, br->templated.data, br->templated.len, err, errcap)) return -1;
        br->sys_tokens = sys ? tok_count(br->templated.data, sys) : 0;
        break;
    }
    case RKLLM_INPUT_TOKEN: {
        const RKLLMTokenInput* t = &in->token_input;
        for (size_t k = 0; k < t->n_tokens; k++) {
            if (t->input_ids[k] < 0 || t->input_ids[k] >= vocab) {
                snprintf(err, errcap, "input token id %d at %zu is outside [0, %d)", t->input_ids[k], k, vocab);
                return -1;
            }
        }
        snprintf(shape, sizeof shape, "%zu", t->n_tokens);
        tag(br, "tokens", shape, fnv1a(FNV_OFFSET, t->input_ids, t->n_tokens * sizeof(int32_t)));
        br->prefill = fk_malloc((t->n_tokens + 1) * sizeof(int32_t));
        memcpy(br->prefill, t->input_ids, t->n_tokens * sizeof(int32_t));
        br->n_prefill = t->n_tokens;
        break;
    }
    case RKLLM_INPUT_EMBED: {
        const RKLLMEmbedInput* e = &in->embed_input;
        snprintf(shape, sizeof shape, "%zux%d", e->n_tokens, hidden);
        tag(br, "embed", shape, fnv1a(FNV_OFFSET, e->embed, e->n_tokens * (size_t)hidden * sizeof(float)));
        push_embed_ids(br, e->embed, e->n_tokens, (size_t)hidden, vocab);
        break;
    }
    case RKLLM_INPUT_MULTIMODAL: {
        const RKLLMMultiModalInput* m = &in->multimodal_input;
        br->text = m->prompt;
        sbuf placed;
        sb_init(&placed);
#if RKLLM_ABI == 12
        const float* img = m->image_embed;
        size_t n_img = m->n_image, n_img_tok = m->n_image_tokens;
        const char* is = or_default(h->img_start, "<|vision_start|>");
        const char* ie = or_default(h->img_end, "<|vision_end|>");
        if (img) place_media(&placed, m->prompt, "<image>", is, ie);
        else sb_puts(&placed, m->prompt);
#else
        const float* img = m->image.image_embed;
        size_t n_img = m->image.n_image, n_img_tok = m->image.n_image_tokens;
        sbuf tmp;
        sb_init(&tmp);
        if (img)
            place_media(&tmp, m->prompt, "<image>", or_default(m->image.image_start, "<|vision_start|>"),
                        or_default(m->image.image_end, "<|vision_end|>"));
        else
            sb_puts(&tmp, m->prompt);
        if (m->video.video_embed)
            place_media(&placed, tmp.data, "<video>", or_default(m->video.video_start, "<|vision_start|>"),
                        or_default(m->video.video_end, "<|vision_end|>"));
        else
            sb_puts(&placed, tmp.data);
        sb_free(&tmp);
#endif
        size_t sys = apply_template(h, &br->templated, fresh, br->role, placed.data, in->enable_thinking);
        sb_free(&placed);
        if (tokenize(h, br, br->templated.data, br->templated.len, err, errcap)) return -1;
        br->sys_tokens = sys ? tok_count(br->templated.data, sys) : 0;
        if (img) {
            size_t rows = n_img * n_img_tok;
            snprintf(shape, sizeof shape, "%zux%zux%d", n_img, n_img_tok, hidden);
            tag(br, "image", shape, fnv1a(FNV_OFFSET, img, rows * (size_t)hidden * sizeof(float)));
            push_embed_ids(br, img, rows, (size_t)hidden, vocab);
        }
#if RKLLM_ABI == 13
        if (m->video.video_embed) {
            size_t rows = m->video.n_video * m->video.n_frame_per_video * m->video.n_frame_tokens;
            snprintf(shape, sizeof shape, "%zux%zux%zux%d", m->video.n_video, m->video.n_frame_per_video,
                     m->video.n_frame_tokens, hidden);
            tag(br, "video", shape,
                fnv1a(FNV_OFFSET, m->video.video_embed, rows * (size_t)hidden * sizeof(float)));
            push_embed_ids(br, m->video.video_embed, rows, (size_t)hidden, vocab);
        }
#endif
        break;
    }
    }
#if RKLLM_ABI == 13
    if (!h->model.internal_embedding && in->input_type != RKLLM_INPUT_EMBED &&
        in->input_type != RKLLM_INPUT_MULTIMODAL) {
        size_t bytes = br->n_prefill * (size_t)hidden * sizeof(float);
        float* emb = fk_calloc(br->n_prefill * (size_t)hidden + 1, sizeof(float));
        atomic_fetch_add(&g_counters.embed_calls, 1);
        int rc = h->embed_cb(h->embed_ud, br->prefill, br->n_prefill, emb, bytes);
        if (rc != 0) {
            snprintf(err, errcap, "embedding callback returned %d", rc);
            fk_free(emb);
            return -1;
        }
        snprintf(shape, sizeof shape, "%zux%d", br->n_prefill, hidden);
        tag(br, "embed_callback", shape, fnv1a(FNV_OFFSET, emb, bytes));
        fk_free(emb);
    }
#endif
    if (h->cross_set) {
        const RKLLMCrossAttnParam* c = &h->cross;
        size_t nt = (size_t)c->num_tokens;
        size_t cache = (size_t)h->model.num_layers * nt * (size_t)h->model.num_kv_heads * (size_t)h->model.head_dim;
        uint64_t f = fnv1a(FNV_OFFSET, c->encoder_k_cache, cache * sizeof(float));
        f = fnv1a(f, c->encoder_v_cache, cache * sizeof(float));
        f = fnv1a(f, c->encoder_mask, nt * sizeof(float));
        f = fnv1a(f, c->encoder_pos, nt * sizeof(int32_t));
        snprintf(shape, sizeof shape, "%zu", nt);
        tag(br, "cross", shape, f);
    }
    if (br->n_prefill == 0) {
        snprintf(err, errcap, "input has no tokens");
        return -1;
    }
    /* The seed: model, what was received, sampling, LoRA, and where in the context we are. */
    uint64_t seed = fnv1a(FNV_OFFSET, h->model.name, strlen(h->model.name));
    seed = fnv1a(seed, br->text, strlen(br->text));
    seed = fnv1a(seed, br->tags.data, br->tags.len);
    seed = fnv1a(seed, &h->job.samp, sizeof h->job.samp);
    if (h->job.lora) {
        seed = fnv1a(seed, h->job.lora->name, strlen(h->job.lora->name));
        seed = fnv1a(seed, &h->job.lora->scale, sizeof(float));
    }
    seed = fnv1a(seed, &h->kv[b].n, sizeof h->kv[b].n);
    br->rng = seed;
    br->endless = h->ignore_eos || !h->model.natural_end;
    choose_reply(h, br, in);
    return 0;
}

/* ---- last-input report -------------------------------------------------------------- */

static const char* const type_names[] = {"prompt", "token", "embed", "multimodal"};

static void report_input(fake_handle* h, batch_run* brs) {
    sbuf j;
    sb_init(&j);
    const job_t* job = &h->job;
    sb_printf(&j, "{\"n_batch\": %d, \"mode\": %d, \"keep_history\": %d, \"max_new_tokens\": %ld, ",
              job->n_batch, job->mode, job->keep_history, job->max_new_tokens);
    sb_printf(&j,
              "\"sampling\": {\"top_k\": %d, \"top_p\": %.9g, \"temperature\": %.9g, \"repeat_penalty\": %.9g, "
              "\"frequency_penalty\": %.9g, \"presence_penalty\": %.9g, \"mirostat\": %d, "
              "\"mirostat_tau\": %.9g, \"mirostat_eta\": %.9g}, ",
              job->samp.top_k, job->samp.top_p, job->samp.temperature, job->samp.repeat_penalty,
              job->samp.frequency_penalty, job->samp.presence_penalty, job->samp.mirostat,
              job->samp.mirostat_tau, job->samp.mirostat_eta);
    if (job->lora) {
        sb_puts(&j, "\"lora\": {\"name\": ");
        sb_json_string(&j, job->lora->name, strlen(job->lora->name));
        sb_printf(&j, ", \"scale\": %.9g}, ", job->lora->scale);
    } else {
        sb_puts(&j, "\"lora\": null, ");
    }
    sb_puts(&j, "\"prompt_cache_save\": ");
    if (job->cache_save_path) sb_json_string(&j, job->cache_save_path, strlen(job->cache_save_path));
    else sb_puts(&j, "null");
    sb_puts(&j, ", \"inputs\": [");
    for (int b = 0; b < job->n_batch; b++) {
        const RKLLMInput* in = &job->inputs[b];
        if (b) sb_puts(&j, ", ");
        sb_printf(&j, "{\"type\": \"%s\", \"role\": ", type_names[in->input_type]);
        sb_json_string(&j, brs[b].role, strlen(brs[b].role));
        sb_printf(&j, ", \"enable_thinking\": %s, \"text\": ", in->enable_thinking ? "true" : "false");
        sb_json_string(&j, brs[b].text, strlen(brs[b].text));
        sb_puts(&j, ", \"templated\": ");
        sb_json_string(&j, brs[b].templated.data, brs[b].templated.len);
        sb_puts(&j, ", \"tags\": ");
        sb_json_string(&j, brs[b].tags.data, brs[b].tags.len);
        sb_printf(&j, ", \"prefill_tokens\": %zu, \"computed_prefill_tokens\": %zu}", brs[b].n_prefill,
                  brs[b].computed);
    }
    sb_puts(&j, "]}");
    pthread_mutex_lock(&h->mu);
    sb_free(&h->last_input);
    h->last_input = j;
    h->has_last_input = 1;
    pthread_mutex_unlock(&h->mu);
}

/* ---- the run ------------------------------------------------------------------------ */

static void fill_outputs(float* dst, int mode, size_t first_pos, size_t n_tokens, int width) {
    /* Documented values, exact in float32, so tests can check every element:
     * logits ((p*131 + i*7) mod 1021) / 32 - 16, hidden ((p*17 + i*29) mod 509) / 64 - 4.
     * Stepping the residue along a row keeps this cheap for 151,936-wide logits. */
    int logits = mode == RKLLM_INFER_GET_LOGITS;
    uint32_t mod = logits ? 1021u : 509u, step = logits ? 7u : 29u, mul = logits ? 131u : 17u;
    float scale = logits ? 32.0f : 64.0f, shift = logits ? 16.0f : 4.0f;
    float table[1021];
    for (uint32_t v = 0; v < mod; v++) table[v] = (float)v / scale - shift;
    for (size_t t = 0; t < n_tokens; t++) {
        float* row = dst + t * (size_t)width;
        uint32_t v = (uint32_t)(((uint64_t)(first_pos + t) * mul) % mod);
        for (int i = 0; i < width; i++) {
            row[i] = table[v];
            v += step;
            if (v >= mod) v -= mod;
        }
    }
}

static void poison_outputs(fake_handle* h, size_t floats) {
    for (int b = 0; b < h->n_batch; b++) {
        memset(h->text[b], POISON_BYTE, TEXT_CAP - 1);
        h->text[b][TEXT_CAP - 1] = '\0';
    }
    /* All-ones bytes are a NaN in every float (and memset is the fastest way to write them). */
    if (h->out_buf) memset(h->out_buf, 0xFF, floats * sizeof(float));
    /* (a released buffer is NULL here: nothing to poison) */
}

static int call_back(fake_handle* h, LLMCallState state) {
    void* ud = h->job.userdata;
#if RKLLM_ABI == 13
    if (!ud) ud = h->result_ud; /* a run's own userdata takes precedence */
#endif
    atomic_fetch_add(&g_counters.callbacks, 1);
    return h->result_cb(h->results, ud, state);
}

static void clear_results(fake_handle* h) {
    memset(h->results, 0, sizeof(RKLLMResult) * (size_t)h->n_batch);
    for (int b = 0; b < h->n_batch; b++) h->results[b].token_id = -1;
}

static int save_prompt_cache(const char* path, const kv_state* kv, char* err, size_t errcap) {
    FILE* f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errcap, "cannot write prompt cache %s: %s", path, strerror(errno));
        return -1;
    }
    uint32_t n = (uint32_t)kv->n;
    int ok = fwrite("RKFKPC01", 1, 8, f) == 8 && fwrite(&n, sizeof n, 1, f) == 1 &&
             fwrite(kv->tokens, sizeof(int32_t), kv->n, f) == kv->n;
    ok = (fclose(f) == 0) && ok;
    if (!ok) snprintf(err, errcap, "cannot write prompt cache %s", path);
    return ok ? 0 : -1;
}

int run_execute(fake_handle* h) {
    job_t* job = &h->job;
    int nb = job->n_batch;
    batch_run brs[MAX_BATCH];
    char err[256] = "";
    int rc = 0, error = 0, aborted = 0, paused = 0;
    double t0 = now_ms(), t_prefill_end = t0, t_gen_end = t0;
    size_t out_floats = 0;
    atomic_fetch_add(&g_counters.runs_started, 1);

    memset(brs, 0, sizeof brs);
    for (int b = 0; b < nb; b++) {
        sb_init(&brs[b].templated);
        sb_init(&brs[b].tags);
        sb_init(&brs[b].reply);
    }
    if (!h->paused && job->keep_history == 0) kv_clear(h, 0);
    h->paused = 0;

    for (int b = 0; b < nb && !error; b++) error = prepare_batch(h, b, &brs[b], err, sizeof err) != 0;

    /* Prefill: context checks, prompt-cache reuse, KV append, timed. */
    size_t max_computed = 0;
    for (int b = 0; b < nb && !error; b++) {
        batch_run* br = &brs[b];
        kv_state* kv = &h->kv[b];
        if (!kv_make_room(h, kv, br->n_prefill)) {
            snprintf(err, sizeof err, "input of %zu tokens does not fit max_context_len %d (KV holds %zu)",
                     br->n_prefill, h->max_context_len, kv->n);
            error = 1;
            break;
        }
        size_t reuse = 0;
        if (h->pcache_loaded && kv->n == 0) {
            while (reuse < br->n_prefill && reuse < h->pcache_n && br->prefill[reuse] == h->pcache[reuse]) reuse++;
            if (reuse == br->n_prefill) reuse--; /* the last token is always computed */
        }
        br->computed = br->n_prefill - reuse;
        if (br->computed > max_computed) max_computed = br->computed;
        if (kv->n == 0) kv->sys_len = br->sys_tokens;
        kv_push(h, kv, br->prefill, br->n_prefill);
    }
    if (!error) report_input(h, brs);
    if (!error) {
        double prefill_ms = h->model.prefill_ms * (double)max_computed + h->model.faults.slow_prefill_ms;
        if (prefill_ms > 0) aborted = sleep_until(h, t0 + prefill_ms);
        else aborted = atomic_load(&h->abort_flag) != 0;
        t_prefill_end = t_gen_end = now_ms();
        if (job->cache_save_path && !aborted && save_prompt_cache(job->cache_save_path, &h->kv[0], err, sizeof err))
            error = 1;
    }

    if (!error && !aborted && job->mode != RKLLM_INFER_GENERATE) {
        /* Hidden-layer / logits mode: one callback with every prefill token's row, no decoding. */
        int width = job->mode == RKLLM_INFER_GET_LOGITS ? h->model.vocab_size : h->model.hidden_size;
        size_t total = 0;
        for (int b = 0; b < nb; b++) total += brs[b].n_prefill * (size_t)width;
        if (total > h->out_cap) {
            fk_free(h->out_buf);
            h->out_buf = fk_malloc(total * sizeof(float));
            h->out_cap = total;
        }
        clear_results(h);
        size_t off = 0;
        for (int b = 0; b < nb; b++) {
            size_t first = h->kv[b].n - brs[b].n_prefill;
            fill_outputs(h->out_buf + off, job->mode, first, brs[b].n_prefill, width);
            h->text[b][0] = '\0';
            h->results[b].text = h->text[b];
            if (job->mode == RKLLM_INFER_GET_LOGITS)
                h->results[b].logits = (RKLLMResultLogits){h->out_buf + off, width, (int)brs[b].n_prefill};
            else
                h->results[b].last_hidden_layer =
                    (RKLLMResultLastHiddenLayer){h->out_buf + off, width, (int)brs[b].n_prefill};
            off += brs[b].n_prefill * (size_t)width;
        }
        out_floats = total;
        int ret = call_back(h, RKLLM_RUN_NORMAL);
        if (ret == 1) paused = 1;
#if RKLLM_ABI == 13
        if (ret == 2) { /* released: freed at once (a kept pointer is then a use after free) */
            fk_free(h->out_buf);
            h->out_buf = NULL;
            h->out_cap = 0;
            atomic_fetch_add(&g_counters.buffer_releases, 1);
        }
#endif
        poison_outputs(h, out_floats);
    }

    long limit = job->max_new_tokens > 0 ? job->max_new_tokens : h->max_context_len;
    const fake_faults* fl = &h->model.faults;
    for (long step = 0; !error && !aborted && !paused && job->mode == RKLLM_INFER_GENERATE; step++) {
        if (atomic_load(&h->abort_flag)) { aborted = 1; break; }
        if (fl->crash_after >= 0 && step == fl->crash_after) {
            fk_log('E', "injected fault: crash after %ld tokens", step);
            abort();
        }
        if (fl->error_after >= 0 && step == fl->error_after) {
            snprintf(err, sizeof err, "injected fault: error after %ld tokens", step);
            error = 1;
            break;
        }
        if (fl->hang_after >= 0 && step == fl->hang_after) {
            sleep_until(h, INFINITY);
            aborted = 1;
            break;
        }
        int active = 0, waiting = 0;
        for (int b = 0; b < nb; b++) {
            batch_run* br = &brs[b];
            RKLLMResult* r = &h->results[b];
            memset(r, 0, sizeof *r);
            r->token_id = -1;
            if (!br->done && br->generated >= limit) br->done = 1;
            if (!br->done && br->emitted == br->reply.len) {
                if (br->endless) gen_sentence(&br->reply, &br->rng);
                else br->done = 1;
            }
            if (br->done) continue;
            size_t len = tok_next(br->reply.data, br->reply.len, br->emitted);
            memcpy(h->text[b], br->reply.data + br->emitted, len);
            h->text[b][len] = '\0';
            r->text = h->text[b];
            r->token_id = tok_id(br->reply.data + br->emitted, len, h->model.vocab_size);
            br->emitted += len;
            br->generated++;
            waiting |= utf8_incomplete_tail(br->reply.data, br->emitted);
            active = 1;
            if (!kv_make_room(h, &h->kv[b], 1)) {
                snprintf(err, sizeof err, "context full and n_keep leaves nothing to shift");
                error = 1;
            } else {
                kv_push(h, &h->kv[b], &r->token_id, 1);
            }
#if RKLLM_ABI == 13
            if (!h->model.internal_embedding) {
                size_t bytes = (size_t)h->model.hidden_size * sizeof(float);
                float* emb = fk_calloc((size_t)h->model.hidden_size, sizeof(float));
                atomic_fetch_add(&g_counters.embed_calls, 1);
                int erc = h->embed_cb(h->embed_ud, &r->token_id, 1, emb, bytes);
                fk_free(emb);
                if (erc != 0) {
                    snprintf(err, sizeof err, "embedding callback returned %d", erc);
                    error = 1;
                }
            }
#endif
        }
        if (error || !active) break;
        int ret = call_back(h, waiting ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL);
        poison_outputs(h, 0);
        t_gen_end = now_ms();
        if (ret == 1) { paused = 1; break; }
        /* The next token is decoded after the callback returns: the runtime calls back from
         * its decode loop, so a slow consumer slows generation (no catching up). */
        if (h->model.decode_ms > 0) {
            if (sleep_until(h, now_ms() + h->model.decode_ms)) aborted = 1;
            t_gen_end = now_ms();
        }
    }
    if (aborted) atomic_fetch_add(&g_counters.aborts, 1);

    /* The one terminal callback: FINISH (also after abort and pause) or ERROR. */
    clear_results(h);
    for (int b = 0; b < nb; b++) {
        RKLLMPerfStat* p = &h->results[b].perf;
        p->prefill_time_ms = (float)(t_prefill_end - t0);
        p->prefill_tokens = (int)brs[b].computed;
        p->generate_time_ms = (float)(t_gen_end - t_prefill_end);
        p->generate_tokens = (int)brs[b].generated;
        p->memory_usage_mb = vm_hwm_mb();
    }
    if (error) {
        fk_log('E', "%s", err);
        rc = -1;
    }
    call_back(h, error ? RKLLM_RUN_ERROR : RKLLM_RUN_FINISH);
    if (fk_log_level() >= 1) {
        const RKLLMPerfStat* p = &h->results[0].perf;
        fk_log('I', "prefill %d tokens in %.2f ms, generate %d tokens in %.2f ms, peak memory %.2f MB",
               p->prefill_tokens, (double)p->prefill_time_ms, p->generate_tokens, (double)p->generate_time_ms,
               (double)p->memory_usage_mb);
    }

    if (paused) {
        h->paused = 1;
        h->paused_keep_history = job->keep_history;
    } else if (job->keep_history == 0) {
        kv_clear(h, 0);
    }
    for (int b = 0; b < nb; b++) {
        sb_free(&brs[b].templated);
        sb_free(&brs[b].tags);
        sb_free(&brs[b].reply);
        fk_free(brs[b].prefill);
    }
    fk_free(job->cache_save_path);
    job->cache_save_path = NULL;
    atomic_fetch_add(&g_counters.runs_finished, 1);
    return rc;
}

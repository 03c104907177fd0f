/* prefill.c: reading one batch's input on the runtime thread (template, tokenizer, arrays and
 * their checksum tags, 1.3 tokenizer / embedding callbacks, cross attention), the generation
 * seed, and the report behind rkllm_fake_last_input. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "batch.h"
#include "textgen.h"

static const char* role_of(const RKLLMInput* in) { return in->role ? in->role : "user"; }

static void tag(batch_run* br, const char* what, const char* shape, uint64_t fnv) {
    sb_printf(&br->tags, "[%s n=%s fnv=%016llx] ", what, shape, (unsigned long long)fnv);
}

/* Records the bytes the next prefill position stands for (what rkllm_fake_kv_text shows). */
static void span(batch_run* br, const char* s, size_t n) {
    if (br->n_pend == br->pend_cap) {
        br->pend_cap = br->pend_cap ? 2 * br->pend_cap : 64;
        br->pend = fk_realloc(br->pend, br->pend_cap * sizeof(size_t));
    }
    sb_put(&br->ptext, s, n);
    br->pend[br->n_pend++] = br->ptext.len;
}

/* Spans for text tokenized by the fake's own tokenizer: each token's bytes. */
static void span_pieces(batch_run* br, const char* s, size_t n) {
    for (size_t pos = 0, len; pos < n; pos += len) {
        len = tok_next(s, n, pos);
        span(br, s + pos, len);
    }
}

/* Pseudo token ids for embedding rows (they take KV positions like real tokens); each row's
 * text is `label` ("<embed>", "<image>", "<video>"). */
static void push_embed_ids(batch_run* br, const float* rows, size_t n_rows, size_t width, int vocab,
                           const char* label) {
    br->prefill = fk_realloc(br->prefill, (br->n_prefill + n_rows + 1) * sizeof(int32_t));
    for (size_t r = 0; r < n_rows; r++) {
        br->prefill[br->n_prefill++] =
            (int32_t)(fnv1a(FNV_OFFSET, rows + r * width, width * sizeof(float)) % (uint64_t)vocab);
        span(br, label, strlen(label));
    }
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
        /* Which bytes each of the callback's ids covers is unknown: the first holds them all. */
        for (int k = 0; k < got; k++) span(br, s, k ? 0 : n);
        fk_free(buf);
        return 0;
    }
#else
    (void)err;
    (void)errcap;
#endif
    br->n_prefill = tok_ids(s, n, h->model.vocab_size, &br->prefill, br->n_prefill);
    span_pieces(br, s, n);
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

int prepare_batch(fake_handle* h, int b, batch_run* br, char* err, size_t errcap) {
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
        for (size_t k = 0; k < t->n_tokens; k++) { /* ids the fake cannot turn back into text */
            snprintf(shape, sizeof shape, "<token:%d>", t->input_ids[k]);
            span(br, shape, strlen(shape));
        }
        break;
    }
    case RKLLM_INPUT_EMBED: {
        const RKLLMEmbedInput* e = &in->embed_input;
        snprintf(shape, sizeof shape, "%zux%d", e->n_tokens, hidden);
        tag(br, "embed", shape, fnv1a(FNV_OFFSET, e->embed, e->n_tokens * (size_t)hidden * sizeof(float)));
        push_embed_ids(br, e->embed, e->n_tokens, (size_t)hidden, vocab, "<embed>");
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
            push_embed_ids(br, img, rows, (size_t)hidden, vocab, "<image>");
        }
#if RKLLM_ABI == 13
        if (m->video.video_embed) {
            size_t rows = m->video.n_video * m->video.n_frame_per_video * m->video.n_frame_tokens;
            snprintf(shape, sizeof shape, "%zux%zux%zux%d", m->video.n_video, m->video.n_frame_per_video,
                     m->video.n_frame_tokens, hidden);
            tag(br, "video", shape,
                fnv1a(FNV_OFFSET, m->video.video_embed, rows * (size_t)hidden * sizeof(float)));
            push_embed_ids(br, m->video.video_embed, rows, (size_t)hidden, vocab, "<video>");
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
    /* (a 1.3 tokenizer callback may return fewer ids than the fake's own count) */
    if (br->sys_tokens > br->n_prefill) br->sys_tokens = br->n_prefill;
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
    choose_reply(h, b, br, in);
    return 0;
}

/* ---- last-input report ---------------------------------------------------------------- */

static const char* const type_names[] = {"prompt", "token", "embed", "multimodal"};

void report_input(fake_handle* h, const batch_run* brs) {
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

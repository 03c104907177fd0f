/* output.c: what the result callback is handed (token text, logits / hidden rows), the
 * callback itself, and the poisoning of everything handed out once it returns. */
#include <string.h>

#include "batch.h"

void fill_outputs(float* dst, int mode, size_t first_pos, size_t n_tokens, int width) {
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

void poison_outputs(fake_handle* h, size_t floats) {
    for (int b = 0; b < h->n_batch; b++) {
        memset(h->text[b], POISON_BYTE, h->text_cap[b] - 1);
        h->text[b][h->text_cap[b] - 1] = '\0';
    }
    /* All-ones bytes are a NaN in every float (and memset is the fastest way to write them). */
    if (h->out_buf) memset(h->out_buf, 0xFF, floats * sizeof(float));
    /* (a released buffer is NULL here: nothing to poison) */
}

int call_back(fake_handle* h, LLMCallState state) {
    void* ud = h->job.userdata;
#if RKLLM_ABI == 13
    if (!ud) ud = h->result_ud; /* a run's own userdata takes precedence */
#endif
    atomic_fetch_add(&g_counters.callbacks, 1);
    return h->result_cb(h->results, ud, state);
}

void clear_results(fake_handle* h) {
    memset(h->results, 0, sizeof(RKLLMResult) * (size_t)h->n_batch);
    for (int b = 0; b < h->n_batch; b++) h->results[b].token_id = -1;
}

void set_text(fake_handle* h, int b, const char* bytes, size_t n) {
    if (n + 1 > h->text_cap[b]) {
        while (n + 1 > h->text_cap[b]) h->text_cap[b] *= 2;
        fk_free(h->text[b]);
        h->text[b] = fk_malloc(h->text_cap[b]);
    }
    memcpy(h->text[b], bytes, n);
    h->text[b][n] = '\0';
    h->results[b].text = h->text[b];
}

/* Length of s[0..n) without an unfinished character at its end. */
static size_t complete_prefix(const char* s, size_t n) {
    while (n > 0 && utf8_incomplete_tail(s, n)) n--;
    return n;
}

/* [A11, A16] The one place that decides what a token's callback carries when the bytes
 * decoded so far end inside a UTF-8 character; the model file's "waiting_text" chooses.
 *
 * "partial": each callback carries exactly its token's bytes, so a character's first bytes
 * come in a WAITING callback and the rest in the next one.
 * "held" (default): WAITING callbacks carry "" for every batch, and the next NORMAL callback
 * carries everything since the previous NORMAL one, always whole characters: a consumer that
 * reads only NORMAL callbacks and decodes each on its own (the vendor's demos) loses nothing.
 * A batch's last token (max_new_tokens) cannot wait for more bytes: its unfinished character is
 * dropped and the callback is NORMAL. Bytes still held when a run stops (abort, pause, error)
 * are not delivered. */
LLMCallState token_texts(fake_handle* h, batch_run* brs, int nb, long limit) {
    int partial = h->model.waiting_text == WAITING_TEXT_PARTIAL;
    int waiting = 0;
    for (int b = 0; b < nb; b++) {
        const batch_run* br = &brs[b];
        int last = br->generated >= limit;
        if (br->has_token && utf8_incomplete_tail(br->reply.data, br->emitted) && (partial || !last)) waiting = 1;
    }
    for (int b = 0; b < nb; b++) {
        batch_run* br = &brs[b];
        if (!br->has_token) continue;
        size_t end = partial ? br->emitted : waiting ? br->sent : complete_prefix(br->reply.data, br->emitted);
        set_text(h, b, br->reply.data + br->sent, end - br->sent);
        if (partial || !waiting) br->sent = br->emitted;
    }
    return waiting ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL;
}

/* textgen.c: see textgen.h. The rules are documented in fake_runtime/README.md. */
#include "textgen.h"

#include <string.h>

/* Tags a real chat model emits as single special tokens, with Qwen2.5/Qwen3 ids. */
static const struct {
    const char* text;
    int32_t id;
} specials[] = {
    {"<|im_start|>", 151644}, {"<|im_end|>", 151645}, {"<tool_call>", 151657},
    {"</tool_call>", 151658}, {"<think>", 151667},     {"</think>", 151668},
};
#define N_SPECIALS (sizeof specials / sizeof specials[0])

/* Byte lengths for splitting runs of non-ASCII text: they cut through multi-byte
 * characters on purpose, as byte-level BPE does, so RKLLM_RUN_WAITING happens. */
static const size_t nonascii_len[] = {3, 2, 4, 3, 5, 1, 3};
#define MAX_WORD 8

static int is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

size_t tok_next(const char* s, size_t n, size_t pos) {
    const unsigned char* u = (const unsigned char*)s;
    for (size_t k = 0; k < N_SPECIALS; k++) {
        size_t l = strlen(specials[k].text);
        if (n - pos >= l && memcmp(s + pos, specials[k].text, l) == 0) return l;
    }
    size_t i = pos;
    if (u[i] == ' ' && i + 1 < n && is_alnum(u[i + 1])) i++;
    if (is_alnum(u[i])) {
        while (i < n && is_alnum(u[i]) && i - pos < MAX_WORD) i++;
        return i - pos;
    }
    if (u[i] < 0x80) return 1;
    size_t run = 0;
    while (pos + run < n && u[pos + run] >= 0x80) run++;
    size_t want = nonascii_len[pos % (sizeof nonascii_len / sizeof nonascii_len[0])];
    return run < want ? run : want;
}

size_t tok_count(const char* s, size_t n) {
    size_t count = 0;
    for (size_t pos = 0; pos < n; pos += tok_next(s, n, pos)) count++;
    return count;
}

int32_t tok_id(const char* s, size_t n, int vocab) {
    for (size_t k = 0; k < N_SPECIALS; k++)
        if (strlen(specials[k].text) == n && memcmp(specials[k].text, s, n) == 0 &&
            specials[k].id < vocab)
            return specials[k].id;
    int32_t base = vocab > 2000 ? 1000 : 0; /* ids below 1000 stay free, like control tokens */
    return base + (int32_t)(fnv1a(FNV_OFFSET, s, n) % (uint64_t)(vocab - base));
}

size_t tok_ids(const char* s, size_t n, int vocab, int32_t** ids, size_t count) {
    size_t add = tok_count(s, n);
    *ids = fk_realloc(*ids, (count + add + 1) * sizeof(int32_t));
    for (size_t pos = 0; pos < n;) {
        size_t l = tok_next(s, n, pos);
        (*ids)[count++] = tok_id(s + pos, l, vocab);
        pos += l;
    }
    return count;
}

static const char* const words[] = {
    "the", "model", "runs", "on", "a", "small", "board", "and", "answers", "quickly",
    "every", "token", "arrives", "in", "order", "while", "the", "kitchen", "light", "stays",
    "warm", "bright", "quiet", "network", "stream", "of", "ideas", "for", "your", "home",
    "assistant", "measures", "temperature", "carefully", "today", "tomorrow", "with", "clear",
    "simple", "steps", "north", "river", "garden", "window", "evening", "coffee", "music",
    "silicon", "memory", "cache", "prompt", "reply", "gently", "before", "after", "because",
};
/* Non-ASCII words (accents, CJK, emoji) so the byte-level splits hit every UTF-8 length. */
static const char* const intl[] = {
    "café", "naïve", "über", "façade", "模型", "你好", "世界", "日本語", "🙂", "🚀", "🤖", "ça va",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

void gen_sentence(sbuf* out, uint64_t* rng) {
    size_t n_words = 5 + splitmix64(rng) % 8;
    if (out->len) sb_put(out, " ", 1);
    for (size_t w = 0; w < n_words; w++) {
        uint64_t r = splitmix64(rng);
        const char* word = (r % 6 == 0) ? intl[(r >> 8) % COUNT(intl)] : words[(r >> 8) % COUNT(words)];
        if (w) sb_puts(out, (r >> 32) % 9 == 0 ? ", " : " ");
        if (w == 0 && word[0] >= 'a' && word[0] <= 'z') {
            char cap = (char)(word[0] - 'a' + 'A');
            sb_put(out, &cap, 1);
            sb_puts(out, word + 1);
        } else {
            sb_puts(out, word);
        }
    }
    sb_put(out, ".", 1);
}

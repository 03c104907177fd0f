/*
 * naive_consumer.c: reads the fake runtime exactly as the vendor's C demo (and its Flask
 * server, and rkllama) read the real one: text from RKLLM_RUN_NORMAL callbacks only, each
 * callback's text taken on its own as strict UTF-8 (a text that is not valid UTF-8 on its own
 * is lost, as a strict decode would lose it). Driven by tests/fake_runtime/test_naive_consumers.py:
 *   naive_consumer MODEL_JSON PROMPT -> the text kept, byte for byte, on stdout;
 *                                       "rejected=N" on stderr; exit 0 if nothing leaked
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rkllm.h"
#include "rkllm_fake.h"

static char g_text[1 << 16];
static size_t g_len;
static int g_rejected;

/* Strict UTF-8 (what Python's bytes.decode("utf-8") accepts): no truncated sequences, stray
 * continuation bytes, overlong forms, surrogates or code points above U+10FFFF. */
static int valid_utf8(const unsigned char* s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            need = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            need = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + need >= n) return 0; /* truncated */
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += need + 1;
    }
    return 1;
}

static int on_result(RKLLMResult* result, void* userdata, LLMCallState state) {
    (void)userdata;
    if (state != RKLLM_RUN_NORMAL || !result->text) return 0; /* the demo's only branch with text */
    size_t n = strlen(result->text);
    if (!valid_utf8((const unsigned char*)result->text, n) || g_len + n > sizeof g_text) {
        g_rejected++;
        return 0;
    }
    memcpy(g_text + g_len, result->text, n);
    g_len += n;
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_JSON PROMPT\n", argv[0]);
        return 2;
    }
    RKLLMParam param = rkllm_createDefaultParam();
    param.model_path = argv[1];
    param.max_new_tokens = 4096;
    param.max_context_len = 4096;
    LLMHandle handle = NULL;
#if RKLLM_ABI == 12
    int rc = rkllm_init(&handle, &param, on_result);
#else
    RKLLMCallback cb = {on_result, NULL, NULL, NULL, NULL, NULL};
    int rc = rkllm_init(&handle, &param, &cb);
#endif
    if (rc != 0) {
        fprintf(stderr, "rkllm init failed\n");
        return 1;
    }
    RKLLMInput input;
    memset(&input, 0, sizeof input);
    input.role = "user";
    input.input_type = RKLLM_INPUT_PROMPT;
    input.prompt_input = argv[2];
    RKLLMInferParam infer;
    memset(&infer, 0, sizeof infer);
    infer.mode = RKLLM_INFER_GENERATE;
    rc = rkllm_run(handle, &input, &infer, NULL);
    if (rkllm_destroy(handle) != 0) rc = 1;
    RKLLMFakeStats stats;
    rkllm_fake_stats(&stats);
    fwrite(g_text, 1, g_len, stdout);
    fprintf(stderr, "rejected=%d\n", g_rejected);
    return rc == 0 && stats.live_allocations == 0 && stats.live_handles == 0 ? 0 : 1;
}

/*
 * bridge_stress.c: the bridge's producer / consumer protocol under ThreadSanitizer and
 * LeakSanitizer. A producer thread plays the runtime (calls rkb_result_callback); the main
 * thread consumes like the SDK (drain, wait on the fd, ack). Checked: every token arrives
 * once and in order; a small max_pending blocks the producer instead of dropping; closing
 * early releases a blocked producer; a reset channel serves a second run; every channel and
 * array is freed.
 *   bridge_stress -> exit 0 and "ok ..." when every check held
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rkllm_bridge.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "bridge_stress: check failed at line %d: %s\n", __LINE__, #cond); \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

typedef struct {
    rkb_channel* ch;
    int tokens;
} producer_arg;

static void* producer(void* p) {
    producer_arg* a = p;
    float logits[4] = {1, 2, 3, 4};
    char text[16];
    for (int i = 0; i < a->tokens; i++) {
        RKLLMResult r;
        memset(&r, 0, sizeof r);
        snprintf(text, sizeof text, "t%d", i);
        r.text = text;
        r.token_id = i;
        if (i % 1000 == 0) r.logits = (RKLLMResultLogits){logits, 2, 2};
        rkb_result_callback(&r, a->ch, RKLLM_RUN_NORMAL);
    }
    RKLLMResult fin;
    memset(&fin, 0, sizeof fin);
    fin.token_id = -1;
    fin.perf.generate_tokens = a->tokens;
    rkb_result_callback(&fin, a->ch, RKLLM_RUN_FINISH);
    rkb_channel_set_done(a->ch, 0);
    return NULL;
}

static void wait_fd(rkb_channel* ch) {
    struct pollfd pfd = {rkb_channel_fd(ch), POLLIN, 0};
    CHECK(poll(&pfd, 1, 10000) == 1);
    rkb_channel_ack(ch);
}

/* Consume everything; returns tokens seen. */
static int consume_all(rkb_channel* ch, int close_after) {
    int next = 0, done = 0;
    rkb_page page;
    while (!done) {
        size_t n = rkb_channel_drain(ch, &page);
        for (size_t k = 0; k < n; k++) {
            const rkb_event* e = &page.events[k];
            if (e->array) rkb_free(e->array);
            if (e->state != RKLLM_RUN_NORMAL) continue;
            CHECK(e->token_id == next);
            char want[16];
            snprintf(want, sizeof want, "t%d", next);
            CHECK(e->text_len == strlen(want));
            CHECK(memcmp(page.text + e->text_off, want, e->text_len) == 0);
            next++;
            if (close_after && next == close_after) rkb_channel_close(ch);
        }
        if (page.run_done && (page.finished || close_after)) done = 1;
        else if (n == 0) wait_fd(ch);
    }
    return next;
}

static void scenario(int tokens, size_t max_pending, int close_after) {
    rkb_channel* ch = rkb_channel_new(1, 2, 0, max_pending);
    CHECK(ch != NULL);
    for (int round = 0; round < 2; round++) { /* the second run reuses the reset channel */
        if (round) rkb_channel_reset(ch, 2, 0);
        producer_arg a = {ch, tokens};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, producer, &a) == 0);
        int seen = consume_all(ch, close_after);
        CHECK(pthread_join(t, NULL) == 0);
        if (close_after) CHECK(seen >= close_after);
        else CHECK(seen == tokens);
    }
    rkb_channel_free(ch);
}

int main(void) {
    scenario(200000, 64, 0);    /* producer often blocked on a tiny page */
    scenario(200000, 65536, 0); /* large pages */
    scenario(50000, 16, 100);   /* consumer leaves early: producer must not stay blocked */
    CHECK(rkb_live_objects() == 0);
    printf("ok\n");
    return 0;
}

/*
 * rkllm_bridge.h: the SDK's result callback, in C, so the runtime thread never takes the GIL.
 *
 * A channel belongs to one run. rkb_result_callback (given to rkllm_init; the channel is the
 * run's userdata) copies each callback's text, token id, logits / hidden rows and perf into
 * the channel, and wakes the consumer through an eventfd only when it is waiting. The
 * consumer (Python) drains every pending event at once. When the consumer falls behind by
 * max_pending events, the runtime thread waits on a condition variable: memory stays
 * bounded and nothing is dropped. Pause and close are flags the callback reads.
 */
#ifndef RKLLM_BRIDGE_H
#define RKLLM_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#include "rkllm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RKB_NO_TEXT 0xFFFFFFFFu
/* The most batches one run can have (the runtime's n_batch limit). The SDK's cdef of
 * rkb_page spells this size out as 8: change both together. */
#define RKB_MAX_BATCH 8

typedef struct {
    int32_t state;       /* LLMCallState */
    int32_t batch;
    int32_t token_id;
    uint32_t text_off;   /* into the drained page's text */
    uint32_t text_len;   /* RKB_NO_TEXT: the runtime gave NULL */
    int32_t array_kind;  /* 0 none, 1 logits, 2 hidden states */
    int32_t rows, cols;
    float* array;        /* rows x cols, owned by the consumer after drain: free with rkb_free */
    int64_t t_ns;        /* CLOCK_MONOTONIC when the callback ran (latency measurement) */
} rkb_event;

typedef struct {
    const rkb_event* events;
    size_t n_events;
    const char* text;
    size_t text_len;
    int finished;        /* the terminal callback has been drained */
    int run_done;        /* rkb_channel_set_done was called (rkllm_run returned) */
    int run_rc;
    RKLLMPerfStat perf[RKB_MAX_BATCH]; /* valid once finished, one per batch */
} rkb_page;

typedef struct rkb_channel rkb_channel;

/* array_rows: 0 copy no arrays, 1 the last row only, 2 every row.
 * release_buffers: return 2 (runtime 1.3) after copying an array, so the runtime frees it. */
rkb_channel* rkb_channel_new(int n_batch, int array_rows, int release_buffers, size_t max_pending);
void rkb_channel_free(rkb_channel* ch);
int rkb_channel_fd(const rkb_channel* ch);
void rkb_channel_pause(rkb_channel* ch);
/* The consumer is gone: later non-terminal events are dropped, a blocked producer is released
 * and a consumer waiting on fd is woken (signalled as an event would). */
void rkb_channel_close(rkb_channel* ch);
/* Makes a channel whose run has ended (rkb_channel_set_done was called) ready for the next
 * run, keeping its buffers: events left undrained are dropped (their arrays freed). */
void rkb_channel_reset(rkb_channel* ch, int array_rows, int release_buffers);
/* Called by the thread that ran rkllm_run once it returned, with its return code. */
void rkb_channel_set_done(rkb_channel* ch, int rc);
/* Moves every pending event into *page (valid until the next drain). Returns the number of
 * events; 0 means nothing pending, and then the next event will signal the fd. */
size_t rkb_channel_drain(rkb_channel* ch, rkb_page* page);
/* Consumes the fd's wakeup count (non-blocking). */
void rkb_channel_ack(rkb_channel* ch);
void rkb_free(void* p);

int rkb_result_callback(RKLLMResult* result, void* userdata, LLMCallState state);

/* Counters for leak tests: channels and arrays alive. */
int64_t rkb_live_objects(void);

#ifdef __cplusplus
}
#endif

#endif

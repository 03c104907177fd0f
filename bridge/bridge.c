/* bridge.c: see rkllm_bridge.h. */
#define _GNU_SOURCE
#include "rkllm_bridge.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

typedef struct {
    rkb_event* events;
    size_t n, cap;
    char* text;
    size_t text_len, text_cap;
} page_buf;

struct rkb_channel {
    pthread_mutex_t mu;
    pthread_cond_t not_full;
    int fd;
    int n_batch;
    int array_rows;
    int release_buffers;
    size_t max_pending;
    page_buf pages[2];
    int producing; /* index of the page the callback appends to */
    int waiting;   /* the consumer found nothing and waits on fd */
    int finished;  /* terminal callback seen */
    int finished_drained;
    int run_done;
    int run_rc;
    atomic_int pause;
    atomic_int closed;
    RKLLMPerfStat perf[RKB_MAX_BATCH];
};

static atomic_llong g_live;

static void* xmalloc(size_t n) {
    void* p = malloc(n ? n : 1);
    if (!p) abort(); /* the runtime thread cannot report an allocation failure */
    return p;
}

static void page_free(page_buf* p, int owns_arrays) {
    for (size_t k = 0; owns_arrays && k < p->n; k++) {
        if (p->events[k].array) {
            free(p->events[k].array);
            atomic_fetch_sub(&g_live, 1);
        }
    }
    free(p->events);
    free(p->text);
}

API rkb_channel* rkb_channel_new(int n_batch, int array_rows, int release_buffers, size_t max_pending) {
    if (n_batch < 1 || n_batch > RKB_MAX_BATCH || array_rows < 0 || array_rows > 2) return NULL;
    rkb_channel* ch = calloc(1, sizeof *ch);
    if (!ch) return NULL;
    ch->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->fd < 0) {
        free(ch);
        return NULL;
    }
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->not_full, NULL);
    ch->n_batch = n_batch;
    ch->array_rows = array_rows;
    ch->release_buffers = release_buffers;
    ch->max_pending = max_pending ? max_pending : 65536;
    for (int k = 0; k < 2; k++) {
        ch->pages[k].cap = 256;
        ch->pages[k].events = xmalloc(ch->pages[k].cap * sizeof(rkb_event));
        ch->pages[k].text_cap = 4096;
        ch->pages[k].text = xmalloc(ch->pages[k].text_cap);
    }
    atomic_fetch_add(&g_live, 1);
    return ch;
}

API void rkb_channel_free(rkb_channel* ch) {
    if (!ch) return;
    /* Arrays of the page last drained belong to the consumer; undrained ones are ours. */
    page_free(&ch->pages[ch->producing], 1);
    page_free(&ch->pages[1 - ch->producing], 0);
    close(ch->fd);
    pthread_mutex_destroy(&ch->mu);
    pthread_cond_destroy(&ch->not_full);
    free(ch);
    atomic_fetch_sub(&g_live, 1);
}

API int rkb_channel_fd(const rkb_channel* ch) { return ch->fd; }

API void rkb_channel_pause(rkb_channel* ch) { atomic_store(&ch->pause, 1); }

static void signal_consumer(rkb_channel* ch) {
    /* Called with mu held. Only a waiting consumer is woken: one write per wait, not per token. */
    if (ch->waiting) {
        ch->waiting = 0;
        uint64_t one = 1;
        ssize_t rc;
        do rc = write(ch->fd, &one, sizeof one);
        while (rc < 0 && errno == EINTR);
    }
}

API void rkb_channel_close(rkb_channel* ch) {
    pthread_mutex_lock(&ch->mu);
    atomic_store(&ch->closed, 1);
    pthread_cond_broadcast(&ch->not_full);
    /* A consumer waiting on fd must wake too: the events that would have woken it are
     * dropped from now on, and the run may make no other (an abort the runtime did not take
     * leaves it running, e.g. hung, until the consumer repeats the abort). */
    signal_consumer(ch);
    pthread_mutex_unlock(&ch->mu);
}

API void rkb_channel_reset(rkb_channel* ch, int array_rows, int release_buffers) {
    pthread_mutex_lock(&ch->mu);
    page_buf* pending = &ch->pages[ch->producing];
    for (size_t k = 0; k < pending->n; k++) {
        if (pending->events[k].array) {
            free(pending->events[k].array);
            atomic_fetch_sub(&g_live, 1);
        }
    }
    for (int k = 0; k < 2; k++) { /* the drained page's arrays belong to the consumer */
        ch->pages[k].n = 0;
        ch->pages[k].text_len = 0;
    }
    ch->array_rows = array_rows;
    ch->release_buffers = release_buffers;
    ch->waiting = ch->finished = ch->finished_drained = ch->run_done = ch->run_rc = 0;
    atomic_store(&ch->pause, 0);
    atomic_store(&ch->closed, 0);
    memset(ch->perf, 0, sizeof ch->perf);
    pthread_mutex_unlock(&ch->mu);
    rkb_channel_ack(ch); /* a wakeup left over from the last run must not wake the next */
}

API void rkb_channel_set_done(rkb_channel* ch, int rc) {
    pthread_mutex_lock(&ch->mu);
    ch->run_done = 1;
    ch->run_rc = rc;
    ch->waiting = 1; /* always wake: the consumer may be waiting for exactly this */
    signal_consumer(ch);
    pthread_mutex_unlock(&ch->mu);
}

API void rkb_channel_ack(rkb_channel* ch) {
    uint64_t count;
    ssize_t rc;
    do rc = read(ch->fd, &count, sizeof count);
    while (rc < 0 && errno == EINTR);
}

API size_t rkb_channel_drain(rkb_channel* ch, rkb_page* page) {
    pthread_mutex_lock(&ch->mu);
    page_buf* consumed = &ch->pages[1 - ch->producing];
    /* The previous drain's page is done with: reset it (its arrays now belong to Python). */
    consumed->n = 0;
    consumed->text_len = 0;
    page_buf* full = &ch->pages[ch->producing];
    size_t n = full->n;
    if (n) {
        ch->producing = 1 - ch->producing;
        pthread_cond_broadcast(&ch->not_full);
    } else if (!ch->run_done) {
        ch->waiting = 1;
    }
    if (ch->finished) ch->finished_drained = 1;
    page->events = full->events;
    page->n_events = n;
    page->text = full->text;
    page->text_len = full->text_len;
    page->finished = ch->finished_drained;
    page->run_done = ch->run_done;
    page->run_rc = ch->run_rc;
    memcpy(page->perf, ch->perf, sizeof ch->perf);
    pthread_mutex_unlock(&ch->mu);
    return n;
}

API void rkb_free(void* p) {
    if (!p) return;
    free(p);
    atomic_fetch_sub(&g_live, 1);
}

API int64_t rkb_live_objects(void) { return atomic_load(&g_live); }

static void reserve(page_buf* p, size_t events, size_t text) {
    if (p->n + events > p->cap) {
        while (p->n + events > p->cap) p->cap *= 2;
        p->events = realloc(p->events, p->cap * sizeof(rkb_event));
        if (!p->events) abort();
    }
    if (p->text_len + text > p->text_cap) {
        while (p->text_len + text > p->text_cap) p->text_cap *= 2;
        p->text = realloc(p->text, p->text_cap);
        if (!p->text) abort();
    }
}

#define HUGE_PAGE ((size_t)2 << 20)

/* Large copies go to 2 MB-aligned memory marked for transparent huge pages: a fresh 39 MB
 * buffer then takes ~20 page faults instead of ~10,000 (numpy does the same for its arrays). */
static float* alloc_floats(size_t n) {
    size_t bytes = n * sizeof(float);
    if (bytes < 2 * HUGE_PAGE) return xmalloc(bytes);
    void* p = NULL;
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0) abort();
    madvise(p, (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), MADV_HUGEPAGE);
    return p;
}

static float* copy_rows(const float* src, int rows, int cols, int which, int* out_rows) {
    if (!src || rows <= 0 || cols <= 0) return NULL;
    int first = which == 1 ? rows - 1 : 0;
    *out_rows = rows - first;
    size_t n = (size_t)*out_rows * (size_t)cols;
    float* dst = alloc_floats(n);
    memcpy(dst, src + (size_t)first * (size_t)cols, n * sizeof(float));
    atomic_fetch_add(&g_live, 1);
    return dst;
}

API int rkb_result_callback(RKLLMResult* result, void* userdata, LLMCallState state) {
    rkb_channel* ch = userdata;
    if (!ch) return 0;
    struct timespec now; /* taken first: latency and bandwidth include the copies below */
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t t_ns = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
    int terminal = state == RKLLM_RUN_FINISH || state == RKLLM_RUN_ERROR;
    if (atomic_load(&ch->closed) && !terminal) return 0;
    int copied_array = 0;

    /* Copy outside the lock: the consumer may be draining meanwhile. */
    size_t text_bytes = 0;
    size_t lens[RKB_MAX_BATCH];
    for (int b = 0; b < ch->n_batch; b++) {
        lens[b] = (!terminal && result[b].text) ? strlen(result[b].text) : 0;
        text_bytes += lens[b];
    }
    float* arrays[RKB_MAX_BATCH] = {0};
    int kinds[RKB_MAX_BATCH] = {0}, rows[RKB_MAX_BATCH] = {0}, cols[RKB_MAX_BATCH] = {0};
    if (ch->array_rows && !terminal) {
        for (int b = 0; b < ch->n_batch; b++) {
            const RKLLMResultLogits* lg = &result[b].logits;
            const RKLLMResultLastHiddenLayer* hd = &result[b].last_hidden_layer;
            if (lg->logits) {
                arrays[b] = copy_rows(lg->logits, lg->num_tokens, lg->vocab_size, ch->array_rows, &rows[b]);
                kinds[b] = 1;
                cols[b] = lg->vocab_size;
            } else if (hd->hidden_states) {
                arrays[b] = copy_rows(hd->hidden_states, hd->num_tokens, hd->embd_size, ch->array_rows, &rows[b]);
                kinds[b] = 2;
                cols[b] = hd->embd_size;
            }
            copied_array |= arrays[b] != NULL;
        }
    }


    pthread_mutex_lock(&ch->mu);
    /* Bounded: wait (not for the GIL, for the consumer) while too much is pending. */
    while (!terminal && !atomic_load(&ch->closed) && ch->pages[ch->producing].n >= ch->max_pending)
        pthread_cond_wait(&ch->not_full, &ch->mu);
    page_buf* p = &ch->pages[ch->producing];
    reserve(p, (size_t)ch->n_batch, text_bytes);
    for (int b = 0; b < ch->n_batch; b++) {
        rkb_event* e = &p->events[p->n++];
        e->state = (int32_t)state;
        e->batch = b;
        e->token_id = result[b].token_id;
        e->array_kind = kinds[b];
        e->rows = rows[b];
        e->cols = cols[b];
        e->array = arrays[b];
        e->t_ns = t_ns;
        if (!terminal && result[b].text) {
            e->text_off = (uint32_t)p->text_len;
            e->text_len = (uint32_t)lens[b];
            memcpy(p->text + p->text_len, result[b].text, lens[b]);
            p->text_len += lens[b];
        } else {
            e->text_off = 0;
            e->text_len = RKB_NO_TEXT;
        }
        if (terminal && b < RKB_MAX_BATCH) ch->perf[b] = result[b].perf;
    }
    if (terminal) {
        ch->finished = 1;
        ch->waiting = 1; /* always wake for the end */
    }
    signal_consumer(ch);
    pthread_mutex_unlock(&ch->mu);

    if (!terminal && atomic_load(&ch->pause)) return 1;
    if (copied_array && ch->release_buffers) return 2;
    return 0;
}

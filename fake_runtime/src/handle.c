/* handle.c: a handle's memory, its runtime thread (the worker that runs jobs), and how a
 * sleeping prefill / decode step is woken by rkllm_abort or rkllm_destroy. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fake.h"

fake_handle* handle_new(int n_batch, int max_context_len) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return NULL;
    fake_handle* h = fk_calloc(1, sizeof *h);
    h->wake_fd = fd;
    h->n_batch = n_batch;
    h->max_context_len = max_context_len;
    for (int b = 0; b < n_batch; b++) {
        h->kv[b].tokens = fk_malloc(((size_t)max_context_len + 1) * sizeof(int32_t));
        h->kv[b].off = fk_calloc((size_t)max_context_len + 2, sizeof(size_t));
        sb_init(&h->kv[b].text);
        h->text_cap[b] = TEXT_CAP;
        h->text[b] = fk_malloc(TEXT_CAP);
        h->text[b][0] = '\0';
    }
    sb_init(&h->last_input);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->work_cv, NULL);
    pthread_cond_init(&h->done_cv, NULL);
    return h;
}

void handle_free(fake_handle* h) {
    model_free(&h->model);
    fk_free(h->img_start);
    fk_free(h->img_end);
    fk_free(h->img_content);
    fk_free(h->tpl_system);
    fk_free(h->tpl_prefix);
    fk_free(h->tpl_postfix);
    json_free(h->tools);
    fk_free(h->tools_json);
    fk_free(h->tools_system);
    fk_free(h->tool_response);
    for (size_t k = 0; k < h->n_loras; k++) {
        fk_free(h->loras[k].name);
        fk_free(h->loras[k].path);
    }
    fk_free(h->loras);
    pcache_free(&h->pcache);
    for (int b = 0; b < MAX_BATCH; b++) {
        fk_free(h->kv[b].tokens);
        fk_free(h->kv[b].off);
        fk_free(h->kv[b].text.data);
        fk_free(h->text[b]);
    }
    fk_free(h->out_buf);
    sb_free(&h->last_input);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->work_cv);
    pthread_cond_destroy(&h->done_cv);
    close(h->wake_fd);
    fk_free(h);
}

static void* worker_main(void* arg) {
    fake_handle* h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->has_job && !h->quit) pthread_cond_wait(&h->work_cv, &h->mu);
        if (!h->has_job) break;
        pthread_mutex_unlock(&h->mu);
        int rc = run_execute(h);
        pthread_mutex_lock(&h->mu);
        h->has_job = 0;
        h->running = 0;
        h->last_rc = rc;
        h->done_seq = h->job_seq;
        pthread_cond_broadcast(&h->done_cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int handle_start(fake_handle* h) {
    /* [A20] The runtime thread takes no process-directed signal (SIGINT and the like go to
     * the application's threads, whose handlers may call rkllm_destroy); faults it causes
     * itself (SIGSEGV, SIGABRT from crash_after, ...) stay deliverable. */
    sigset_t block, old;
    sigfillset(&block);
    static const int synchronous[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};
    for (size_t k = 0; k < sizeof synchronous / sizeof synchronous[0]; k++) sigdelset(&block, synchronous[k]);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&h->thread, NULL, worker_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? 0 : -1;
}

int on_worker(const fake_handle* h) { return pthread_equal(pthread_self(), h->thread); }

void handle_abort(fake_handle* h) {
    atomic_store(&h->abort_flag, 1);
    uint64_t one = 1;
    ssize_t n = write(h->wake_fd, &one, sizeof one); /* EAGAIN only when already signalled */
    (void)n;
}

int sleep_until(fake_handle* h, double deadline_ms) {
    struct pollfd pfd = {.fd = h->wake_fd, .events = POLLIN, .revents = 0};
    while (!atomic_load(&h->abort_flag)) {
        struct timespec ts, *timeout = NULL;
        if (!isinf(deadline_ms)) {
            double left = deadline_ms - now_ms();
            if (left <= 0) break;
            long long ns = (long long)(left * 1e6);
            ts.tv_sec = (time_t)(ns / 1000000000LL);
            ts.tv_nsec = (long)(ns % 1000000000LL);
            timeout = &ts;
        }
        if (ppoll(&pfd, 1, timeout, NULL) > 0) {
            uint64_t count; /* consume the wakeup; the abort flag says what it was for */
            ssize_t n = read(h->wake_fd, &count, sizeof count);
            (void)n;
        }
    }
    return atomic_load(&h->abort_flag) != 0;
}

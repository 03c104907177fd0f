/* registry.c: the handle registry. Callers hold an opaque id, not the struct's address: an
 * address can be reused by the allocator after destroy, and a stale handle must then fail,
 * not reach a new handle. */
#include "fake.h"

fake_counters g_counters;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static fake_handle** g_handles;
static size_t g_n_handles, g_cap_handles;
static uintptr_t g_next_id = 0x52000000u;

fake_handle* acquire(LLMHandle handle) {
    fake_handle* found = NULL;
    if (!handle) return NULL;
    pthread_mutex_lock(&g_lock);
    for (size_t k = 0; k < g_n_handles; k++) {
        if (g_handles[k]->id == (uintptr_t)handle) {
            found = g_handles[k];
            found->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

void release(fake_handle* h) {
    pthread_mutex_lock(&g_lock);
    if (--h->refs == 0) pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_lock);
}

void registry_add(fake_handle* h) {
    pthread_mutex_lock(&g_lock);
    if (g_n_handles == g_cap_handles) {
        g_cap_handles = g_cap_handles ? g_cap_handles * 2 : 8;
        g_handles = fk_realloc(g_handles, g_cap_handles * sizeof *g_handles);
    }
    g_next_id += 16;
    h->id = g_next_id;
    g_handles[g_n_handles++] = h;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_counters.live_handles, 1);
}

/* Unlists the handle (no new calls can reach it); registry_wait_unused waits for the calls inside it. */
int registry_remove(LLMHandle handle, fake_handle** out) {
    pthread_mutex_lock(&g_lock);
    for (size_t k = 0; k < g_n_handles; k++) {
        if (g_handles[k]->id == (uintptr_t)handle) {
            *out = g_handles[k];
            g_handles[k] = g_handles[--g_n_handles];
            if (g_n_handles == 0) {
                fk_free(g_handles);
                g_handles = NULL;
                g_cap_handles = 0;
            }
            pthread_mutex_unlock(&g_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return -1;
}

void registry_wait_unused(fake_handle* h) {
    pthread_mutex_lock(&g_lock);
    while (h->refs > 0) pthread_cond_wait(&g_cv, &g_lock);
    pthread_mutex_unlock(&g_lock);
}

/* Returns the handle locked, or NULL (not a live handle, or it is running a job). */
fake_handle* acquire_idle(LLMHandle handle, const char* fn) {
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "%s: invalid handle", fn);
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    if (h->running) {
        pthread_mutex_unlock(&h->mu);
        release(h);
        fk_log('E', "%s: a task is running on this handle", fn);
        return NULL;
    }
    return h;
}

int done_idle(fake_handle* h, int rc) {
    pthread_mutex_unlock(&h->mu);
    release(h);
    return rc;
}

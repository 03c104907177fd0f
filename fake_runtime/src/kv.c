/* kv.c: each batch's KV cache (positions, system-prompt length, the context-window shift)
 * and prompt cache files ("RKFKPC01", a uint32 count, then int32 ids). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "batch.h"

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
int kv_make_room(fake_handle* h, kv_state* kv, size_t need) {
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

void kv_push(kv_state* kv, const int32_t* ids, size_t n) {
    memcpy(kv->tokens + kv->n, ids, n * sizeof(int32_t));
    kv->n += n;
}

int save_prompt_cache(const char* path, const kv_state* kv, char* err, size_t errcap) {
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

int prompt_cache_read(const char* path, size_t cap, int32_t** tokens, size_t* n_out) {
    FILE* f = fopen(path, "rb");
    if (!f) return -1;
    char magic[8];
    uint32_t n = 0;
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "RKFKPC01", 8) == 0 && fread(&n, sizeof n, 1, f) == 1 &&
             n <= cap;
    int32_t* ids = NULL;
    if (ok) {
        ids = fk_malloc(((size_t)n + 1) * sizeof(int32_t));
        char extra;
        ok = fread(ids, sizeof(int32_t), n, f) == n && fread(&extra, 1, 1, f) == 0;
    }
    fclose(f);
    if (!ok) {
        fk_free(ids);
        return -2;
    }
    *tokens = ids;
    *n_out = n;
    return 0;
}

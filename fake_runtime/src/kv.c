/* kv.c: each batch's KV cache (positions with their ids and bytes, system-prompt length, the
 * context-window shift) and prompt cache files. Version 1 ("RKFKPC01", a uint32 count, then
 * int32 ids) is still read; version 2 ("RKFKPC02", a uint32 count, int32 ids, uint32 byte
 * lengths, then the bytes) also keeps what text each position stands for. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "batch.h"

#define PCACHE_MAX_TEXT (256u << 20) /* refuse prompt cache files claiming more text */

static void kv_truncate(kv_state* kv, size_t n) {
    kv->n = n;
    kv->text.len = kv->off[n];
    kv->text.data[kv->text.len] = '\0';
}

void kv_clear(fake_handle* h, int keep_system_prompt) {
    for (int b = 0; b < h->n_batch; b++) {
        kv_state* kv = &h->kv[b];
        if (keep_system_prompt) {
            if (kv->n > kv->sys_len) kv_truncate(kv, kv->sys_len);
        } else {
            kv_truncate(kv, 0);
            kv->sys_len = 0;
        }
    }
}

void kv_remove(kv_state* kv, size_t s, size_t e) {
    size_t from = kv->off[s], to = kv->off[e], cut = to - from;
    memmove(kv->tokens + s, kv->tokens + e, (kv->n - e) * sizeof(int32_t));
    memmove(kv->text.data + from, kv->text.data + to, kv->text.len - to + 1); /* with the NUL */
    for (size_t i = e; i <= kv->n; i++) kv->off[i - (e - s)] = kv->off[i] - cut;
    kv->n -= e - s;
    kv->text.len -= cut;
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
    kv_remove(kv, keep, keep + drop);
    if (kv->sys_len > keep) kv->sys_len = keep;
    atomic_fetch_add(&g_counters.kv_shifts, 1);
    return 1;
}

void kv_push(kv_state* kv, const int32_t* ids, size_t n, const char* text, const size_t* ends) {
    if (n == 0) return;
    memcpy(kv->tokens + kv->n, ids, n * sizeof(int32_t));
    size_t base = kv->text.len;
    sb_put(&kv->text, text, ends[n - 1]);
    for (size_t k = 0; k < n; k++) kv->off[kv->n + k + 1] = base + ends[k];
    kv->n += n;
}

int save_prompt_cache(const char* path, const kv_state* kv, char* err, size_t errcap) {
    FILE* f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errcap, "cannot write prompt cache %s: %s", path, strerror(errno));
        return -1;
    }
    uint32_t n = (uint32_t)kv->n;
    int ok = fwrite("RKFKPC02", 1, 8, f) == 8 && fwrite(&n, sizeof n, 1, f) == 1 &&
             fwrite(kv->tokens, sizeof(int32_t), kv->n, f) == kv->n;
    for (size_t i = 0; ok && i < kv->n; i++) {
        uint32_t len = (uint32_t)(kv->off[i + 1] - kv->off[i]);
        ok = fwrite(&len, sizeof len, 1, f) == 1;
    }
    ok = ok && fwrite(kv->text.data, 1, kv->text.len, f) == kv->text.len;
    ok = (fclose(f) == 0) && ok;
    if (!ok) snprintf(err, errcap, "cannot write prompt cache %s", path);
    return ok ? 0 : -1;
}

void pcache_free(pcache_t* pc) {
    fk_free(pc->ids);
    fk_free(pc->off);
    fk_free(pc->text);
    memset(pc, 0, sizeof *pc);
}

/* Version 2's byte lengths and text, after the ids. */
static int read_text(FILE* f, pcache_t* pc) {
    pc->off = fk_malloc((pc->n + 1) * sizeof(size_t));
    pc->off[0] = 0;
    for (size_t i = 0; i < pc->n; i++) {
        uint32_t len;
        if (fread(&len, sizeof len, 1, f) != 1 || len > PCACHE_MAX_TEXT - pc->off[i]) return 0;
        pc->off[i + 1] = pc->off[i] + len;
    }
    pc->text = fk_malloc(pc->off[pc->n] + 1);
    return fread(pc->text, 1, pc->off[pc->n], f) == pc->off[pc->n];
}

int prompt_cache_read(const char* path, size_t cap, pcache_t* out) {
    FILE* f = fopen(path, "rb");
    if (!f) return -1;
    char magic[8];
    uint32_t n = 0;
    pcache_t pc;
    memset(&pc, 0, sizeof pc);
    int ok = fread(magic, 1, 8, f) == 8 && fread(&n, sizeof n, 1, f) == 1 && n <= cap;
    int v2 = ok && memcmp(magic, "RKFKPC02", 8) == 0;
    ok = ok && (v2 || memcmp(magic, "RKFKPC01", 8) == 0);
    if (ok) {
        pc.n = n;
        pc.ids = fk_malloc(((size_t)n + 1) * sizeof(int32_t));
        char extra;
        ok = fread(pc.ids, sizeof(int32_t), n, f) == n && (!v2 || read_text(f, &pc)) && fread(&extra, 1, 1, f) == 0;
    }
    fclose(f);
    if (!ok) {
        pcache_free(&pc);
        return -2;
    }
    *out = pc;
    return 0;
}

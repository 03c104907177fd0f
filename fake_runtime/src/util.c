/* util.c: see util.h. */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A header in front of each block records its size; 16 bytes keeps the payload aligned. */
typedef union {
    size_t size;
    max_align_t align;
} fk_hdr;

static atomic_llong g_blocks;
static atomic_llong g_bytes;

void* fk_malloc(size_t n) {
    fk_hdr* h = malloc(sizeof(fk_hdr) + (n ? n : 1));
    if (!h) {
        fk_log('E', "out of memory allocating %zu bytes", n);
        abort();
    }
    h->size = n;
    atomic_fetch_add(&g_blocks, 1);
    atomic_fetch_add(&g_bytes, (long long)n);
    return h + 1;
}

void* fk_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        fk_log('E', "allocation overflow (%zu x %zu)", count, size);
        abort();
    }
    void* p = fk_malloc(count * size);
    memset(p, 0, count * size);
    return p;
}

void fk_free(void* p) {
    if (!p) return;
    fk_hdr* h = (fk_hdr*)p - 1;
    atomic_fetch_sub(&g_blocks, 1);
    atomic_fetch_sub(&g_bytes, (long long)h->size);
    free(h);
}

void* fk_realloc(void* p, size_t n) {
    if (!p) return fk_malloc(n);
    fk_hdr* h = (fk_hdr*)p - 1;
    size_t old = h->size;
    fk_hdr* nh = realloc(h, sizeof(fk_hdr) + (n ? n : 1));
    if (!nh) {
        fk_log('E', "out of memory reallocating %zu bytes", n);
        abort();
    }
    nh->size = n;
    atomic_fetch_add(&g_bytes, (long long)n - (long long)old);
    return nh + 1;
}

char* fk_strndup(const char* s, size_t n) {
    char* d = fk_malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char* fk_strdup(const char* s) { return s ? fk_strndup(s, strlen(s)) : NULL; }

void fk_alloc_counts(int64_t* blocks, int64_t* bytes) {
    *blocks = atomic_load(&g_blocks);
    *bytes = atomic_load(&g_bytes);
}

void sb_init(sbuf* b) {
    b->cap = 64;
    b->len = 0;
    b->data = fk_malloc(b->cap);
    b->data[0] = '\0';
}

void sb_free(sbuf* b) {
    fk_free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void sb_clear(sbuf* b) {
    b->len = 0;
    b->data[0] = '\0';
}

static void sb_reserve(sbuf* b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = fk_realloc(b->data, cap);
    b->cap = cap;
}

void sb_put(sbuf* b, const char* s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void sb_puts(sbuf* b, const char* s) { sb_put(b, s, strlen(s)); }

void sb_printf(sbuf* b, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        sb_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void sb_json_string(sbuf* b, const char* s, size_t n) {
    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (c < 0x20) sb_printf(b, "\\u%04x", c);
            else sb_put(b, (const char*)&s[i], 1);
        }
    }
    sb_put(b, "\"", 1);
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
    const unsigned char* p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void sleep_ms(double ms) {
    if (!(ms > 0)) return;
    long long ns = (long long)(ms * 1e6);
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000LL), .tv_nsec = (long)(ns % 1000000000LL)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

float vm_hwm_mb(void) {
    FILE* f = fopen("/proc/self/status", "r");
    if (!f) return 0.0f;
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return (float)kb / 1024.0f;
}

void fk_log(char level, const char* fmt, ...) {
    const char* quiet = getenv("RKLLM_FAKE_QUIET");
    if (quiet && quiet[0] && strcmp(quiet, "0") != 0) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%c rkllm: %s\n", level, msg);
}

int fk_log_level(void) {
    const char* v = getenv("RKLLM_LOG_LEVEL");
    return v ? atoi(v) : 0;
}

int utf8_incomplete_tail(const char* s, size_t n) {
    /* Walk back over at most 3 continuation bytes to the lead byte and compare lengths. */
    size_t i = n, cont = 0;
    while (i > 0 && cont < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        cont++;
    }
    if (i == 0) return cont > 0;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need;
    if (lead < 0x80) return cont > 0;
    else if ((lead & 0xE0) == 0xC0) need = 1;
    else if ((lead & 0xF0) == 0xE0) need = 2;
    else if ((lead & 0xF8) == 0xF0) need = 3;
    else return 0;
    return cont < need;
}

/* util.h: counted allocation, growable strings, hashing, clocks and logging for the fake. */
#ifndef FAKE_UTIL_H
#define FAKE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define FK_API __attribute__((visibility("default")))
#define FK_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Every block the fake allocates goes through these, so live allocations can be counted. */
void* fk_malloc(size_t n);
void* fk_calloc(size_t count, size_t size);
void* fk_realloc(void* p, size_t n);
void fk_free(void* p);
char* fk_strdup(const char* s);
char* fk_strndup(const char* s, size_t n);
void fk_alloc_counts(int64_t* blocks, int64_t* bytes);

/* A growable, always NUL-terminated byte string. */
typedef struct {
    char* data;
    size_t len;
    size_t cap;
} sbuf;

void sb_init(sbuf* b);
void sb_free(sbuf* b);
void sb_clear(sbuf* b);
void sb_put(sbuf* b, const char* s, size_t n);
void sb_puts(sbuf* b, const char* s);
void sb_printf(sbuf* b, const char* fmt, ...) FK_PRINTF(2, 3);
void sb_json_string(sbuf* b, const char* s, size_t n); /* quoted, escaped */

/* 64-bit FNV-1a; pass FNV_OFFSET to start, a previous result to continue. */
#define FNV_OFFSET 0xcbf29ce484222325ULL
uint64_t fnv1a(uint64_t h, const void* data, size_t n);
uint64_t splitmix64(uint64_t* state);

double now_ms(void); /* CLOCK_MONOTONIC, milliseconds */
void sleep_ms(double ms); /* the whole time (signals resume it); nothing wakes it early */
float vm_hwm_mb(void); /* the process's peak resident set (VmHWM), in MB */

/* "X rkllm: message" on stderr, as the vendor's logger prints it; quiet with RKLLM_FAKE_QUIET=1. */
void fk_log(char level, const char* fmt, ...) FK_PRINTF(2, 3);
int fk_log_level(void); /* RKLLM_LOG_LEVEL, 0 when unset */

int utf8_incomplete_tail(const char* s, size_t n); /* 1 if s ends inside a UTF-8 character */

#endif

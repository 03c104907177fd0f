/* json.c: recursive-descent JSON parser; see json.h. */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define JSON_MAX_DEPTH 64

typedef struct {
    const char* s;
    size_t n, i;
    char* err;
    size_t errcap;
    int failed;
} parser;

static void fail(parser* p, const char* what) {
    if (!p->failed) snprintf(p->err, p->errcap, "%s at offset %zu", what, p->i);
    p->failed = 1;
}

static void skip_ws(parser* p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static void free_value(json* v) {
    if (v->type == JSON_STRING) fk_free(v->string);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (size_t k = 0; k < v->count; k++) {
            free_value(&v->items[k]);
            if (v->keys) fk_free(v->keys[k]);
        }
        fk_free(v->items);
        fk_free(v->keys);
    }
}

static int hex4(parser* p, unsigned* out) {
    if (p->i + 4 > p->n) return 0;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i + (size_t)k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    p->i += 4;
    *out = v;
    return 1;
}

static void put_utf8(sbuf* b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    sb_put(b, u, n);
}

static int parse_string(parser* p, char** out, size_t* outlen) {
    /* p->s[p->i] == '"' */
    p->i++;
    sbuf b;
    sb_init(&b);
    while (p->i < p->n) {
        unsigned char c = (unsigned char)p->s[p->i++];
        if (c == '"') {
            *out = b.data;
            *outlen = b.len;
            return 1;
        }
        if (c < 0x20) { fail(p, "control character in string"); break; }
        if (c != '\\') { sb_put(&b, (const char*)&c, 1); continue; }
        if (p->i >= p->n) break;
        char e = p->s[p->i++];
        switch (e) {
        case '"': sb_put(&b, "\"", 1); break;
        case '\\': sb_put(&b, "\\", 1); break;
        case '/': sb_put(&b, "/", 1); break;
        case 'b': sb_put(&b, "\b", 1); break;
        case 'f': sb_put(&b, "\f", 1); break;
        case 'n': sb_put(&b, "\n", 1); break;
        case 'r': sb_put(&b, "\r", 1); break;
        case 't': sb_put(&b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p, &cp)) { fail(p, "bad \\u escape"); goto out; }
            if (cp >= 0xD800 && cp < 0xDC00) {
                if (p->i + 2 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') {
                    fail(p, "unpaired surrogate"); goto out;
                }
                p->i += 2;
                if (!hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) { fail(p, "bad surrogate pair"); goto out; }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                fail(p, "unpaired surrogate"); goto out;
            }
            put_utf8(&b, cp);
            break;
        }
        default: fail(p, "bad escape"); goto out;
        }
    }
    fail(p, "unterminated string");
out:
    sb_free(&b);
    return 0;
}

static int parse_value(parser* p, json* v, int depth);

static int parse_container(parser* p, json* v, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    size_t cap = 4;
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    v->items = fk_calloc(cap, sizeof(json));
    v->keys = is_object ? fk_calloc(cap, sizeof(char*)) : NULL;
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) { p->i++; return 1; }
    for (;;) {
        if (v->count == cap) {
            cap *= 2;
            v->items = fk_realloc(v->items, cap * sizeof(json));
            memset(v->items + v->count, 0, (cap - v->count) * sizeof(json));
            if (is_object) {
                v->keys = fk_realloc(v->keys, cap * sizeof(char*));
                memset(v->keys + v->count, 0, (cap - v->count) * sizeof(char*));
            }
        }
        skip_ws(p);
        if (is_object) {
            size_t klen;
            if (p->i >= p->n || p->s[p->i] != '"') { fail(p, "expected a key"); return 0; }
            if (!parse_string(p, &v->keys[v->count], &klen)) return 0;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                fk_free(v->keys[v->count]); v->keys[v->count] = NULL;
                fail(p, "expected ':'"); return 0;
            }
            p->i++;
        }
        if (!parse_value(p, &v->items[v->count], depth + 1)) {
            /* Free the half-built child: free_value only walks complete items. */
            free_value(&v->items[v->count]);
            memset(&v->items[v->count], 0, sizeof(json));
            if (is_object) { fk_free(v->keys[v->count]); v->keys[v->count] = NULL; }
            return 0;
        }
        v->count++;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
        if (p->i < p->n && p->s[p->i] == close) { p->i++; return 1; }
        fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        return 0;
    }
}

static int parse_number(parser* p, json* v) {
    size_t start = p->i;
    if (p->s[p->i] == '-') p->i++;
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') { fail(p, "bad number"); return 0; }
    if (p->s[p->i] == '0') p->i++;
    else while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    if (p->i < p->n && p->s[p->i] == '.') {
        p->i++;
        if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') { fail(p, "bad number"); return 0; }
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') { fail(p, "bad number"); return 0; }
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    }
    char buf[64];
    size_t len = p->i - start;
    if (len >= sizeof buf) { fail(p, "number too long"); return 0; }
    memcpy(buf, p->s + start, len);
    buf[len] = '\0';
    v->type = JSON_NUMBER;
    v->number = strtod(buf, NULL);
    if (!isfinite(v->number)) { fail(p, "number out of range"); return 0; }
    return 1;
}

static int literal(parser* p, const char* word) {
    size_t n = strlen(word);
    if (p->n - p->i >= n && memcmp(p->s + p->i, word, n) == 0) { p->i += n; return 1; }
    fail(p, "unexpected character");
    return 0;
}

static int parse_value(parser* p, json* v, int depth) {
    if (depth > JSON_MAX_DEPTH) { fail(p, "nesting too deep"); return 0; }
    skip_ws(p);
    if (p->i >= p->n) { fail(p, "unexpected end"); return 0; }
    char c = p->s[p->i];
    switch (c) {
    case '{': return parse_container(p, v, depth, 1);
    case '[': return parse_container(p, v, depth, 0);
    case '"':
        if (!parse_string(p, &v->string, &v->length)) return 0;
        v->type = JSON_STRING;
        return 1;
    case 't': v->type = JSON_BOOL; v->boolean = 1; return literal(p, "true");
    case 'f': v->type = JSON_BOOL; v->boolean = 0; return literal(p, "false");
    case 'n': v->type = JSON_NULL; return literal(p, "null");
    default: return parse_number(p, v);
    }
}

json* json_parse(const char* text, size_t n, char* err, size_t errcap) {
    parser p = {text, n, 0, err, errcap, 0};
    json* v = fk_calloc(1, sizeof(json));
    if (parse_value(&p, v, 0)) {
        skip_ws(&p);
        if (p.i == p.n) return v;
        fail(&p, "trailing characters");
    }
    free_value(v);
    fk_free(v);
    return NULL;
}

void json_free(json* v) {
    if (!v) return;
    free_value(v);
    fk_free(v);
}

const json* json_get(const json* obj, const char* key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (size_t k = 0; k < obj->count; k++)
        if (strcmp(obj->keys[k], key) == 0) return &obj->items[k];
    return NULL;
}

/* json.h: a small strict JSON reader (RFC 8259) for model files and tool definitions. */
#ifndef FAKE_JSON_H
#define FAKE_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json {
    json_type type;
    int boolean;
    double number;
    char* string; /* JSON_STRING: UTF-8, NUL-terminated (may contain NULs; see length) */
    size_t length;
    size_t count;       /* JSON_ARRAY / JSON_OBJECT */
    struct json* items; /* count values */
    char** keys;        /* JSON_OBJECT: count keys */
} json;

/* Parses text[0..n); NULL on error with a message in err. Free with json_free. */
json* json_parse(const char* text, size_t n, char* err, size_t errcap);
void json_free(json* v);
const json* json_get(const json* obj, const char* key); /* NULL if absent or not an object */

#endif

/* textgen.h: the fake's tokenizer (text <-> token pieces) and its deterministic text generator. */
#ifndef FAKE_TEXTGEN_H
#define FAKE_TEXTGEN_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Length in bytes of the token that starts at s[pos] (s has n bytes, pos < n). */
size_t tok_next(const char* s, size_t n, size_t pos);
/* Number of tokens in s[0..n). */
size_t tok_count(const char* s, size_t n);
/* Token id of the piece s[0..n) for a vocabulary of `vocab` entries. */
int32_t tok_id(const char* s, size_t n, int vocab);
/* Appends ids of every token of s[0..n) to *ids (grown with fk_realloc); returns the new count. */
size_t tok_ids(const char* s, size_t n, int vocab, int32_t** ids, size_t count);

/* Appends one readable sentence (with a leading space unless out is empty). */
void gen_sentence(sbuf* out, uint64_t* rng);

#endif

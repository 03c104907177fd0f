/* model.c: reads and validates fake model files; parses fault specifications. */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "util.h"

#define MODEL_FILE_MAX (1 << 20) /* a model description is small; a real .rkllm is not read whole */

void faults_init(fake_faults* f) {
    memset(f, 0, sizeof *f);
    f->error_after = f->hang_after = f->crash_after = -1;
}

static int parse_long(const char* v, long* out) {
    if (!v || !*v) return 0;
    char* end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end) return 0;
    *out = x;
    return 1;
}

/* A non-negative, finite number of milliseconds (fractions allowed). */
static int parse_ms(const char* v, double* out) {
    if (!v || !*v) return 0;
    char* end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || !isfinite(x) || x < 0) return 0;
    *out = x;
    return 1;
}

int faults_parse(fake_faults* f, const char* text, char* err, size_t errcap) {
    char buf[512];
    if (strlen(text) >= sizeof buf) {
        snprintf(err, errcap, "fault text too long");
        return -1;
    }
    strcpy(buf, text);
    char* save = NULL;
    for (char* item = strtok_r(buf, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        char* val = strchr(item, '=');
        if (val) *val++ = '\0';
        long x = 0;
        double ms = 0;
        int have = val != NULL;
        int is_ms = strcmp(item, "slow_prefill_ms") == 0 || strcmp(item, "start_delay_ms") == 0;
        if (have && !(is_ms ? parse_ms(val, &ms) : parse_long(val, &x))) {
            snprintf(err, errcap, "fault '%s': '%s' is not %s", item, val,
                     is_ms ? "a number of milliseconds >= 0" : "an integer");
            return -1;
        }
        if (strcmp(item, "init_fail") == 0) f->init_fail = have ? (int)x : -1;
        else if (strcmp(item, "run_fail") == 0) f->run_fail = have ? (int)x : -1;
        else if (strcmp(item, "error_after") == 0 && have && x >= 0) f->error_after = x;
        else if (strcmp(item, "hang_after") == 0 && have && x >= 0) f->hang_after = x;
        else if (strcmp(item, "crash_after") == 0 && have && x >= 0) f->crash_after = x;
        else if (strcmp(item, "slow_prefill_ms") == 0 && have) f->slow_prefill_ms = ms;
        else if (strcmp(item, "start_delay_ms") == 0 && have) f->start_delay_ms = ms;
        else {
            snprintf(err, errcap,
                     "unknown or incomplete fault '%s' (known: init_fail[=CODE], run_fail[=CODE], "
                     "error_after=N, hang_after=N, crash_after=N, slow_prefill_ms=MS, start_delay_ms=MS)",
                     item);
            return -1;
        }
        if ((strcmp(item, "init_fail") == 0 || strcmp(item, "run_fail") == 0) && have && x == 0) {
            snprintf(err, errcap, "fault '%s' needs a non-zero code", item);
            return -1;
        }
    }
    return 0;
}

static int get_number(const json* root, const char* key, double lo, double hi, int integer,
                      double* out, char* err, size_t errcap) {
    const json* v = json_get(root, key);
    if (!v) return 0;
    if (v->type != JSON_NUMBER || v->number < lo || v->number > hi ||
        (integer && v->number != floor(v->number))) {
        snprintf(err, errcap, "model file: '%s' must be %s in [%g, %g]", key,
                 integer ? "an integer" : "a number", lo, hi);
        return -1;
    }
    *out = v->number;
    return 0;
}

static int get_bool(const json* root, const char* key, int* out, char* err, size_t errcap) {
    const json* v = json_get(root, key);
    if (!v) return 0;
    if (v->type != JSON_BOOL) {
        snprintf(err, errcap, "model file: '%s' must be true or false", key);
        return -1;
    }
    *out = v->boolean;
    return 0;
}

static const char* const known_keys[] = {
    "format", "name", "vocab_size", "hidden_size", "decode_ms", "prefill_ms", "thinking",
    "internal_tokenizer", "internal_embedding", "natural_end", "num_layers", "num_kv_heads",
    "head_dim", "script", "faults", "waiting_text", NULL};

static int fill_model(fake_model* m, const json* root, char* err, size_t errcap) {
    if (root->type != JSON_OBJECT) {
        snprintf(err, errcap, "model file: top level must be an object");
        return -1;
    }
    for (size_t k = 0; k < root->count; k++) {
        int known = 0;
        for (const char* const* kk = known_keys; *kk; kk++) known |= strcmp(*kk, root->keys[k]) == 0;
        if (!known) {
            snprintf(err, errcap, "model file: unknown key '%s'", root->keys[k]);
            return -1;
        }
    }
    const json* fmt = json_get(root, "format");
    if (!fmt || fmt->type != JSON_STRING || strcmp(fmt->string, "rkllm-fake/1") != 0) {
        snprintf(err, errcap, "model file: \"format\" must be \"rkllm-fake/1\"");
        return -1;
    }
    const json* name = json_get(root, "name");
    if (name && name->type != JSON_STRING) {
        snprintf(err, errcap, "model file: 'name' must be a string");
        return -1;
    }
    m->name = fk_strdup(name ? name->string : "fake-model");
    double d;
    d = m->vocab_size;
    if (get_number(root, "vocab_size", 64, 1 << 22, 1, &d, err, errcap)) return -1;
    m->vocab_size = (int)d;
    d = m->hidden_size;
    if (get_number(root, "hidden_size", 1, 1 << 16, 1, &d, err, errcap)) return -1;
    m->hidden_size = (int)d;
    if (get_number(root, "decode_ms", 0, 60000, 0, &m->decode_ms, err, errcap)) return -1;
    if (get_number(root, "prefill_ms", 0, 60000, 0, &m->prefill_ms, err, errcap)) return -1;
    d = m->num_layers;
    if (get_number(root, "num_layers", 1, 1024, 1, &d, err, errcap)) return -1;
    m->num_layers = (int)d;
    d = m->num_kv_heads;
    if (get_number(root, "num_kv_heads", 1, 1024, 1, &d, err, errcap)) return -1;
    m->num_kv_heads = (int)d;
    d = m->head_dim;
    if (get_number(root, "head_dim", 1, 4096, 1, &d, err, errcap)) return -1;
    m->head_dim = (int)d;
    if (get_bool(root, "thinking", &m->thinking, err, errcap)) return -1;
    if (get_bool(root, "internal_tokenizer", &m->internal_tokenizer, err, errcap)) return -1;
    if (get_bool(root, "internal_embedding", &m->internal_embedding, err, errcap)) return -1;
    if (get_bool(root, "natural_end", &m->natural_end, err, errcap)) return -1;
    const json* waiting = json_get(root, "waiting_text");
    if (waiting) {
        if (waiting->type == JSON_STRING && strcmp(waiting->string, "held") == 0) {
            m->waiting_text = WAITING_TEXT_HELD;
        } else if (waiting->type == JSON_STRING && strcmp(waiting->string, "partial") == 0) {
            m->waiting_text = WAITING_TEXT_PARTIAL;
        } else {
            snprintf(err, errcap, "model file: 'waiting_text' must be \"held\" or \"partial\"");
            return -1;
        }
    }

    const json* script = json_get(root, "script");
    if (script) {
        if (script->type != JSON_ARRAY) {
            snprintf(err, errcap, "model file: 'script' must be an array of {\"match\", \"reply\"}");
            return -1;
        }
        m->script = fk_calloc(script->count ? script->count : 1, sizeof(script_rule));
        for (size_t k = 0; k < script->count; k++) {
            const json* match = json_get(&script->items[k], "match");
            const json* reply = json_get(&script->items[k], "reply");
            if (!match || match->type != JSON_STRING || !reply || reply->type != JSON_STRING ||
                script->items[k].count != 2) {
                snprintf(err, errcap,
                         "model file: script rule %zu must be {\"match\": string, \"reply\": string}", k);
                return -1;
            }
            m->script[k].match = fk_strdup(match->string);
            m->script[k].reply = fk_strdup(reply->string);
            m->n_script = k + 1;
        }
    }
    const json* faults = json_get(root, "faults");
    if (faults) {
        if (faults->type != JSON_STRING) {
            snprintf(err, errcap, "model file: 'faults' must be a string like \"error_after=5\"");
            return -1;
        }
        if (faults_parse(&m->faults, faults->string, err, errcap)) return -1;
    }
    return 0;
}

int model_load(fake_model* m, const char* path, char* err, size_t errcap) {
    memset(m, 0, sizeof *m);
    m->vocab_size = 151936;
    m->hidden_size = 1536;
    m->decode_ms = 60;
    m->prefill_ms = 3;
    m->internal_tokenizer = 1;
    m->internal_embedding = 1;
    m->natural_end = 1;
    m->waiting_text = WAITING_TEXT_HELD;
    m->num_layers = 28;
    m->num_kv_heads = 2;
    m->head_dim = 128;
    faults_init(&m->faults);

    FILE* f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "failed to open model file %s: %s", path, strerror(errno));
        return -1;
    }
    char* text = fk_malloc(MODEL_FILE_MAX + 1);
    size_t n = fread(text, 1, MODEL_FILE_MAX + 1, f);
    fclose(f);
    size_t lead = 0;
    while (lead < n && (text[lead] == ' ' || text[lead] == '\n' || text[lead] == '\r' || text[lead] == '\t'))
        lead++;
    if (n > MODEL_FILE_MAX || lead == n || text[lead] != '{') {
        /* What the vendor's runtime says of a file that is not one of its models. */
        snprintf(err, errcap, "invalid rknn llm model magic (%s is not an rkllm-fake/1 model file)", path);
        fk_free(text);
        return -1;
    }
    char perr[160];
    json* root = json_parse(text, n, perr, sizeof perr);
    fk_free(text);
    if (!root) {
        snprintf(err, errcap, "model file %s: bad JSON: %s", path, perr);
        return -1;
    }
    int rc = fill_model(m, root, err, errcap);
    json_free(root);
    if (rc) model_free(m);
    return rc;
}

void model_free(fake_model* m) {
    fk_free(m->name);
    for (size_t k = 0; k < m->n_script; k++) {
        fk_free(m->script[k].match);
        fk_free(m->script[k].reply);
    }
    fk_free(m->script);
    memset(m, 0, sizeof *m);
}

/* reply.c: what a batch answers: think block, array tags, then a scripted reply, a tool
 * result echo, tool calls built from the tools' JSON schemas, or generated sentences. */
#include <math.h>
#include <string.h>

#include "batch.h"
#include "textgen.h"

static void write_json_value(sbuf* out, const json* v) {
    switch (v->type) {
    case JSON_NULL: sb_puts(out, "null"); break;
    case JSON_BOOL: sb_puts(out, v->boolean ? "true" : "false"); break;
    case JSON_NUMBER:
        if (v->number == floor(v->number) && fabs(v->number) < 1e15) sb_printf(out, "%.0f", v->number);
        else sb_printf(out, "%.17g", v->number);
        break;
    case JSON_STRING: sb_json_string(out, v->string, v->length); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        sb_puts(out, v->type == JSON_ARRAY ? "[" : "{");
        for (size_t k = 0; k < v->count; k++) {
            if (k) sb_puts(out, ", ");
            if (v->type == JSON_OBJECT) {
                sb_json_string(out, v->keys[k], strlen(v->keys[k]));
                sb_puts(out, ": ");
            }
            write_json_value(out, &v->items[k]);
        }
        sb_puts(out, v->type == JSON_ARRAY ? "]" : "}");
        break;
    }
}

static const json* tool_function(const json* tool) {
    const json* fn = json_get(tool, "function");
    return fn ? fn : tool;
}

/* A deterministic value for one required property, from its JSON schema. */
static void schema_value(sbuf* out, const char* prop, const json* schema) {
    const json* def = json_get(schema, "default");
    const json* en = json_get(schema, "enum");
    const json* type = json_get(schema, "type");
    const json* min = json_get(schema, "minimum");
    const char* t = type && type->type == JSON_STRING ? type->string : "";
    if (def) write_json_value(out, def);
    else if (en && en->type == JSON_ARRAY && en->count) write_json_value(out, &en->items[0]);
    else if (strcmp(t, "string") == 0) sb_printf(out, "\"fake-%s\"", prop);
    else if (strcmp(t, "integer") == 0) sb_printf(out, "%.0f", min && min->type == JSON_NUMBER ? ceil(min->number) : 1.0);
    else if (strcmp(t, "number") == 0) {
        if (min && min->type == JSON_NUMBER) write_json_value(out, min);
        else sb_puts(out, "0.5");
    } else if (strcmp(t, "boolean") == 0) sb_puts(out, "true");
    else if (strcmp(t, "array") == 0) sb_puts(out, "[]");
    else if (strcmp(t, "object") == 0) sb_puts(out, "{}");
    else sb_puts(out, "null");
}

/* One <tool_call> block for tool `fn` if `text` names it; counts it in *calls. */
static void tool_call_if_named(sbuf* out, const json* fn, const char* text, int* calls) {
    const json* name = json_get(fn, "name");
    if (!name || name->type != JSON_STRING || !strstr(text, name->string)) return;
    if ((*calls)++) sb_puts(out, "\n");
    sb_puts(out, "<tool_call>\n{\"name\": ");
    sb_json_string(out, name->string, name->length);
    sb_puts(out, ", \"arguments\": {");
    const json* params = json_get(fn, "parameters");
    const json* props = json_get(params, "properties");
    const json* req = json_get(params, "required");
    size_t written = 0;
    for (size_t r = 0; req && req->type == JSON_ARRAY && r < req->count; r++) {
        if (req->items[r].type != JSON_STRING) continue;
        const char* prop = req->items[r].string;
        if (written++) sb_puts(out, ", ");
        sb_json_string(out, prop, strlen(prop));
        sb_puts(out, ": ");
        schema_value(out, prop, json_get(props, prop));
    }
    sb_puts(out, "}}\n</tool_call>");
}

static int tool_calls_reply(fake_handle* h, sbuf* out, const char* text) {
    int calls = 0;
    for (size_t k = 0; h->tools && k < h->tools->count; k++)
        tool_call_if_named(out, tool_function(&h->tools->items[k]), text, &calls);
    return calls;
}

/* The last occurrence of needle in s[0..n), or NULL. */
static const char* last_of(const char* s, size_t n, const char* needle) {
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (memcmp(s + i, needle, k) == 0) return s + i;
    return NULL;
}

/* [A22] Tools in the prompt text: when none were set through rkllm_set_function_tools, the
 * tools are the lines of every <tools>...</tools> block of the text the model sees (the KV
 * cache's text, then this input as templated) that parse as a JSON object with a function
 * name, in order (a server rendering Qwen's / Hermes' template writes one per line). The
 * text naming them is the latest user turn: after the last "<|im_start|>user" up to its
 * "<|im_end|>" (a turn holding a <tool_response> names none: it is a tool's result); without
 * that marker, the input text after its last "</tools>" (all of it without a block). */
static int prompt_tools_reply(fake_handle* h, int b, const batch_run* br, sbuf* out) {
    sbuf seen, user;
    sb_init(&seen);
    sb_init(&user);
    sb_put(&seen, h->kv[b].text.data, h->kv[b].text.len);
    sb_put(&seen, br->templated.data, br->templated.len);
    static const char turn[] = "<|im_start|>user";
    const char* at = last_of(seen.data, seen.len, turn);
    if (at) {
        at += sizeof turn - 1;
        if (*at == '\n') at++;
        const char* end = strstr(at, "<|im_end|>");
        sb_put(&user, at, end ? (size_t)(end - at) : strlen(at));
        if (strstr(user.data, "<tool_response>")) sb_clear(&user);
    } else {
        const char* after = last_of(br->text, strlen(br->text), "</tools>");
        sb_puts(&user, after ? after + strlen("</tools>") : br->text);
    }
    int calls = 0;
    for (const char* p = user.len ? strstr(seen.data, "<tools>") : NULL; p; p = strstr(p, "<tools>")) {
        p += strlen("<tools>");
        const char* close = strstr(p, "</tools>");
        if (!close) break;
        for (const char* line = p; line < close;) {
            const char* nl = memchr(line, '\n', (size_t)(close - line));
            const char* stop = nl ? nl : close;
            char err[128];
            json* tool = stop > line ? json_parse(line, (size_t)(stop - line), err, sizeof err) : NULL;
            if (tool && tool->type == JSON_OBJECT) tool_call_if_named(out, tool_function(tool), user.data, &calls);
            json_free(tool);
            line = stop + (nl ? 1 : 0);
        }
        p = close;
    }
    sb_free(&seen);
    sb_free(&user);
    return calls;
}

static size_t rstrip(const char* s, size_t n) {
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    return n;
}

static int ends_with(const char* s, size_t n, const char* suffix) {
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

enum { THINK_NONE, THINK_BLOCK, THINK_CONTINUE };

/* [A9] Whether the reply thinks. The model's own template follows enable_thinking (Qwen3's
 * template closes an empty think block when it is off). After rkllm_set_chat_template a
 * thinking model follows the end of the prompt text, as it would when the server renders
 * the template itself: an empty closed think block (Qwen3, enable_thinking=False) means no
 * thinking; an open <think> (DeepSeek-R1 style) means the reply continues inside it;
 * anything else thinks from a fresh <think>. Trailing whitespace is ignored. */
static int think_mode(const fake_handle* h, const batch_run* br, const RKLLMInput* in) {
    if (!h->model.thinking) return THINK_NONE;
    if (!h->custom_template) return in->enable_thinking ? THINK_BLOCK : THINK_NONE;
    const char* t = br->templated.data;
    size_t n = rstrip(t, br->templated.len);
    if (ends_with(t, n, "</think>") && ends_with(t, rstrip(t, n - 8), "<think>")) return THINK_NONE;
    if (ends_with(t, n, "<think>")) return THINK_CONTINUE;
    return THINK_BLOCK;
}

void choose_reply(fake_handle* h, int b, batch_run* br, const RKLLMInput* in) {
    int mode = think_mode(h, br, in);
    if (mode != THINK_NONE) {
        const sbuf* t = &br->templated;
        if (mode == THINK_BLOCK) sb_puts(&br->reply, "<think>\n");
        else if (t->data[t->len - 1] != '\n') sb_puts(&br->reply, "\n"); /* the prompt ended "<think>" */
        sbuf think;
        sb_init(&think);
        uint64_t rng = br->rng ^ 0x7468696e6bULL;
        int n = 1 + (int)(splitmix64(&rng) % 2);
        for (int k = 0; k < n; k++) gen_sentence(&think, &rng);
        sb_put(&br->reply, think.data, think.len);
        sb_free(&think);
        sb_puts(&br->reply, "\n</think>\n\n");
    }
    sb_put(&br->reply, br->tags.data, br->tags.len);
    for (size_t k = 0; k < h->model.n_script; k++) {
        if (strstr(br->text, h->model.script[k].match)) {
            sb_puts(&br->reply, h->model.script[k].reply);
            return;
        }
    }
    if (strcmp(br->role, "tool") == 0) {
        sb_printf(&br->reply, "The tool returned: %s", br->text);
        return;
    }
    if (br->text[0] && tool_calls_reply(h, &br->reply, br->text)) return;
    if (!h->tools && br->templated.len && prompt_tools_reply(h, b, br, &br->reply)) return;
    sbuf answer;
    sb_init(&answer);
    int n = 1 + (int)(splitmix64(&br->rng) % 3);
    for (int k = 0; k < n; k++) gen_sentence(&answer, &br->rng);
    sb_put(&br->reply, answer.data, answer.len);
    sb_free(&answer);
}

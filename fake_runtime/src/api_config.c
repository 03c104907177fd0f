/* api_config.c: the configuration calls (LoRA, prompt cache, KV cache, chat template,
 * function tools, cross attention), each refused while the handle runs, and the fake-only
 * rkllm_fake_* extras. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "fake.h"

FK_API int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter) {
    fake_handle* h = acquire_idle(handle, "rkllm_load_lora");
    if (!h) return -1;
    if (!lora_adapter || !lora_adapter->lora_adapter_path || !lora_adapter->lora_adapter_name ||
        !lora_adapter->lora_adapter_name[0]) {
        fk_log('E', "rkllm_load_lora: adapter path and a non-empty name are required");
        return done_idle(h, -1);
    }
    FILE* f = fopen(lora_adapter->lora_adapter_path, "rb");
    if (!f) {
        fk_log('E', "rkllm_load_lora: cannot open %s", lora_adapter->lora_adapter_path);
        return done_idle(h, -1);
    }
    fclose(f);
    lora_entry* e = NULL;
    for (size_t k = 0; k < h->n_loras; k++)
        if (strcmp(h->loras[k].name, lora_adapter->lora_adapter_name) == 0) e = &h->loras[k];
    if (!e) {
        h->loras = fk_realloc(h->loras, (h->n_loras + 1) * sizeof(lora_entry));
        e = &h->loras[h->n_loras++];
        e->name = fk_strdup(lora_adapter->lora_adapter_name);
    } else {
        fk_free(e->path);
    }
    e->path = fk_strdup(lora_adapter->lora_adapter_path);
    e->scale = lora_adapter->scale;
    return done_idle(h, 0);
}

FK_API int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path) {
    fake_handle* h = acquire_idle(handle, "rkllm_load_prompt_cache");
    if (!h) return -1;
    pcache_t pc;
    memset(&pc, 0, sizeof pc);
    int rc = prompt_cache_path ? prompt_cache_read(prompt_cache_path, (size_t)h->max_context_len, &pc) : -1;
    if (rc == -1) {
        fk_log('E', "rkllm_load_prompt_cache: cannot open %s", prompt_cache_path ? prompt_cache_path : "(null)");
        return done_idle(h, -1);
    }
    if (rc) {
        fk_log('E', "rkllm_load_prompt_cache: %s is not a prompt cache of this model", prompt_cache_path);
        return done_idle(h, -1);
    }
    pcache_free(&h->pcache);
    h->pcache = pc;
    h->pcache_loaded = 1;
    return done_idle(h, 0);
}

FK_API int rkllm_release_prompt_cache(LLMHandle handle) {
    fake_handle* h = acquire_idle(handle, "rkllm_release_prompt_cache");
    if (!h) return -1;
    pcache_free(&h->pcache);
    h->pcache_loaded = 0;
    return done_idle(h, 0);
}

FK_API int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int* start_pos, int* end_pos) {
    fake_handle* h = acquire_idle(handle, "rkllm_clear_kv_cache");
    if (!h) return -1;
    if (!start_pos && !end_pos) {
        kv_clear(h, keep_system_prompt);
        return done_idle(h, 0);
    }
    if (!start_pos || !end_pos) {
        fk_log('E', "rkllm_clear_kv_cache: start_pos and end_pos go together");
        return done_idle(h, -1);
    }
    if (!h->paused || h->paused_keep_history != 0) {
        fk_log('E', "rkllm_clear_kv_cache: a range needs a paused single-turn run (keep_history = 0)");
        return done_idle(h, -1);
    }
    for (int b = 0; b < h->n_batch; b++) {
        if (start_pos[b] < 0 || start_pos[b] > end_pos[b] || (size_t)end_pos[b] > h->kv[b].n) {
            fk_log('E', "rkllm_clear_kv_cache: range [%d, %d) of batch %d is outside [0, %zu]", start_pos[b],
                   end_pos[b], b, h->kv[b].n);
            return done_idle(h, -1);
        }
    }
    for (int b = 0; b < h->n_batch; b++) {
        kv_state* kv = &h->kv[b];
        size_t s = (size_t)start_pos[b], e = (size_t)end_pos[b];
        kv_remove(kv, s, e);
        if (kv->sys_len > s) kv->sys_len = s + (kv->sys_len > e ? kv->sys_len - e : 0);
    }
    return done_idle(h, 0);
}

FK_API int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes) {
    fake_handle* h = acquire_idle(handle, "rkllm_get_kv_cache_size");
    if (!h) return -1;
    if (!cache_sizes) return done_idle(h, -1);
    for (int b = 0; b < h->n_batch; b++) cache_sizes[b] = (int)h->kv[b].n;
    return done_idle(h, 0);
}

FK_API int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt, const char* prompt_prefix,
                                   const char* prompt_postfix) {
    fake_handle* h = acquire_idle(handle, "rkllm_set_chat_template");
    if (!h) return -1;
    if (!system_prompt || !prompt_prefix || !prompt_postfix) {
        fk_log('E', "rkllm_set_chat_template: system_prompt, prompt_prefix and prompt_postfix are required");
        return done_idle(h, -1);
    }
    fk_free(h->tpl_system);
    fk_free(h->tpl_prefix);
    fk_free(h->tpl_postfix);
    h->tpl_system = fk_strdup(system_prompt);
    h->tpl_prefix = fk_strdup(prompt_prefix);
    h->tpl_postfix = fk_strdup(prompt_postfix);
    h->custom_template = 1;
    return done_idle(h, 0);
}

/* OpenAI tools format: [{"type": "function", "function": {"name": ..., "parameters": {...}}}]
 * (a bare {"name": ...} function object is accepted too). */
static int valid_tools(const json* tools, char* err, size_t errcap) {
    if (tools->type != JSON_ARRAY) {
        snprintf(err, errcap, "tools must be a JSON array");
        return 0;
    }
    for (size_t k = 0; k < tools->count; k++) {
        const json* fn = json_get(&tools->items[k], "function");
        if (!fn) fn = &tools->items[k];
        const json* name = json_get(fn, "name");
        if (!name || name->type != JSON_STRING || name->length == 0) {
            snprintf(err, errcap, "tool %zu has no function name", k);
            return 0;
        }
    }
    return 1;
}

FK_API int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt, const char* tools,
                                    const char* tool_response_str) {
    fake_handle* h = acquire_idle(handle, "rkllm_set_function_tools");
    if (!h) return -1;
    char err[160] = "";
    json* parsed = tools ? json_parse(tools, strlen(tools), err, sizeof err) : NULL;
    if (!tools) snprintf(err, sizeof err, "tools is required");
    if (!parsed || !valid_tools(parsed, err, sizeof err)) {
        fk_log('E', "rkllm_set_function_tools: %s", err);
        json_free(parsed);
        return done_idle(h, -1);
    }
    json_free(h->tools);
    fk_free(h->tools_json);
    fk_free(h->tools_system);
    fk_free(h->tool_response);
    h->tools = parsed->count ? parsed : NULL;
    if (!parsed->count) json_free(parsed);
    h->tools_json = fk_strdup(tools);
    h->tools_system = fk_strdup(system_prompt ? system_prompt : "");
    h->tool_response = fk_strdup(tool_response_str && tool_response_str[0] ? tool_response_str : "tool_response");
    return done_idle(h, 0);
}

FK_API int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam* p) {
    fake_handle* h = acquire_idle(handle, "rkllm_set_cross_attn_params");
    if (!h) return -1;
    if (!h->use_cross_attn) {
        fk_log('E', "rkllm_set_cross_attn_params: the handle was not initialised with use_cross_attn");
        return done_idle(h, -1);
    }
    if (!p) {
        fk_log('E', "rkllm_set_cross_attn_params: params are required");
        return done_idle(h, -1);
    }
    int all_null = !p->encoder_k_cache && !p->encoder_v_cache && !p->encoder_mask && !p->encoder_pos;
    if (p->num_tokens == 0 && all_null) { /* clears the cross-attention inputs */
        h->cross_set = 0;
        return done_idle(h, 0);
    }
    if (p->num_tokens <= 0 || !p->encoder_k_cache || !p->encoder_v_cache || !p->encoder_mask || !p->encoder_pos) {
        fk_log('E', "rkllm_set_cross_attn_params: num_tokens > 0 and all four arrays are required");
        return done_idle(h, -1);
    }
    h->cross = *p;
    h->cross_set = 1;
    return done_idle(h, 0);
}

/* ---- fake-only extras ----------------------------------------------------------------- */

FK_API void rkllm_fake_stats(RKLLMFakeStats* out) {
    if (!out) return;
    fk_alloc_counts(&out->live_allocations, &out->live_bytes);
    out->live_handles = atomic_load(&g_counters.live_handles);
    out->runs_started = atomic_load(&g_counters.runs_started);
    out->runs_finished = atomic_load(&g_counters.runs_finished);
    out->callbacks = atomic_load(&g_counters.callbacks);
    out->aborts = atomic_load(&g_counters.aborts);
    out->buffer_releases = atomic_load(&g_counters.buffer_releases);
    out->kv_shifts = atomic_load(&g_counters.kv_shifts);
    out->tokenizer_calls = atomic_load(&g_counters.tokenizer_calls);
    out->embed_calls = atomic_load(&g_counters.embed_calls);
}

FK_API const char* rkllm_fake_version(void) { return FK_VERSION; }

FK_API int rkllm_fake_last_input(LLMHandle handle, char* buf, size_t cap) {
    fake_handle* h = acquire(handle);
    if (!h) return -1;
    pthread_mutex_lock(&h->mu);
    int rc = -1;
    if (h->has_last_input) {
        rc = (int)h->last_input.len;
        if (buf && cap) {
            size_t n = h->last_input.len < cap - 1 ? h->last_input.len : cap - 1;
            memcpy(buf, h->last_input.data, n);
            buf[n] = '\0';
        }
    }
    pthread_mutex_unlock(&h->mu);
    release(h);
    return rc;
}

FK_API int rkllm_fake_kv_text(LLMHandle handle, int batch, char* buf, size_t cap) {
    fake_handle* h = acquire_idle(handle, "rkllm_fake_kv_text");
    if (!h) return -1;
    if (batch < 0 || batch >= h->n_batch) {
        fk_log('E', "rkllm_fake_kv_text: batch %d is outside [0, %d)", batch, h->n_batch);
        return done_idle(h, -1);
    }
    const sbuf* t = &h->kv[batch].text;
    if (buf && cap) {
        size_t n = t->len < cap - 1 ? t->len : cap - 1;
        memcpy(buf, t->data, n);
        buf[n] = '\0';
    }
    return done_idle(h, (int)t->len);
}

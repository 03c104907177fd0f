/* api.c: the 15 public functions of librkllmrt and the rkllm_fake_* extras: handle
 * registry, lifetime, the per-handle worker thread, and argument validation. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"

/* The banner the vendor prints at init; kept whole in .rodata for version detection. */
static const char fk_banner[] = "rkllm-runtime version: " FK_VERSION;

fake_counters g_counters;

/* ---- handle registry: a handle is valid only while listed here ------------------------
 * Callers hold an opaque id, not the struct's address: an address can be reused by the
 * allocator after destroy, and a stale handle must then fail, not reach a new handle. */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static fake_handle** g_handles;
static size_t g_n_handles, g_cap_handles;
static uintptr_t g_next_id = 0x52000000u;

static fake_handle* acquire(LLMHandle handle) {
    fake_handle* found = NULL;
    if (!handle) return NULL;
    pthread_mutex_lock(&g_lock);
    for (size_t k = 0; k < g_n_handles; k++) {
        if (g_handles[k]->id == (uintptr_t)handle) {
            found = g_handles[k];
            found->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

static void release(fake_handle* h) {
    pthread_mutex_lock(&g_lock);
    if (--h->refs == 0) pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_lock);
}

static void registry_add(fake_handle* h) {
    pthread_mutex_lock(&g_lock);
    if (g_n_handles == g_cap_handles) {
        g_cap_handles = g_cap_handles ? g_cap_handles * 2 : 8;
        g_handles = fk_realloc(g_handles, g_cap_handles * sizeof *g_handles);
    }
    g_next_id += 16;
    h->id = g_next_id;
    g_handles[g_n_handles++] = h;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_counters.live_handles, 1);
}

/* Unlists h (no new calls can reach it) and waits until no call is inside it. */
static int registry_remove(LLMHandle handle, fake_handle** out) {
    pthread_mutex_lock(&g_lock);
    for (size_t k = 0; k < g_n_handles; k++) {
        if (g_handles[k]->id == (uintptr_t)handle) {
            *out = g_handles[k];
            g_handles[k] = g_handles[--g_n_handles];
            if (g_n_handles == 0) {
                fk_free(g_handles);
                g_handles = NULL;
                g_cap_handles = 0;
            }
            pthread_mutex_unlock(&g_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return -1;
}

static int on_worker(const fake_handle* h) { return pthread_equal(pthread_self(), h->thread); }

/* Returns the handle locked, or NULL (not a live handle, or it is running a job). */
static fake_handle* acquire_idle(LLMHandle handle, const char* fn) {
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "%s: invalid handle", fn);
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    if (h->running) {
        pthread_mutex_unlock(&h->mu);
        release(h);
        fk_log('E', "%s: a task is running on this handle", fn);
        return NULL;
    }
    return h;
}

static int done_idle(fake_handle* h, int rc) {
    pthread_mutex_unlock(&h->mu);
    release(h);
    return rc;
}

/* ---- worker thread -------------------------------------------------------------------- */

static void* worker_main(void* arg) {
    fake_handle* h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->has_job && !h->quit) pthread_cond_wait(&h->work_cv, &h->mu);
        if (!h->has_job) break;
        pthread_mutex_unlock(&h->mu);
        int rc = run_execute(h);
        pthread_mutex_lock(&h->mu);
        h->has_job = 0;
        h->running = 0;
        h->last_rc = rc;
        h->done_seq = h->job_seq;
        pthread_cond_broadcast(&h->done_cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

static void handle_free(fake_handle* h) {
    model_free(&h->model);
    fk_free(h->img_start);
    fk_free(h->img_end);
    fk_free(h->img_content);
    fk_free(h->tpl_system);
    fk_free(h->tpl_prefix);
    fk_free(h->tpl_postfix);
    json_free(h->tools);
    fk_free(h->tools_json);
    fk_free(h->tools_system);
    fk_free(h->tool_response);
    for (size_t k = 0; k < h->n_loras; k++) {
        fk_free(h->loras[k].name);
        fk_free(h->loras[k].path);
    }
    fk_free(h->loras);
    fk_free(h->pcache);
    for (int b = 0; b < MAX_BATCH; b++) fk_free(h->kv[b].tokens);
    fk_free(h->out_buf);
    sb_free(&h->last_input);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->work_cv);
    pthread_cond_destroy(&h->done_cv);
    pthread_cond_destroy(&h->sleep_cv);
    fk_free(h);
}

/* ---- the public API ------------------------------------------------------------------- */

FK_API RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 1;
    p.n_keep = 0;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.skip_special_token = false;
    p.is_async = false;
    p.extend_param.base_domain_id = 0;
    p.extend_param.embed_flash = 0;
    p.extend_param.enabled_cpus_num = 4;
    p.extend_param.enabled_cpus_mask = CPU4 | CPU5 | CPU6 | CPU7;
    p.extend_param.n_batch = 1;
    p.extend_param.use_cross_attn = 0;
    return p;
}

#if RKLLM_ABI == 12
FK_API int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback) {
    LLMResultCallback result_cb = callback;
#else
FK_API int rkllm_init(LLMHandle* handle, RKLLMParam* param, RKLLMCallback* callback) {
    LLMResultCallback result_cb = callback ? callback->result_callback : NULL;
#endif
    if (!handle || !param || !param->model_path || !result_cb) {
        fk_log('E', "rkllm_init: handle, param, param->model_path and the result callback are required");
        return -1;
    }
    *handle = NULL;
    fk_log('I', "%s, rknpu driver version: 0.9.8 (fake), platform: FAKE", fk_banner);
    char err[512];
    fake_model model;
    if (model_load(&model, param->model_path, err, sizeof err)) {
        fk_log('E', "%s", err);
        return -1;
    }
    const char* env_faults = getenv("RKLLM_FAKE_FAULTS");
    if (env_faults && faults_parse(&model.faults, env_faults, err, sizeof err)) {
        fk_log('E', "RKLLM_FAKE_FAULTS: %s", err);
        model_free(&model);
        return -1;
    }
    int rc = 0;
    int n_batch = param->extend_param.n_batch ? param->extend_param.n_batch : 1;
    if (model.faults.init_fail) {
        fk_log('E', "rkllm_init: injected fault: init fails with %d", model.faults.init_fail);
        rc = model.faults.init_fail;
    } else if (param->max_context_len <= 0 || param->max_context_len > (1 << 20)) {
        fk_log('E', "rkllm_init: max_context_len %d is outside 1..1048576", param->max_context_len);
        rc = -1;
    } else if (n_batch > MAX_BATCH) {
        fk_log('E', "rkllm_init: n_batch %d is outside 1..%d", n_batch, MAX_BATCH);
        rc = -1;
    }
#if RKLLM_ABI == 12
    else if (!model.internal_tokenizer || !model.internal_embedding) {
        fk_log('E', "rkllm_init: model %s needs tokenizer/embedding callbacks (runtime 1.3)", model.name);
        rc = -1;
    }
#else
    else if (!model.internal_tokenizer && !callback->tokenizer_callback) {
        fk_log('E', "rkllm_init: model %s has no internal tokenizer: tokenizer_callback is required", model.name);
        rc = -1;
    } else if (!model.internal_embedding && !callback->embed_callback) {
        fk_log('E', "rkllm_init: model %s has no internal embedding layer: embed_callback is required",
               model.name);
        rc = -1;
    }
#endif
    if (rc) {
        model_free(&model);
        return rc;
    }

    fake_handle* h = fk_calloc(1, sizeof *h);
    h->model = model;
    h->max_context_len = param->max_context_len;
    h->max_new_tokens = param->max_new_tokens;
    h->n_keep = param->n_keep;
    h->n_batch = n_batch;
    h->use_cross_attn = param->extend_param.use_cross_attn != 0;
    h->samp = (sampling){param->top_k, param->top_p, param->temperature, param->repeat_penalty,
                         param->frequency_penalty, param->presence_penalty, param->mirostat,
                         param->mirostat_tau, param->mirostat_eta};
    h->result_cb = result_cb;
#if RKLLM_ABI == 12
    h->img_start = fk_strdup(param->img_start);
    h->img_end = fk_strdup(param->img_end);
    h->img_content = fk_strdup(param->img_content);
#else
    h->ignore_eos = param->ignore_eos_token;
    h->result_ud = callback->result_userdata;
    h->tokenizer_cb = callback->tokenizer_callback;
    h->tokenizer_ud = callback->tokenizer_userdata;
    h->embed_cb = callback->embed_callback;
    h->embed_ud = callback->embed_userdata;
#endif
    h->tool_response = fk_strdup("tool_response");
    for (int b = 0; b < n_batch; b++)
        h->kv[b].tokens = fk_malloc(((size_t)h->max_context_len + 1) * sizeof(int32_t));
    sb_init(&h->last_input);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->sleep_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&h->work_cv, NULL);
    pthread_cond_init(&h->done_cv, NULL);
    if (pthread_create(&h->thread, NULL, worker_main, h) != 0) {
        fk_log('E', "rkllm_init: cannot start the runtime thread");
        handle_free(h);
        return -1;
    }
    registry_add(h);
    *handle = (LLMHandle)h->id;
    return 0;
}

FK_API int rkllm_destroy(LLMHandle handle) {
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "rkllm_destroy: invalid handle");
        return -1;
    }
    if (on_worker(h)) {
        release(h);
        fk_log('E', "rkllm_destroy: called from the handle's own callback");
        return -1;
    }
    release(h);
    if (registry_remove(handle, &h)) return -1; /* destroyed meanwhile by another thread */
    pthread_mutex_lock(&h->mu);
    /* Under mu, so a run submitted concurrently cannot reset the abort flag after this. */
    atomic_store(&h->abort_flag, 1);
    h->quit = 1;
    pthread_cond_broadcast(&h->work_cv);
    pthread_cond_broadcast(&h->sleep_cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_lock(&g_lock);
    while (h->refs > 0) pthread_cond_wait(&g_cv, &g_lock);
    pthread_mutex_unlock(&g_lock);
    handle_free(h);
    atomic_fetch_sub(&g_counters.live_handles, 1);
    return 0;
}

static int is_known_role(const char* role) {
    return !role || strcmp(role, "user") == 0 || strcmp(role, "tool") == 0;
}

/* Checks one input before the run starts; the runtime reads the data itself on its thread. */
static int check_input(const fake_handle* h, const RKLLMInput* in) {
    if (!is_known_role(in->role)) {
        fk_log('E', "rkllm_run: unknown role '%s' (expected \"user\" or \"tool\")", in->role);
        return -1;
    }
    switch (in->input_type) {
    case RKLLM_INPUT_PROMPT:
        if (!in->prompt_input) break;
        return 0;
    case RKLLM_INPUT_TOKEN:
        if (!in->token_input.input_ids || in->token_input.n_tokens == 0) break;
        return 0;
    case RKLLM_INPUT_EMBED:
        if (!in->embed_input.embed || in->embed_input.n_tokens == 0) break;
        return 0;
    case RKLLM_INPUT_MULTIMODAL: {
        const RKLLMMultiModalInput* m = &in->multimodal_input;
        if (!m->prompt) break;
#if RKLLM_ABI == 12
        if (m->image_embed && (m->n_image == 0 || m->n_image_tokens == 0)) break;
        if (!m->image_embed && m->n_image) break;
#else
        if (m->image.image_embed && (m->image.n_image == 0 || m->image.n_image_tokens == 0)) break;
        if (!m->image.image_embed && m->image.n_image) break;
        if (m->video.video_embed &&
            (m->video.n_video == 0 || m->video.n_frame_per_video == 0 || m->video.n_frame_tokens == 0))
            break;
        if (!m->video.video_embed && m->video.n_video) break;
#endif
        return 0;
    }
    default:
        fk_log('E', "rkllm_run: unknown input_type %d", (int)in->input_type);
        return -1;
    }
    (void)h;
    fk_log('E', "rkllm_run: %s input is missing its data or sizes", in->input_type == RKLLM_INPUT_PROMPT ? "prompt"
           : in->input_type == RKLLM_INPUT_TOKEN ? "token" : in->input_type == RKLLM_INPUT_EMBED ? "embed" : "multimodal");
    return -1;
}

static int submit(LLMHandle handle, RKLLMInput* input, RKLLMInferParam* infer, void* userdata, int wait) {
    const char* fn = wait ? "rkllm_run" : "rkllm_run_async";
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "%s: invalid handle", fn);
        return -1;
    }
    int rc = -1;
    if (h->model.faults.run_fail) {
        fk_log('E', "%s: injected fault: run fails with %d", fn, h->model.faults.run_fail);
        rc = h->model.faults.run_fail;
        goto out;
    }
    if (!input || !infer) {
        fk_log('E', "%s: input and infer params are required", fn);
        goto out;
    }
    if (infer->mode < RKLLM_INFER_GENERATE || infer->mode > RKLLM_INFER_GET_LOGITS) {
        fk_log('E', "%s: unknown infer mode %d", fn, (int)infer->mode);
        goto out;
    }
    for (int b = 0; b < h->n_batch; b++)
        if (check_input(h, &input[b])) goto out;
    const lora_entry* lora = NULL;
    if (infer->lora_params) {
        const char* name = infer->lora_params->lora_adapter_name;
        for (size_t k = 0; name && k < h->n_loras; k++)
            if (strcmp(h->loras[k].name, name) == 0) lora = &h->loras[k];
        if (!lora) {
            fk_log('E', "%s: no LoRA adapter named '%s' is loaded", fn, name ? name : "(null)");
            goto out;
        }
    }
    const RKLLMPromptCacheParam* pc = infer->prompt_cache_params;
    if (pc && pc->save_prompt_cache && !pc->prompt_cache_path) {
        fk_log('E', "%s: save_prompt_cache needs prompt_cache_path", fn);
        goto out;
    }
    pthread_mutex_lock(&h->mu);
    if (h->running || h->quit) {
        pthread_mutex_unlock(&h->mu);
        fk_log('E', "%s: %s", fn, h->quit ? "the handle is being destroyed" : "a task is already running on this handle");
        goto out;
    }
    job_t* job = &h->job;
    job->n_batch = h->n_batch;
    memcpy(job->inputs, input, (size_t)h->n_batch * sizeof(RKLLMInput));
    job->mode = infer->mode;
    job->keep_history = infer->keep_history;
    job->max_new_tokens = h->max_new_tokens;
    job->samp = h->samp;
#if RKLLM_ABI == 13
    if (infer->max_new_tokens > 0) job->max_new_tokens = infer->max_new_tokens;
    if (infer->sampling_params) {
        const RKLLMSamplingParam* s = infer->sampling_params;
        job->samp = (sampling){s->top_k, s->top_p, s->temperature, s->repeat_penalty, s->frequency_penalty,
                               s->presence_penalty, s->mirostat, s->mirostat_tau, s->mirostat_eta};
    }
#endif
    job->lora = lora;
    job->cache_save_path = pc && pc->save_prompt_cache ? fk_strdup(pc->prompt_cache_path) : NULL;
    job->userdata = userdata;
    atomic_store(&h->abort_flag, 0);
    h->running = 1;
    h->has_job = 1;
    uint64_t seq = ++h->job_seq;
    pthread_cond_signal(&h->work_cv);
    rc = 0;
    if (wait) {
        while (h->done_seq < seq) pthread_cond_wait(&h->done_cv, &h->mu);
        rc = h->last_rc;
    }
    pthread_mutex_unlock(&h->mu);
out:
    release(h);
    return rc;
}

FK_API int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params,
                     void* userdata) {
    return submit(handle, rkllm_input, rkllm_infer_params, userdata, 1);
}

FK_API int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input, RKLLMInferParam* rkllm_infer_params,
                           void* userdata) {
    return submit(handle, rkllm_input, rkllm_infer_params, userdata, 0);
}

FK_API int rkllm_abort(LLMHandle handle) {
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "rkllm_abort: invalid handle");
        return -1;
    }
    pthread_mutex_lock(&h->mu);
    if (h->running) {
        atomic_store(&h->abort_flag, 1);
        pthread_cond_broadcast(&h->sleep_cv);
    }
    pthread_mutex_unlock(&h->mu);
    release(h);
    return 0;
}

FK_API int rkllm_is_running(LLMHandle handle) {
    fake_handle* h = acquire(handle);
    if (!h) return -1;
    pthread_mutex_lock(&h->mu);
    int running = h->running;
    pthread_mutex_unlock(&h->mu);
    release(h);
#if RKLLM_ABI == 12
    return running ? 0 : -1; /* 1.2 documents 0 while a task runs, non-zero otherwise */
#else
    return running ? 1 : 0;
#endif
}

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
    FILE* f = prompt_cache_path ? fopen(prompt_cache_path, "rb") : NULL;
    if (!f) {
        fk_log('E', "rkllm_load_prompt_cache: cannot open %s", prompt_cache_path ? prompt_cache_path : "(null)");
        return done_idle(h, -1);
    }
    char magic[8];
    uint32_t n = 0;
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "RKFKPC01", 8) == 0 && fread(&n, sizeof n, 1, f) == 1 &&
             n <= (uint32_t)h->max_context_len;
    int32_t* tokens = NULL;
    if (ok) {
        tokens = fk_malloc(((size_t)n + 1) * sizeof(int32_t));
        char extra;
        ok = fread(tokens, sizeof(int32_t), n, f) == n && fread(&extra, 1, 1, f) == 0;
    }
    fclose(f);
    if (!ok) {
        fk_free(tokens);
        fk_log('E', "rkllm_load_prompt_cache: %s is not a prompt cache of this model", prompt_cache_path);
        return done_idle(h, -1);
    }
    fk_free(h->pcache);
    h->pcache = tokens;
    h->pcache_n = n;
    h->pcache_loaded = 1;
    return done_idle(h, 0);
}

FK_API int rkllm_release_prompt_cache(LLMHandle handle) {
    fake_handle* h = acquire_idle(handle, "rkllm_release_prompt_cache");
    if (!h) return -1;
    fk_free(h->pcache);
    h->pcache = NULL;
    h->pcache_n = 0;
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
        memmove(kv->tokens + s, kv->tokens + e, (kv->n - e) * sizeof(int32_t));
        kv->n -= e - s;
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

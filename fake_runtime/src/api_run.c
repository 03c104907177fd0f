/* api_run.c: the lifecycle entry points: rkllm_createDefaultParam, rkllm_init,
 * rkllm_destroy, rkllm_run / rkllm_run_async (argument checks, then the job goes to the
 * handle's thread), rkllm_abort and rkllm_is_running. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake.h"

/* The banner the vendor prints at init; kept whole in .rodata for version detection. */
static const char fk_banner[] = "rkllm-runtime version: " FK_VERSION;

/* ---- destroy while a run is in flight on the same thread ---------------------------------
 * [A19] A thread blocked in rkllm_run can call rkllm_destroy only from a signal handler (the
 * vendor's C demo does it on SIGINT). Such a destroy must not wait for the run, which cannot
 * return until the handler does, and may only do async-signal-safe work. So rkllm_run and
 * rkllm_run_async publish the call in a thread-local record; a destroy on the same thread for
 * the same handle only marks the record and aborts the run (atomics and write(2) on the
 * handle's eventfd), and returns 0. The interrupted call does the real destroy (unlist, join
 * the runtime thread, free) itself once the run has finished, before it returns. */
typedef struct {
    uintptr_t id;                  /* the handle this thread's run call is for */
    fake_handle* _Atomic h;        /* set while the call holds a reference to it */
    volatile sig_atomic_t destroy; /* rkllm_destroy was called for it meanwhile */
} run_call;

/* initial-exec: reading it from a signal handler must not allocate. */
static _Thread_local run_call* tl_call __attribute__((tls_model("initial-exec")));

/* Async-signal-safe: no lock, no allocation, no stdio. */
static int destroy_deferred(run_call* call) {
    if (call->destroy) {
        static const char msg[] = "E rkllm: rkllm_destroy: the handle is already being destroyed\n";
        ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)n;
        return -1;
    }
    call->destroy = 1;
    atomic_signal_fence(memory_order_seq_cst);
    fake_handle* h = atomic_load(&call->h);
    if (h) handle_abort(h);
    return 0;
}

/* Unlists the handle, aborts its run, joins its thread, waits for every other call inside it
 * to leave, then frees it. */
static int destroy_now(LLMHandle handle, int log_invalid) {
    fake_handle* h = acquire(handle);
    if (!h) {
        if (log_invalid) fk_log('E', "rkllm_destroy: invalid handle");
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
    h->quit = 1;
    handle_abort(h);
    pthread_cond_broadcast(&h->work_cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    registry_wait_unused(h);
    handle_free(h);
    atomic_fetch_sub(&g_counters.live_handles, 1);
    return 0;
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

    fake_handle* h = handle_new(n_batch, param->max_context_len);
    if (!h) {
        fk_log('E', "rkllm_init: cannot create the handle's wake-up eventfd");
        model_free(&model);
        return -1;
    }
    h->model = model;
    h->max_new_tokens = param->max_new_tokens;
    h->n_keep = param->n_keep;
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
    if (handle_start(h)) {
        fk_log('E', "rkllm_init: cannot start the runtime thread");
        handle_free(h);
        return -1;
    }
    registry_add(h);
    *handle = (LLMHandle)h->id;
    return 0;
}

FK_API int rkllm_destroy(LLMHandle handle) {
    run_call* call = tl_call;
    if (call && handle && call->id == (uintptr_t)handle) return destroy_deferred(call);
    return destroy_now(handle, 1);
}

static int is_known_role(const char* role) {
    return !role || strcmp(role, "user") == 0 || strcmp(role, "tool") == 0;
}

/* Checks one input before the run starts; the runtime reads the data itself on its thread. */
static int check_input(const RKLLMInput* in) {
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
    fk_log('E', "rkllm_run: %s input is missing its data or sizes", in->input_type == RKLLM_INPUT_PROMPT ? "prompt"
           : in->input_type == RKLLM_INPUT_TOKEN ? "token" : in->input_type == RKLLM_INPUT_EMBED ? "embed" : "multimodal");
    return -1;
}

/* The checks made before a run starts; returns 0 (with *lora set) or the code to return. */
static int check_run(fake_handle* h, const char* fn, const RKLLMInput* input, const RKLLMInferParam* infer,
                     const lora_entry** lora) {
    if (h->model.faults.run_fail) {
        fk_log('E', "%s: injected fault: run fails with %d", fn, h->model.faults.run_fail);
        return h->model.faults.run_fail;
    }
    if (!input || !infer) {
        fk_log('E', "%s: input and infer params are required", fn);
        return -1;
    }
    if (infer->mode < RKLLM_INFER_GENERATE || infer->mode > RKLLM_INFER_GET_LOGITS) {
        fk_log('E', "%s: unknown infer mode %d", fn, (int)infer->mode);
        return -1;
    }
    for (int b = 0; b < h->n_batch; b++)
        if (check_input(&input[b])) return -1;
    *lora = NULL;
    if (infer->lora_params) {
        const char* name = infer->lora_params->lora_adapter_name;
        for (size_t k = 0; name && k < h->n_loras; k++)
            if (strcmp(h->loras[k].name, name) == 0) *lora = &h->loras[k];
        if (!*lora) {
            fk_log('E', "%s: no LoRA adapter named '%s' is loaded", fn, name ? name : "(null)");
            return -1;
        }
    }
    const RKLLMPromptCacheParam* pc = infer->prompt_cache_params;
    if (pc && pc->save_prompt_cache && !pc->prompt_cache_path) {
        fk_log('E', "%s: save_prompt_cache needs prompt_cache_path", fn);
        return -1;
    }
    return 0;
}

/* Copies the request into h->job (h->mu held). */
static void fill_job(fake_handle* h, const RKLLMInput* input, const RKLLMInferParam* infer, void* userdata,
                     const lora_entry* lora) {
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
    const RKLLMPromptCacheParam* pc = infer->prompt_cache_params;
    job->cache_save_path = pc && pc->save_prompt_cache ? fk_strdup(pc->prompt_cache_path) : NULL;
    job->userdata = userdata;
}

/* Hands the job to the handle's thread and, for rkllm_run, waits for it to finish. */
static int start_job(fake_handle* h, const char* fn, run_call* call, RKLLMInput* input, RKLLMInferParam* infer,
                     void* userdata, const lora_entry* lora, int wait) {
    pthread_mutex_lock(&h->mu);
    /* Read under mu: destroy sets quit under mu. */
    const char* busy = h->quit || call->destroy ? "the handle is being destroyed"
                       : h->running                 ? "a task is already running on this handle"
                                                    : NULL;
    if (busy) {
        pthread_mutex_unlock(&h->mu);
        fk_log('E', "%s: %s", fn, busy);
        return -1;
    }
    fill_job(h, input, infer, userdata, lora);
    atomic_store(&h->abort_flag, 0);
    /* A destroy from a signal handler after the check above finds call->h set and aborts the
     * run after this reset. */
    atomic_signal_fence(memory_order_seq_cst);
    if (call->destroy) atomic_store(&h->abort_flag, 1);
    h->running = 1;
    h->has_job = 1;
    uint64_t seq = ++h->job_seq;
    pthread_cond_signal(&h->work_cv);
    int rc = 0;
    if (wait) {
        while (h->done_seq < seq) pthread_cond_wait(&h->done_cv, &h->mu);
        rc = h->last_rc;
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static int submit(LLMHandle handle, RKLLMInput* input, RKLLMInferParam* infer, void* userdata, int wait) {
    const char* fn = wait ? "rkllm_run" : "rkllm_run_async";
    run_call call = {.id = (uintptr_t)handle, .h = NULL, .destroy = 0};
    run_call* outer = tl_call;
    tl_call = &call;
    atomic_signal_fence(memory_order_seq_cst);
    int rc = -1;
    fake_handle* h = acquire(handle);
    if (!h) {
        fk_log('E', "%s: invalid handle", fn);
    } else {
        atomic_store(&call.h, h);
        atomic_signal_fence(memory_order_seq_cst);
        const lora_entry* lora = NULL;
        rc = check_run(h, fn, input, infer, &lora);
        /* The start_delay_ms fault: the run counts as running only after it, so an rkllm_abort
         * meanwhile finds the handle idle and does nothing; no abort cuts the delay short. */
        if (rc == 0) sleep_ms(h->model.faults.start_delay_ms);
        if (rc == 0) rc = start_job(h, fn, &call, input, infer, userdata, lora, wait);
        atomic_store(&call.h, NULL);
        atomic_signal_fence(memory_order_seq_cst);
        release(h);
    }
    /* A signal handler called rkllm_destroy on this thread during the call: do it now (still
     * published, so a second destroy from a handler meanwhile is a harmless -1). */
    if (call.destroy) destroy_now(handle, 0);
    tl_call = outer;
    atomic_signal_fence(memory_order_seq_cst);
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
    if (h->running) handle_abort(h);
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

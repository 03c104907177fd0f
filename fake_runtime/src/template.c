/* template.c: the chat template a prompt is wrapped in (Qwen2.5 / ChatML by default, or the
 * rkllm_set_chat_template parts), with function tools and Qwen3's closed think block. */
#include <string.h>

#include "batch.h"

static void put_system(fake_handle* h, sbuf* out) {
    if (h->custom_template) {
        sb_puts(out, h->tpl_system);
        if (h->tools) sb_printf(out, "\n<tools>\n%s\n</tools>\n", h->tools_json);
        return;
    }
    sb_puts(out, "<|im_start|>system\n");
    sb_puts(out, h->tools && h->tools_system[0] ? h->tools_system : "You are a helpful assistant.");
    if (h->tools) sb_printf(out, "\n\n# Tools\n<tools>\n%s\n</tools>", h->tools_json);
    sb_puts(out, "<|im_end|>\n");
}

/* Wraps text in the template; returns the byte length of the system part. */
size_t apply_template(fake_handle* h, sbuf* out, int with_system, const char* role, const char* text,
                      int thinking) {
    size_t sys = 0;
    if (with_system) {
        put_system(h, out);
        sys = out->len;
    }
    sb_puts(out, h->custom_template ? h->tpl_prefix : "<|im_start|>user\n");
    if (strcmp(role, "tool") == 0)
        sb_printf(out, "<%s>\n%s\n</%s>", h->tool_response, text, h->tool_response);
    else
        sb_puts(out, text);
    if (h->custom_template) {
        sb_puts(out, h->tpl_postfix);
    } else {
        sb_puts(out, "<|im_end|>\n<|im_start|>assistant\n");
        /* Qwen3's template closes an empty think block when thinking is off. */
        if (h->model.thinking && !thinking) sb_puts(out, "<think>\n\n</think>\n\n");
    }
    return sys;
}

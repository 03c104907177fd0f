"""The Jinja sources of the built-in chat templates (:data:`~.templates.BUILTIN_TEMPLATES`).

One constant per family, each written after the output of that family's published
``tokenizer_config.json`` template; :mod:`.templates` describes the families, their stop
strings and the deliberate differences. The pieces every family shares (Qwen's ``# Tools``
block, ``<tool_call>`` JSON, ``<tool_response>`` results) are written once and joined in.

Each line starts with ``{%-`` or ``{{-``, so the source's own line breaks never reach the
output.
"""

# ruff: noqa: RUF001  # DeepSeek's special tokens are spelt with full-width bars

from __future__ import annotations

__all__ = ["DEEPSEEK_R1", "GEMMA", "LLAMA3", "MINICPM", "PHI3", "QWEN2_5", "QWEN3"]


_TOOLS_BLOCK = r"""
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'
    'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n'
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
"""

# After an assistant turn's `content`: one block per call, on its own line.
_TOOL_CALLS = r"""
{%- for call in message.tool_calls %}
{%- set fn = call.function if call.function is defined else call %}
{%- if not loop.first or content %}{{ '\n' }}{% endif %}
{{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
{%- if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
"""


def _tool_results(open_turn: str, close_turn: str) -> str:
    """Consecutive tool messages as ``<tool_response>`` blocks in one user turn."""
    return (
        r"""
{%- if loop.previtem is not defined or loop.previtem.role != 'tool' %}{{ '"""
        + open_turn
        + r"""' }}{% else %}{{ '\n' }}{% endif %}
{{- '<tool_response>\n' + content + '\n</tool_response>' }}
{%- if loop.nextitem is not defined or loop.nextitem.role != 'tool' %}{{ '"""
        + close_turn
        + r"""' }}{% endif %}
"""
    )


_CONTENT = r"""
{%- set content = message.content if message.content is string else '' %}
"""

_UNKNOWN_ROLE = r"""
{%- else %}
{{- raise_exception('Unsupported message role: ' ~ message.role) }}
"""


#: ChatML's system turn without a default system prompt: the system message, then the tools.
_CHATML_SYSTEM = (
    r"""
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages and messages[0].role == 'system' %}{{ messages[0].content + '\n\n' }}{% endif %}
"""
    + _TOOLS_BLOCK
    + r"""
{{- '<|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
"""
)

#: The start of ChatML's turn loop, up to an assistant turn's content: the first system
#: message skipped (the header has it), user and other system turns written whole.
_CHATML_TURN_START = (
    r"""
{%- for message in messages %}
"""
    + _CONTENT
    + r"""
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'user' or message.role == 'system' %}
{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}"""
)

#: The end of ChatML's turn loop, after an assistant turn's content: its calls, the tool
#: results, an unknown role refused.
_CHATML_TURN_END = (
    _TOOL_CALLS
    + r"""
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
"""
    + _tool_results("<|im_start|>user\\n", "<|im_end|>\\n")
    + _UNKNOWN_ROLE
    + r"""
{%- endif %}
{%- endfor %}
"""
)


def _chatml(default_system: str | None) -> str:
    """Qwen2.5 (with its default system prompt) and MiniCPM (without one)."""
    if default_system is None:
        header = _CHATML_SYSTEM
    else:
        header = (
            r"""
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages and messages[0].role == 'system' %}{{ messages[0].content }}{% else %}{{ '"""
            + default_system
            + r"""' }}{% endif %}
{{- '\n\n' }}
"""
            + _TOOLS_BLOCK
            + r"""
{{- '<|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>system\n"""
            + default_system
            + r"""<|im_end|>\n' }}
{%- endif %}
"""
        )
    return (
        header
        + _CHATML_TURN_START
        + r"""
{{- '<|im_start|>assistant\n' + content }}
"""
        + _CHATML_TURN_END
        + r"""
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
"""
    )


#: Qwen3: ChatML without a default system prompt; reasoning kept only after the last query.
QWEN3 = (
    _CHATML_SYSTEM
    + r"""
{#- The last real user query: reasoning is kept only for the assistant turns after it. #}
{%- set ns = namespace(seeking=true, last_query=(messages | length) - 1) %}
{%- for message in messages | reverse %}
{%- if ns.seeking and message.role == 'user' and message.content is string
    and not (message.content.startswith('<tool_response>')
             and message.content.endswith('</tool_response>')) %}
{%- set ns.seeking = false %}
{%- set ns.last_query = (messages | length) - loop.index %}
{%- endif %}
{%- endfor %}"""
    + _CHATML_TURN_START
    + r"""
{%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' %}
{%- if message.reasoning_content is not string and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- endif %}
{%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n'
    + content.lstrip('\n') }}
{%- else %}
{{- '<|im_start|>assistant\n' + content }}
{%- endif %}
"""
    + _CHATML_TURN_END
    + r"""
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\n\n</think>\n\n' }}
{%- endif %}
{%- endif %}
"""
)

_LLAMA3_CALL_FORMAT = (
    r"""Respond in the format {"name": function name, "parameters": dictionary of argument """
    r"""name and its value}.Do not use variables.\n\n"""
)

#: Llama 3.1 and 3.2: header ids, tools in the first user turn, results in ipython turns.
LLAMA3 = (
    r"""
{{- bos_token }}
{%- if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}
{%- if tools_in_user_message is not defined %}{% set tools_in_user_message = true %}{% endif %}
{%- if messages and messages[0].role == 'system' %}
{%- set system_message = messages[0].content | trim %}
{%- set messages = messages[1:] %}
{%- else %}
{%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools %}{{ 'Environment: ipython\n' }}{% endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' }}
{%- if tools and not tools_in_user_message %}
{{- 'You have access to the following functions. '
    'To call a function, please respond with JSON for a function call."""
    + _LLAMA3_CALL_FORMAT
    + r"""' }}
{%- for tool in tools %}{{ tool | tojson(indent=4) }}{{ '\n\n' }}{% endfor %}
{%- endif %}
{{- system_message + '<|eot_id|>' }}
{%- if tools and tools_in_user_message %}
{%- if not messages %}
{{- raise_exception("Cannot put tools in the first user message "
                    "when there's no first user message!") }}
{%- endif %}
{%- set first_user_message = messages[0].content | trim %}
{%- set messages = messages[1:] %}
{{- '<|start_header_id|>user<|end_header_id|>\n\n'
    'Given the following functions, please respond with a JSON for a function call '
    'with its proper arguments that best answers the given prompt.\n\n"""
    + _LLAMA3_CALL_FORMAT
    + r"""' }}
{%- for tool in tools %}{{ tool | tojson(indent=4) }}{{ '\n\n' }}{% endfor %}
{{- first_user_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
"""
    + _CONTENT
    + r"""
{#- Meta's template JSON-quotes a string result (a string "is iterable"); Meta's docs and the
    models show it bare, as here. #}
{%- if message.role == 'tool' or message.role == 'ipython' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + content + '<|eot_id|>' }}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- for call in message.tool_calls %}
{%- set fn = call.function if call.function is defined else call %}
{%- if not loop.first %}{{ '\n' }}{% endif %}
{{- '{"name": "' + fn.name + '", "parameters": ' }}
{%- if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif %}
{{- '}' }}
{%- endfor %}
{{- '<|eot_id|>' }}
{%- elif message.role in ['system', 'user', 'assistant'] %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n'
    + content | trim + '<|eot_id|>' }}
"""
    + _UNKNOWN_ROLE
    + r"""
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
"""
)

#: The DeepSeek-R1 distills: full-width-bar turns, the generation prompt opens a think block.
DEEPSEEK_R1 = (
    r"""
{%- set ns = namespace(system='', seen_system=false) %}
{%- for message in messages if message.role == 'system' %}
{%- set ns.system = ns.system + ('\n\n' if ns.seen_system else '') + message.content %}
{%- set ns.seen_system = true %}
{%- endfor %}
{{- bos_token + ns.system }}
{%- if tools %}
{%- if ns.system %}{{ '\n\n' }}{% endif %}
"""
    + _TOOLS_BLOCK
    + r"""
{%- endif %}
{%- for message in messages %}
"""
    + _CONTENT
    + r"""
{%- if message.role == 'system' %}
{%- elif message.role == 'user' %}
{{- '<｜User｜>' + content }}
{%- elif message.role == 'assistant' %}
{%- if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}
{{- '<｜Assistant｜>' + content }}
"""
    + _TOOL_CALLS
    + r"""
{{- '<｜end▁of▁sentence｜>' }}
{%- elif message.role == 'tool' %}
"""
    + _tool_results("<｜User｜>", "")
    + _UNKNOWN_ROLE
    + r"""
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<｜Assistant｜><think>\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{ '\n</think>\n\n' }}{% endif %}
{%- endif %}
"""
)

#: Gemma 2 and 3: user / model turns, the system text opens the first user turn.
GEMMA = (
    r"""
{{- bos_token }}
{%- if messages and messages[0].role == 'system' %}
{%- set first_user_prefix = messages[0].content + '\n\n' %}
{%- set loop_messages = messages[1:] %}
{%- else %}
{%- set first_user_prefix = '' %}
{%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(turn=0) %}
{%- for message in loop_messages %}
"""
    + _CONTENT
    + r"""
{%- if message.role == 'tool' and loop.previtem is defined and loop.previtem.role == 'tool' %}
{{- '\n' }}
{%- else %}
{%- set is_user = message.role in ['user', 'tool'] %}
{%- if message.role not in ['user', 'tool', 'assistant'] or is_user != (ns.turn % 2 == 0) %}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif %}
{{- '<start_of_turn>' + ('user' if is_user else 'model') + '\n' }}
{%- if ns.turn == 0 %}
{{- first_user_prefix }}
{%- if tools %}
"""
    + _TOOLS_BLOCK
    + r"""
{{- '\n\n' }}
{%- endif %}
{%- endif %}
{%- set ns.turn = ns.turn + 1 %}
{%- endif %}
{%- if message.role == 'tool' %}
{{- '<tool_response>\n' + content + '\n</tool_response>' }}
{%- if loop.nextitem is not defined or loop.nextitem.role != 'tool' %}
{{- '<end_of_turn>\n' }}
{%- endif %}
{%- elif message.role == 'assistant' %}
{%- set content = content | trim %}
{{- content }}
"""
    + _TOOL_CALLS
    + r"""
{{- '<end_of_turn>\n' }}
{%- else %}
{{- content | trim + '<end_of_turn>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}
"""
)

#: Phi-3 and 3.5: system / user / assistant turns ended by ``<|end|>``.
PHI3 = (
    r"""
{%- if messages and messages[0].role == 'system' %}
{%- set system_message = messages[0].content %}
{%- set loop_messages = messages[1:] %}
{%- else %}
{%- set system_message = '' %}
{%- set loop_messages = messages %}
{%- endif %}
{%- if system_message or tools %}
{{- '<|system|>\n' + system_message }}
{%- if tools %}
{%- if system_message %}{{ '\n\n' }}{% endif %}
"""
    + _TOOLS_BLOCK
    + r"""
{%- endif %}
{{- '<|end|>\n' }}
{%- endif %}
{%- for message in loop_messages %}
"""
    + _CONTENT
    + r"""
{%- if message.role == 'system' %}
{%- if content %}{{ '<|system|>\n' + content + '<|end|>\n' }}{% endif %}
{%- elif message.role == 'user' %}
{{- '<|user|>\n' + content + '<|end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|assistant|>\n' + content }}
"""
    + _TOOL_CALLS
    + r"""
{{- '<|end|>\n' }}
{%- elif message.role == 'tool' %}
"""
    + _tool_results("<|user|>\\n", "<|end|>\\n")
    + _UNKNOWN_ROLE
    + r"""
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}
"""
)

_QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


#: Qwen2 and Qwen2.5: ChatML with Qwen's default system prompt.
QWEN2_5 = _chatml(_QWEN_SYSTEM)
#: MiniCPM 3 and 4: ChatML without a default system prompt.
MINICPM = _chatml(None)

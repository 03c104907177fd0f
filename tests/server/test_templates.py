"""Chat templates: each built-in family renders what its published template renders.

Expected strings are written out by hand from the output of each family's published Hugging
Face ``tokenizer_config.json`` ``chat_template`` (the source named in each test's
docstring); where a family's template has no tool format, the expectation is the module's
documented convention (Qwen's ``<tool_call>`` / ``<tool_response>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rkllm_sdk.server.templates import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    TemplateError,
    load_template,
)
from rkllm_sdk.tools import parse_tool_calls

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
    '"required": ["city"]}}}'
)
QWEN_TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + TOOL_JSON
    + "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
CALL_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'

CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Weather?"},
]


def tool_round(city: str = "Zürich") -> list[dict[str, Any]]:
    """A conversation with one tool call, two results and a final answer, then a new query."""
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Weather in {city}?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": city}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"t": 3}'},
        {"role": "tool", "tool_call_id": "call_2", "name": "get_weather", "content": "windy"},
        {"role": "assistant", "content": "3 °C, windy."},
        {"role": "user", "content": "Thanks"},
    ]


def render(name: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """Render with a built-in template."""
    return BUILTIN_TEMPLATES[name].render(messages, **kwargs)


# ---- Qwen2 / Qwen2.5 --------------------------------------------------------------------


def test_qwen25_plain_chat_is_chatml() -> None:
    """Qwen2.5-7B-Instruct's template: ChatML turns, generation prompt opens the assistant."""
    assert render("qwen2.5", CHAT) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_default_system_prompt_and_no_generation_prompt() -> None:
    """Qwen2.5-Instruct's template adds its own system prompt when none is given."""
    assert render("qwen2.5", CHAT[1:3], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_qwen25_tools_calls_and_grouped_results() -> None:
    """Qwen2.5-Instruct's tool format: `# Tools` in the system turn, `<tool_call>` JSON in the
    assistant turn, consecutive tool results as `<tool_response>` blocks in one user turn."""
    assert render("qwen2.5", tool_round(), tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\nBe brief.\n\n" + QWEN_TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Zürich?<|im_end|>\n"
        "<|im_start|>assistant\n" + CALL_BLOCK + "<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"t": 3}\n</tool_response>\n'
        "<tool_response>\nwindy\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n3 °C, windy.<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_tools_without_system_use_the_default_prompt() -> None:
    """Qwen2.5-Instruct: with tools and no system message, the default prompt heads `# Tools`;
    an assistant turn with text before its call keeps both, one line apart."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                }
            ],
        },
    ]
    assert render("qwen2.5", messages, tools=[WEATHER_TOOL], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.\n\n" + QWEN_TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.\n" + CALL_BLOCK + "<|im_end|>\n"
    )


def test_empty_tools_render_like_no_tools() -> None:
    """An empty tool list is no tools (HF passes None), so no `# Tools` section appears."""
    assert render("qwen2.5", CHAT, tools=[]) == render("qwen2.5", CHAT)


# ---- Qwen3 ---------------------------------------------------------------------------------


def test_qwen3_has_no_default_system_and_thinking_off_closes_an_empty_block() -> None:
    """Qwen3-8B's template: no default system prompt; enable_thinking=False appends an empty
    think block to the generation prompt, True and None leave it to the model."""
    messages = [{"role": "user", "content": "Hi"}]
    assert render("qwen3", messages) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render("qwen3", messages, enable_thinking=True) == render("qwen3", messages)
    assert render("qwen3", messages, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_drops_the_reasoning_of_turns_before_the_last_query() -> None:
    """Qwen3-8B's template: an earlier assistant turn loses its reasoning (given as
    reasoning_content or inline `<think>`), only its answer stays."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n6"},
        {"role": "user", "content": "Thanks"},
    ]
    assert render("qwen3", messages) == (
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n"
        "<|im_start|>assistant\n6<|im_end|>\n"
        "<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen3_keeps_reasoning_inside_the_current_tool_loop() -> None:
    """Qwen3-8B's template: assistant turns after the last user query (the running tool loop)
    keep their reasoning in a think block; tools without a system message open the system
    turn with `# Tools`."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                }
            ],
        },
        {"role": "tool", "content": "3"},
    ]
    assert render("qwen3", messages, tools=[WEATHER_TOOL]) == (
        "<|im_start|>system\n" + QWEN_TOOLS_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Zürich?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\n" + CALL_BLOCK + "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ---- Llama 3.1 / 3.2 -------------------------------------------------------------------------


def test_llama3_plain_chat() -> None:
    """Llama-3.2-3B-Instruct's template: BOS, a system header with the knowledge cutoff and
    date, the system text, then header-id turns ended by `<|eot_id|>`."""
    assert render("llama3", CHAT, date_string="26 Jul 2024") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_without_system_still_has_the_system_header() -> None:
    """Llama-3.2-Instruct: the system header (cutoff, date) is always there; text is trimmed."""
    assert render("llama3", [{"role": "user", "content": "  Hi \n"}], date_string="1 Jan 2025") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 1 Jan 2025\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_tools_in_first_user_turn_calls_as_json_and_ipython_results() -> None:
    """Llama-3.1/3.2-Instruct's tool convention: `Environment: ipython`, the tools as indented
    JSON in the first user turn, a call as `{"name", "parameters"}`, results as `ipython`."""
    indented = json.dumps(WEATHER_TOOL, indent=4, ensure_ascii=False)
    messages = tool_round()[:4]
    assert render("llama3", messages, tools=[WEATHER_TOOL], date_string="26 Jul 2024") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with "
        "its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument '
        "name and its value}.Do not use variables.\n\n" + indented + "\n\n"
        "Weather in Zürich?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Zürich"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"t": 3}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_tools_in_system_when_asked() -> None:
    """Llama-3.1's `tools_in_user_message=False` (an extra keyword) puts the tools in the
    system turn instead."""
    text = render(
        "llama3",
        CHAT,
        tools=[WEATHER_TOOL],
        date_string="26 Jul 2024",
        tools_in_user_message=False,
    )
    assert "Today Date: 26 Jul 2024\n\nYou have access to the following functions." in text
    assert "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" in text


def test_llama3_tools_without_a_user_message_is_a_template_error() -> None:
    """Llama-3.1's template refuses tools with no first user message (raise_exception)."""
    with pytest.raises(TemplateError, match="no first user message"):
        render("llama3", [{"role": "system", "content": "x"}], tools=[WEATHER_TOOL])


def test_llama3_date_defaults_to_today() -> None:
    """Without date_string the Llama 3.2 template asks strftime_now for today's date."""
    text = render("llama3", CHAT[1:2])
    assert "Today Date: " in text and "26 Jul 2024" not in text


# ---- DeepSeek-R1 distills ------------------------------------------------------------------


def test_deepseek_r1_plain_chat_opens_thinking() -> None:
    """DeepSeek-R1-Distill-Qwen-7B's template: BOS, system text bare, full-width-bar role
    tokens, earlier reasoning cut at `</think>`, generation prompt `<think>\\n`."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"},
        {"role": "user", "content": "Weather?"},
    ]
    template = BUILTIN_TEMPLATES["deepseek-r1"]
    text = template.render(messages)
    assert text == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>\n\nHello!<｜end▁of▁sentence｜>"  # noqa: RUF001
        "<｜User｜>Weather?<｜Assistant｜><think>\n"  # noqa: RUF001
    )
    assert template.starts_thinking(text)


def test_deepseek_r1_thinking_off_closes_the_block() -> None:
    """Our addition to the R1 template: enable_thinking=False closes the think block."""
    template = BUILTIN_TEMPLATES["deepseek-r1"]
    text = template.render([{"role": "user", "content": "Hi"}], enable_thinking=False)
    assert text.endswith("<｜Assistant｜><think>\n\n</think>\n\n")  # noqa: RUF001
    assert not template.starts_thinking(text)


# ---- Gemma ---------------------------------------------------------------------------------


def test_gemma_folds_system_into_the_first_user_turn() -> None:
    """gemma-3-4b-it's template: BOS, `<start_of_turn>user` / `model`, the system text and a
    blank line open the first user turn."""
    assert render("gemma", CHAT) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWeather?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_system_is_gemma2_output() -> None:
    """gemma-2-2b-it's template (no system message): the same turns, no prefix."""
    assert render("gemma", CHAT[1:3], add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    )


def test_gemma_refuses_roles_that_do_not_alternate() -> None:
    """Gemma's template raises when turns do not alternate user/model."""
    with pytest.raises(TemplateError, match="must alternate"):
        render("gemma", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# ---- Phi-3 / 3.5 -----------------------------------------------------------------------------


def test_phi3_turns_and_eos_without_generation_prompt() -> None:
    """Phi-3.5-mini-instruct's template: `<|role|>\\n...<|end|>\\n` turns; without a
    generation prompt it ends with the EOS token."""
    assert render("phi3", CHAT) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nWeather?<|end|>\n<|assistant|>\n"
    )
    assert render("phi3", CHAT[1:3], add_generation_prompt=False) == (
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|endoftext|>"
    )


# ---- MiniCPM -------------------------------------------------------------------------------


def test_minicpm_is_chatml_without_a_default_system() -> None:
    """MiniCPM3-4B's template without tools: plain ChatML, no default system prompt."""
    assert render("minicpm", CHAT[1:]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    )


# ---- the shared tool convention ------------------------------------------------------------


@pytest.mark.parametrize("name", ["deepseek-r1", "gemma", "phi3", "minicpm"])
def test_families_without_a_tool_format_use_qwens(name: str) -> None:
    """Families whose template has no tool format list the tools, render calls as
    `<tool_call>` JSON the SDK's parser reads back, and results as `<tool_response>`."""
    text = render(name, tool_round(), tools=[WEATHER_TOOL])
    assert QWEN_TOOLS_BLOCK in text
    assert CALL_BLOCK in text
    assert '<tool_response>\n{"t": 3}\n</tool_response>\n<tool_response>\nwindy\n' in text
    _, calls = parse_tool_calls(text.split(QWEN_TOOLS_BLOCK, 1)[1])
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Zürich"})]


def test_gemma_tools_and_results_in_user_turns() -> None:
    """Gemma: tools follow the system text in the first user turn, results form a user turn."""
    assert render("gemma", tool_round()[:5], tools=[WEATHER_TOOL]) == (
        "<bos><start_of_turn>user\nBe brief.\n\n" + QWEN_TOOLS_BLOCK + "\n\n"
        "Weather in Zürich?<end_of_turn>\n"
        "<start_of_turn>model\n" + CALL_BLOCK + "<end_of_turn>\n"
        '<start_of_turn>user\n<tool_response>\n{"t": 3}\n</tool_response>\n'
        "<tool_response>\nwindy\n</tool_response><end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_string_arguments_are_rendered_as_given(name: str) -> None:
    """Arguments that arrive as a JSON string (not normalised) are inserted verbatim."""
    messages = tool_round()[:3]
    messages[2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Bern"}'
    text = render(name, messages, tools=[WEATHER_TOOL], date_string="x")
    assert '{"city": "Bern"}' in text


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_unknown_roles_are_refused(name: str) -> None:
    """A role the template does not know is a TemplateError, not silently dropped text."""
    with pytest.raises(TemplateError):
        render(name, [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}])


# ---- the table of families -----------------------------------------------------------------


def test_builtin_names_stop_strings_and_think_tags() -> None:
    """Each family ends turns with its own strings; Qwen3 and R1 think in `<think>` tags."""
    table = {n: (t.stop, t.think_tags) for n, t in BUILTIN_TEMPLATES.items()}
    think = ("<think>", "</think>")
    assert table == {
        "qwen2.5": (("<|im_end|>", "<|endoftext|>"), None),
        "qwen3": (("<|im_end|>", "<|endoftext|>"), think),
        "llama3": (("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"), None),
        "deepseek-r1": (("<｜end▁of▁sentence｜>",), think),  # noqa: RUF001
        "gemma": (("<end_of_turn>", "<eos>"), None),
        "phi3": (("<|end|>", "<|endoftext|>"), None),
        "minicpm": (("<|im_end|>", "</s>"), None),
    }
    assert all(t.name == n for n, t in BUILTIN_TEMPLATES.items())


def test_starts_thinking_only_when_the_prompt_left_a_block_open() -> None:
    """starts_thinking: false for families without tags and for a closed or absent block."""
    qwen3 = BUILTIN_TEMPLATES["qwen3"]
    assert not qwen3.starts_thinking(render("qwen3", CHAT))
    assert not qwen3.starts_thinking(render("qwen3", CHAT, enable_thinking=False))
    assert not BUILTIN_TEMPLATES["qwen2.5"].starts_thinking("<think>")


# ---- the environment, as HF's ----------------------------------------------------------------


def file_template(tmp_path: Path, source: str, name: str = "t.jinja") -> ChatTemplate:
    """Load ``source`` as a Jinja file."""
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return load_template(str(path), tmp_path / "model.rkllm")


def test_tojson_keeps_unicode_and_order_and_takes_hf_arguments(tmp_path: Path) -> None:
    """tojson is HF's: no ASCII escapes, keys in order, indent and separators honoured."""
    t = file_template(
        tmp_path,
        "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}|"
        "{{ messages[0] | tojson(separators=(',', ':')) }}",
    )
    message = {"role": "user", "content": "<é>"}
    assert t.render([message], add_generation_prompt=False) == (
        '{"role": "user", "content": "<é>"}|'
        + json.dumps(message, indent=2, ensure_ascii=False)
        + '|{"role":"user","content":"<é>"}'
    )


def test_trim_and_lstrip_blocks_and_lenient_undefined(tmp_path: Path) -> None:
    """Blocks eat their line's indent and newline; an undefined name renders as nothing."""
    t = file_template(
        tmp_path, "a\n  {% if true %}\nb{{ nothing }}{{ messages[0].nope }}\n  {% endif %}\nc"
    )
    assert t.render([{"role": "user", "content": ""}]) == "a\nb\nc"


def test_strftime_now_and_extra_variables(tmp_path: Path) -> None:
    """strftime_now formats the current time; extra keywords reach the template."""
    t = file_template(tmp_path, "{{ strftime_now('x%%y') }} {{ flavour }} {{ enable_thinking }}")
    assert t.render([], flavour="mint", enable_thinking=False) == "x%y mint False"


def test_raise_exception_is_a_template_error(tmp_path: Path) -> None:
    """raise_exception's message comes back as a TemplateError's."""
    t = file_template(tmp_path, "{{ raise_exception('no system role, sorry') }}")
    with pytest.raises(TemplateError, match=r"^no system role, sorry$"):
        t.render([])


def test_the_sandbox_refuses_mutation(tmp_path: Path) -> None:
    """Templates cannot change the caller's data (immutable sandbox): a TemplateError."""
    messages = [{"role": "user", "content": "a"}]
    t = file_template(tmp_path, "{{ messages.append(1) }}")
    with pytest.raises(TemplateError, match=r"t\.jinja"):
        t.render(messages)
    assert messages == [{"role": "user", "content": "a"}]


def test_runtime_failures_become_template_errors(tmp_path: Path) -> None:
    """A template that fails on the data (here: str + int) is a TemplateError naming it."""
    t = file_template(tmp_path, "{{ 'a' + messages | length }}")
    with pytest.raises(TemplateError, match="failed"):
        t.render([])


# ---- load_template -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("qwen2.5", "qwen2.5"),
        ("Qwen2", "qwen2.5"),
        ("chatml", "qwen2.5"),
        ("qwen3", "qwen3"),
        ("llama3.2", "llama3"),
        ("LLAMA-3.1", "llama3"),
        ("deepseek-r1", "deepseek-r1"),
        ("gemma3", "gemma"),
        ("phi3.5", "phi3"),
        ("minicpm4", "minicpm"),
    ],
)
def test_builtin_names_and_aliases(spec: str, name: str, tmp_path: Path) -> None:
    """Built-in names and their aliases, any case, pick the built-in template."""
    assert load_template(spec, tmp_path / "m.rkllm") is BUILTIN_TEMPLATES[name]


@pytest.mark.parametrize(
    ("file_name", "name"),
    [
        ("Qwen3-1.7B-w8a8.rkllm", "qwen3"),
        ("qwen3_4b.rkllm", "qwen3"),
        ("Qwen3.5-2B.rkllm", "qwen3"),
        ("qwen-3b-chat.rkllm", "qwen2.5"),
        ("Qwen2.5-3B-Instruct_W8A8_RK3588.rkllm", "qwen2.5"),
        ("qwen2-1.5b.rkllm", "qwen2.5"),
        ("DeepSeek-R1-Distill-Qwen-1.5B_W8A8.rkllm", "deepseek-r1"),
        ("r1-distill-llama-8b.rkllm", "deepseek-r1"),
        ("Llama-3.2-1B-Instruct.rkllm", "llama3"),
        ("llama3_8b.rkllm", "llama3"),
        ("gemma-3-1b-it.rkllm", "gemma"),
        ("Phi-3.5-mini.rkllm", "phi3"),
        ("MiniCPM4-0.5B.rkllm", "minicpm"),
        ("dolphin-7b.rkllm", "qwen2.5"),
        ("model.rkllm", "qwen2.5"),
    ],
)
def test_guess_from_the_model_file_name(file_name: str, name: str, tmp_path: Path) -> None:
    """Without a spec or a tokenizer_config.json, the file name picks the family; ChatML
    (qwen2.5) otherwise."""
    assert load_template(None, tmp_path / file_name) is BUILTIN_TEMPLATES[name]


def write_config(path: Path, **config: Any) -> Path:
    """Write a tokenizer_config.json-like file."""
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_tokenizer_config_string_template_and_dict_tokens(tmp_path: Path) -> None:
    """A tokenizer_config.json's chat_template string is used with its bos/eos tokens, which
    may be `{"content": ...}` objects; stop strings come from the template and the EOS."""
    path = write_config(
        tmp_path / "tokenizer_config.json",
        chat_template=(
            "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>"
            "{% endfor %}"
        ),
        bos_token={"content": "<s>", "lstrip": False},
        eos_token="</s>",
    )
    t = load_template(str(path), tmp_path / "m.rkllm")
    assert t.name == f"file:{path.resolve()}"
    assert (t.bos_token, t.eos_token, t.stop) == ("<s>", "</s>", ("<|im_end|>", "</s>"))
    assert t.render([{"role": "user", "content": "x"}]) == "<s><|im_start|>x<|im_end|>"


def test_tokenizer_config_list_form_default_and_tool_use(tmp_path: Path) -> None:
    """HF's list of named templates: "default" without tools, "tool_use" with them."""
    path = write_config(
        tmp_path / "tc.json",
        chat_template=[
            {"name": "tool_use", "template": "tools:{{ tools | length }}"},
            {"name": "default", "template": "plain<think>"},
        ],
    )
    t = load_template(str(path), tmp_path / "m.rkllm")
    assert t.render([]) == "plain<think>"
    assert t.render([], tools=[WEATHER_TOOL]) == "tools:1"
    assert t.think_tags == ("<think>", "</think>")


def test_tokenizer_config_beside_the_model_wins_over_the_guess(tmp_path: Path) -> None:
    """spec None: `<stem>.tokenizer_config.json` beside the model first, then
    `tokenizer_config.json` in its directory, before the file-name guess."""
    model = tmp_path / "qwen3-0.6b.rkllm"
    write_config(tmp_path / "tokenizer_config.json", chat_template="dir")
    assert load_template(None, model).render([]) == "dir"
    write_config(tmp_path / "qwen3-0.6b.tokenizer_config.json", chat_template="stem")
    assert load_template(None, model).render([]) == "stem"


def test_tokenizer_config_with_family_markers_gets_the_familys_tokens(tmp_path: Path) -> None:
    """A Llama-3-shaped template without token fields borrows the family's BOS and EOS."""
    path = write_config(
        tmp_path / "tokenizer_config.json",
        chat_template="{{ bos_token }}<|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>",
    )
    t = load_template(str(path), tmp_path / "m.rkllm")
    assert (t.bos_token, t.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    assert t.stop == ("<|eot_id|>",)


def test_chat_template_jinja_beside_a_config_without_one(tmp_path: Path) -> None:
    """Recent HF repos keep the template in chat_template.jinja beside the config."""
    write_config(tmp_path / "tokenizer_config.json", eos_token="<|im_end|>")
    (tmp_path / "chat_template.jinja").write_text("J", encoding="utf-8")
    t = load_template(None, tmp_path / "m.rkllm")
    assert t.render([]) == "J"
    assert t.eos_token == "<|im_end|>"


def test_relative_paths_and_directories_resolve_beside_the_model(tmp_path: Path) -> None:
    """A relative spec is also looked up beside the model; a directory means its config."""
    sub = tmp_path / "tok"
    sub.mkdir()
    write_config(sub / "tokenizer_config.json", chat_template="D")
    model = tmp_path / "m.rkllm"
    assert load_template("tok/tokenizer_config.json", model).render([]) == "D"
    assert load_template(str(sub), model).render([]) == "D"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"bos_token": "<s>"}', "has no chat_template"),
        ('{"chat_template": 3}', "must be a string or a list"),
        ('{"chat_template": [{"name": "x"}]}', "entries must be"),
        ('{"chat_template": [{"name": "tool_use", "template": "t"}]}', "no 'default' entry"),
        ('{"chat_template": "x", "eos_token": 5}', "eos_token must be a string"),
        ('{"chat_template": "{% if %}"}', "syntax error at line 1"),
    ],
)
def test_malformed_tokenizer_configs_name_the_file(
    content: str, message: str, tmp_path: Path
) -> None:
    """Each malformed config is a TemplateError naming the file and the problem."""
    path = tmp_path / "tokenizer_config.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TemplateError, match=message) as info:
        load_template(str(path), tmp_path / "m.rkllm")
    assert str(path.resolve()) in str(info.value)
    assert info.value.__cause__ is None


def test_unreadable_files_and_unknown_names(tmp_path: Path) -> None:
    """An unknown name lists the built-ins; a non-UTF-8 file and a broken Jinja file are
    TemplateErrors naming the file."""
    with pytest.raises(TemplateError, match=r"unknown chat template 'vicuna'.*qwen2\.5"):
        load_template("vicuna", tmp_path / "m.rkllm")
    with pytest.raises(TemplateError, match="empty"):
        load_template(" ", tmp_path / "m.rkllm")
    bad = tmp_path / "bad.jinja"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(TemplateError, match="not UTF-8"):
        load_template(str(bad), tmp_path / "m.rkllm")
    broken = tmp_path / "broken.jinja"
    broken.write_text("ok\n{% for %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"broken\.jinja: chat template syntax error at line 2"):
        load_template(str(broken), tmp_path / "m.rkllm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TemplateError, match="not found"):
        load_template(str(tmp_path / "empty"), tmp_path / "m.rkllm")


def test_rendering_leaves_the_callers_messages_alone() -> None:
    """render copies the messages it is given; the normalised input is not modified."""
    messages = tool_round()
    before = json.dumps(messages)
    for template in BUILTIN_TEMPLATES.values():
        template.render(messages, tools=[WEATHER_TOOL], date_string="x")
    assert json.dumps(messages) == before


@pytest.mark.parametrize(
    ("name", "extends"),
    [
        ("qwen2.5", True),
        ("llama3", True),
        ("gemma", True),
        ("phi3", True),
        ("minicpm", True),
        # These drop the reasoning of earlier turns, so the next prompt rewrites the reply.
        ("qwen3", False),
        ("deepseek-r1", False),
    ],
)
def test_a_reply_extends_the_prompt(name: str, extends: bool) -> None:
    """Prompt + reply + end-of-turn string is a prefix of the next turn's prompt (what KV
    cache reuse relies on) for the families that keep assistant turns as generated."""
    template = BUILTIN_TEMPLATES[name]
    first = template.render(CHAT[:2], date_string="x")
    reply = "<think>\nhm\n</think>\n\nHello!" if template.think_tags else "Hello!"
    history = [*CHAT[:2], {"role": "assistant", "content": reply}, CHAT[3]]
    nxt = template.render(history, date_string="x")
    assert nxt.startswith(first + reply + template.stop[0]) is extends


HOSTILE = "{{ 7 * 7 }} {% for m in messages %}X{% endfor %} {{ raise_exception('boom') }} {#c#}"


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_template_syntax_in_messages_and_tools_is_data(name: str) -> None:
    """Jinja syntax inside message contents, tool descriptions and call arguments is text
    the template prints as is: never evaluated (no 49, no loop, no exception)."""
    tool = {
        "type": "function",
        "function": {"name": "f", "description": HOSTILE, "parameters": {}},
    }
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"q": HOSTILE}}}
    messages = [
        {"role": "system", "content": HOSTILE},
        {"role": "user", "content": HOSTILE},
        {"role": "assistant", "content": HOSTILE, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": HOSTILE},
        {"role": "user", "content": HOSTILE},
    ]
    if name == "gemma":  # no system role of its own, and strict alternation
        messages = [m for m in messages if m["role"] in ("user", "assistant")][:3]
    text = BUILTIN_TEMPLATES[name].render(messages, tools=[tool])
    assert "49" not in text and "boom" in text and "{{ 7 * 7 }}" in text
    assert "XX" not in text and "{#c#}" in text

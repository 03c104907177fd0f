"""Chat template, roles, thinking, and function calling."""

from __future__ import annotations

import json
import re

from .conftest import ModelFactory
from .driver import Driver

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "turn_on_light",
            "description": "Switch a light on",
            "parameters": {
                "type": "object",
                "properties": {
                    "entity_id": {"type": "string"},
                    "brightness": {"type": "integer", "minimum": 10},
                    "room": {"type": "string", "enum": ["kitchen", "hall"]},
                    "transition": {"type": "number", "default": 1.5},
                    "flash": {"type": "boolean"},
                    "optional": {"type": "string"},
                },
                "required": ["entity_id", "brightness", "room", "transition", "flash"],
            },
        },
    },
    {"name": "get_temperature", "parameters": {"type": "object", "properties": {}}},
]


def set_tools(
    drv: Driver,
    h: object,
    tools: object,
    system: str = "You control a home.",
    response: str | None = "tool_response",
) -> int:
    text = drv.ffi.new("char[]", (tools if isinstance(tools, str) else json.dumps(tools)).encode())
    sp = drv.ffi.new("char[]", system.encode())
    tr = drv.ffi.new("char[]", response.encode()) if response is not None else drv.ffi.NULL
    return int(drv.lib.rkllm_set_function_tools(h.ptr, sp, text, tr))


def set_template(drv: Driver, h: object, system: str | None, prefix: str, postfix: str) -> int:
    args = [
        drv.ffi.new("char[]", s.encode()) if s is not None else drv.ffi.NULL
        for s in (system, prefix, postfix)
    ]
    return int(drv.lib.rkllm_set_chat_template(h.ptr, *args))


def test_custom_template_replaces_the_default(drv: Driver, model: ModelFactory) -> None:
    """rkllm_set_chat_template: system once at an empty cache, prefix/postfix around each prompt."""
    h = drv.init(model())
    assert set_template(drv, h, "SYS|", "[U]", "[/U][A]") == 0
    h.run("first", keep_history=1)
    assert h.last_input()["inputs"][0]["templated"] == "SYS|[U]first[/U][A]"
    h.run("second", keep_history=1)
    assert h.last_input()["inputs"][0]["templated"] == "[U]second[/U][A]"


def test_set_chat_template_rejects_null_parts(drv: Driver, model: ModelFactory) -> None:
    """Every part of the template is required (pass "" for an empty one)."""
    h = drv.init(model())
    assert set_template(drv, h, None, "a", "b") == -1
    assert set_template(drv, h, "", "", "") == 0


def test_system_prompt_only_at_the_start_of_the_context(drv: Driver, model: ModelFactory) -> None:
    """With keep_history the second turn is not given the system prompt again."""
    h = drv.init(model())
    h.run("one", keep_history=1)
    assert h.last_input()["inputs"][0]["templated"].startswith("<|im_start|>system\n")
    h.run("two", keep_history=1)
    assert h.last_input()["inputs"][0]["templated"] == (
        "<|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"
    )


def test_thinking_model_thinks_only_when_asked(drv: Driver, model: ModelFactory) -> None:
    """thinking + enable_thinking: a <think> block first; off: none, and the template closes it."""
    h = drv.init(model(thinking=True))
    on = h.run("ponder", thinking=True).text()
    assert re.match(r"<think>\n.+\n</think>\n\n\S", on, re.S)
    off = h.run("ponder", thinking=False)
    assert "<think>" not in off.text()
    assert h.last_input()["inputs"][0]["templated"].endswith("<think>\n\n</think>\n\n")


def test_non_thinking_model_ignores_enable_thinking(drv: Driver, model: ModelFactory) -> None:
    """A model without thinking never emits <think>."""
    h = drv.init(model())
    assert "<think>" not in h.run("ponder", thinking=True).text()


def test_custom_template_overrides_enable_thinking(drv: Driver, model: ModelFactory) -> None:
    """After rkllm_set_chat_template, enable_thinking no longer applies: the model thinks."""
    h = drv.init(model(thinking=True))
    assert set_template(drv, h, "", "<u>", "</u>") == 0
    assert h.run("ponder", thinking=False).text().startswith("<think>\n")


def test_tool_calls_follow_the_schema(drv: Driver, model: ModelFactory) -> None:
    """A prompt naming a tool gets a <tool_call> block with required args filled from the schema."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS) == 0
    text = h.run("please turn_on_light in the kitchen").text()
    blocks = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)
    assert len(blocks) == 1
    assert text == f"<tool_call>\n{blocks[0]}\n</tool_call>"
    call = json.loads(blocks[0])
    assert call == {
        "name": "turn_on_light",
        "arguments": {
            "entity_id": "fake-entity_id",
            "brightness": 10,
            "room": "kitchen",
            "transition": 1.5,
            "flash": True,
        },
    }


def test_several_tools_named_give_several_calls(drv: Driver, model: ModelFactory) -> None:
    """Each tool named in the prompt gets its own block, in the tools' order."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS) == 0
    text = h.run("get_temperature then turn_on_light").text()
    names = [
        json.loads(b)["name"] for b in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)
    ]
    assert names == ["turn_on_light", "get_temperature"]
    assert (
        json.loads(re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)[1])["arguments"]
        == {}
    )


def test_tool_result_turn_quotes_the_result(drv: Driver, model: ModelFactory) -> None:
    """A role="tool" input is wrapped in the tool_response tag and answered with its content."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS, response="tool_response") == 0
    h.run("turn_on_light", keep_history=1)
    run = h.run('{"ok": true}', role="tool", keep_history=1)
    assert run.text() == 'The tool returned: {"ok": true}'
    assert h.last_input()["inputs"][0]["templated"] == (
        '<|im_start|>user\n<tool_response>\n{"ok": true}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_tools_appear_in_the_system_prompt(drv: Driver, model: ModelFactory) -> None:
    """The tools' system prompt and JSON go into the system part of the template."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS, system="You control a home.") == 0
    h.run("hello")
    templated = h.last_input()["inputs"][0]["templated"]
    assert templated.startswith("<|im_start|>system\nYou control a home.\n\n# Tools\n<tools>\n")
    assert json.dumps(TOOLS) in templated


def test_bad_tool_definitions_are_rejected(drv: Driver, model: ModelFactory) -> None:
    """Not JSON, not an array, or a tool without a name: -1 and the old tools stay."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS) == 0
    assert set_tools(drv, h, "[{") == -1
    assert set_tools(drv, h, '{"name": "x"}') == -1
    assert set_tools(drv, h, [{"type": "function", "function": {"description": "no name"}}]) == -1
    assert drv.lib.rkllm_set_function_tools(h.ptr, drv.ffi.NULL, drv.ffi.NULL, drv.ffi.NULL) == -1
    assert "<tool_call>" in h.run("turn_on_light").text()


def test_empty_tool_list_turns_tools_off(drv: Driver, model: ModelFactory) -> None:
    """Setting [] removes the tools: no calls, no tools block."""
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS) == 0
    assert set_tools(drv, h, []) == 0
    assert "<tool_call>" not in h.run("turn_on_light").text()
    assert "<tools>" not in h.last_input()["inputs"][0]["templated"]


def test_thinking_precedes_tool_calls(drv: Driver, model: ModelFactory) -> None:
    """A thinking model thinks, then calls the tool."""
    h = drv.init(model(thinking=True))
    assert set_tools(drv, h, TOOLS) == 0
    text = h.run("get_temperature", thinking=True).text()
    assert text.startswith("<think>\n")
    assert text.endswith("</tool_call>")


# ---- tools written into the prompt text (a server rendering the chat template itself) ----


def qwen_system(tools: list[dict[str, object]]) -> str:
    """A system turn as Qwen's / Hermes' template renders tools: one JSON object per line."""
    lines = "\n".join(json.dumps(t) for t in tools)
    return (
        "<|im_start|>system\nYou control a home.\n\n# Tools\n\nYou may call one or more "
        "functions to assist with the user query.\n\nYou are provided with function signatures "
        f"within <tools></tools> XML tags:\n<tools>\n{lines}\n</tools>\n\nFor each function "
        "call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    )


def user_turn(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def calls_in(text: str) -> list[dict[str, object]]:
    return [json.loads(b) for b in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)]


def test_tools_in_the_prompt_text_are_called_when_the_user_turn_names_them(
    drv: Driver, model: ModelFactory
) -> None:
    """No tools set through rkllm_set_function_tools: a <tools> block in the (rendered)
    prompt gives them; the latest user turn naming one gets the same <tool_call> block as
    with set tools (rule 3), in the block's order."""
    h = drv.init(model())
    assert h.set_template("", "", "") == 0
    prompt = qwen_system(TOOLS) + user_turn("please turn_on_light in the kitchen")
    text = h.run(prompt).text()
    assert calls_in(text) == calls_in(_with_set_tools(drv, model, "turn_on_light in the kitchen"))
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>")
    both = h.run(qwen_system(TOOLS) + user_turn("get_temperature then turn_on_light")).text()
    assert [c["name"] for c in calls_in(both)] == ["turn_on_light", "get_temperature"]


def _with_set_tools(drv: Driver, model: ModelFactory, text: str) -> str:
    h = drv.init(model())
    assert set_tools(drv, h, TOOLS) == 0
    return h.run(text).text()


def test_prompt_tools_are_named_only_by_the_latest_user_turn(
    drv: Driver, model: ModelFactory
) -> None:
    """The tools block itself, earlier turns and a tool-result turn name no tool: only the
    text after the last <|im_start|>user (up to its <|im_end|>) does."""
    h = drv.init(model())
    assert h.set_template("", "", "") == 0
    assert calls_in(h.run(qwen_system(TOOLS) + user_turn("hello")).text()) == []
    earlier = (
        qwen_system(TOOLS)
        + user_turn("turn_on_light")
        + "done<|im_end|>\n"
        + user_turn("thanks, that is all")
    )
    assert calls_in(h.run(earlier).text()) == []
    result = qwen_system(TOOLS) + user_turn(
        '<tool_response>\n{"turn_on_light": "ok"}\n</tool_response>'
    )
    assert calls_in(h.run(result).text()) == []


def test_prompt_tools_in_the_kv_cache_count_for_a_continuation(
    drv: Driver, model: ModelFactory
) -> None:
    """A continuation sends only the new turn: the <tools> block the cache already holds
    (kept history) still gives the tools."""
    h = drv.init(model())
    assert h.set_template("", "", "") == 0
    h.run(qwen_system(TOOLS) + user_turn("hello"), keep_history=1)
    text = h.run("<|im_end|>\n" + user_turn("now get_temperature"), keep_history=1).text()
    assert [c["name"] for c in calls_in(text)] == ["get_temperature"]


def test_prompt_tools_without_chatml_markers_read_the_text_after_the_block(
    drv: Driver, model: ModelFactory
) -> None:
    """Another template (no <|im_start|>user): the user's text is the input after its last
    </tools>; bad lines in the block are skipped."""
    h = drv.init(model())
    assert h.set_template("", "", "") == 0
    lines = "\n".join([json.dumps(TOOLS[0]), "not json", json.dumps(TOOLS[1])])
    block = f"Tools:\n<tools>\n{lines}\n</tools>\n"
    assert [c["name"] for c in calls_in(h.run(block + "User: get_temperature").text())] == [
        "get_temperature"
    ]
    assert calls_in(h.run(block + "User: hi").text()) == []


def test_set_tools_take_precedence_over_prompt_tools(drv: Driver, model: ModelFactory) -> None:
    """Tools set through rkllm_set_function_tools are the only ones: a <tools> block in the
    prompt is then just text."""
    h = drv.init(model())
    assert set_tools(drv, h, [TOOLS[1]]) == 0
    prompt = qwen_system([TOOLS[0]]) + user_turn("turn_on_light")
    assert calls_in(h.run(prompt).text()) == []

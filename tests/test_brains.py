"""Brains against real HTTP (tests/llm_server.py on 127.0.0.1) and the offline scripted brain."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from apps_registry.manifest.compiled import AgentSpec, BrainSpec
from conversations.brains import Brain, BrainError, BrainReply, ToolCall, brain_for, scripted_rules_problems
from tests.llm_server import LLMServer, Reply

TOOLS = [
    {
        "name": "filesystem.read",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {"name": "shell.run", "description": "Run a command", "parameters": {"type": "object", "properties": {}}},
]


@pytest.fixture
def llm():
    with LLMServer() as server:
        yield server


def agent(provider: str, *, model: str = "test-model", timeout: float = 5.0, **config: Any) -> AgentSpec:
    return AgentSpec(
        id="main",
        brain=BrainSpec(
            provider=provider, model=model, temperature=0.1, max_tokens=256, timeout=timeout, config=config
        ),
    )


def openai_brain(llm: LLMServer, **kw: Any) -> Brain:
    kw.setdefault("retry_base_delay", 0.01)
    timeout = kw.pop("timeout", 5.0)
    return brain_for(agent("openai", timeout=timeout, base_url=llm.base_url, api_key="sk-test", **kw))


def anthropic_brain(llm: LLMServer, **kw: Any) -> Brain:
    kw.setdefault("retry_base_delay", 0.01)
    return brain_for(agent("anthropic", base_url=llm.anthropic_base_url, api_key="ak-test", **kw))


def run(
    brain: Brain, messages: list[dict], tools: list[dict] | None = None, stream: bool = False
) -> tuple[BrainReply, list[str]]:
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    reply = asyncio.run(
        brain.complete(messages=messages, tools=tools or [], on_token=on_token if stream else None)
    )
    return reply, tokens


def brain_error(brain: Brain, messages: list[dict], **kw: Any) -> BrainError:
    with pytest.raises(BrainError) as info:
        run(brain, messages, **kw)
    return info.value


HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


# -- openai -------------------------------------------------------------------------------------


def test_openai_text_reply_and_request_shape(llm):
    llm.enqueue(Reply(text="Hi there!", usage={"prompt_tokens": 5, "completion_tokens": 3}))
    reply, _ = run(openai_brain(llm), HELLO, TOOLS)
    assert reply.text == "Hi there!"
    assert reply.tool_calls == []
    assert reply.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    req = llm.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.json["model"] == "test-model"
    assert req.json["temperature"] == 0.1
    assert req.json["max_tokens"] == 256
    assert req.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert [t["function"]["name"] for t in req.json["tools"]] == ["filesystem__read", "shell__run"]
    assert req.json["tools"][0]["type"] == "function"
    assert req.json["tools"][0]["function"]["parameters"]["required"] == ["path"]
    assert "stream" not in req.json


def test_openai_single_tool_call_mapped_back(llm):
    llm.enqueue(
        Reply(tool_calls=[{"id": "call_abc", "name": "filesystem__read", "params": {"path": "a.txt"}}])
    )
    reply, _ = run(openai_brain(llm), HELLO, TOOLS)
    assert reply.text == ""
    assert reply.tool_calls == [ToolCall(id="call_abc", name="filesystem.read", params={"path": "a.txt"})]


def test_openai_parallel_tool_calls(llm):
    llm.enqueue(Reply(tool_calls=[("filesystem.read", {"path": "a"}), ("shell.run", {"command": "ls -la"})]))
    reply, _ = run(openai_brain(llm), HELLO, TOOLS)
    assert [(c.name, c.params) for c in reply.tool_calls] == [
        ("filesystem.read", {"path": "a"}),
        ("shell.run", {"command": "ls -la"}),
    ]
    assert len({c.id for c in reply.tool_calls}) == 2


def test_openai_transcript_with_tool_results_is_sent_in_openai_shape(llm):
    llm.enqueue(Reply(text="done"))
    messages = [
        {"role": "user", "content": "read a"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "name": "filesystem.read", "params": {"path": "a"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "filesystem.read", "content": '{"success": true}'},
    ]
    run(openai_brain(llm), messages, TOOLS)
    sent = llm.requests[0].json["messages"]
    assert sent[1]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "filesystem__read", "arguments": '{"path": "a"}'},
        }
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": "c1", "content": '{"success": true}'}


def test_openai_streaming_text_deltas_in_order(llm):
    llm.enqueue(Reply(text="Hello streaming world", chunks=["Hel", "lo stre", "aming ", "world"]))
    reply, tokens = run(openai_brain(llm), HELLO, stream=True)
    assert tokens == ["Hel", "lo stre", "aming ", "world"]
    assert reply.text == "Hello streaming world"
    assert reply.usage["total_tokens"] == 18
    assert llm.requests[0].json["stream"] is True


def test_openai_streaming_tool_calls_assembled(llm):
    llm.enqueue(
        Reply(
            text="Let me look.",
            tool_calls=[
                ("filesystem.read", {"path": "docs/readme.md"}),
                ("shell.run", {"command": "echo hi"}),
            ],
        )
    )
    reply, tokens = run(openai_brain(llm), HELLO, TOOLS, stream=True)
    assert "".join(tokens) == "Let me look."
    assert [(c.name, c.params) for c in reply.tool_calls] == [
        ("filesystem.read", {"path": "docs/readme.md"}),
        ("shell.run", {"command": "echo hi"}),
    ]
    assert [c.id for c in reply.tool_calls] == ["call_srv_0", "call_srv_1"]


def test_openai_retries_429_then_succeeds(llm):
    llm.enqueue(
        Reply(status=429, error="slow down", headers={"Retry-After": "0"}), Reply(text="ok after retry")
    )
    reply, _ = run(openai_brain(llm), HELLO)
    assert reply.text == "ok after retry"
    assert len(llm.requests) == 2


def test_openai_retries_500_then_succeeds(llm):
    llm.enqueue(Reply(status=503, error="overloaded"), Reply(text="recovered"))
    reply, _ = run(openai_brain(llm), HELLO)
    assert reply.text == "recovered"
    assert len(llm.requests) == 2


def test_openai_rate_limited_after_bounded_retries(llm):
    for _ in range(4):
        llm.enqueue(Reply(status=429, error="quota exceeded", headers={"Retry-After": "0"}))
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "rate_limited"
    assert "quota exceeded" in err.message
    assert len(llm.requests) == 3  # 3 tries in all, then give up
    assert llm.pending == 1


def test_openai_401_is_auth_without_retry(llm):
    llm.enqueue(Reply(status=401, error="Incorrect API key provided"))
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "auth"
    assert "Incorrect API key provided" in err.message
    assert "api_key" in err.message
    assert len(llm.requests) == 1


def test_openai_slow_server_is_timeout(llm):
    llm.enqueue(Reply(text="too late", delay=1.5))
    err = brain_error(openai_brain(llm, timeout=0.3), HELLO)
    assert err.kind == "timeout"
    assert "0.3 s" in err.message


def test_openai_stalled_stream_is_timeout(llm):
    llm.enqueue(Reply(text="a b c d", chunk_delay=1.0))
    err = brain_error(openai_brain(llm, timeout=0.3), HELLO, stream=True)
    assert err.kind == "timeout"


def test_openai_context_overflow(llm):
    llm.enqueue(
        Reply(
            status=400,
            error="This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            error_code="context_length_exceeded",
        )
    )
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "context_overflow"
    assert "8192" in err.message
    assert len(llm.requests) == 1


def test_openai_malformed_json_is_bad_response(llm):
    llm.enqueue(Reply(raw=b'{"choices": [ {"message": '))
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "bad_response"
    assert "invalid JSON" in err.message


def test_openai_missing_choices_is_bad_response(llm):
    llm.enqueue(Reply(raw=b'{"id": "x", "object": "chat.completion"}'))
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "bad_response"
    assert "without choices" in err.message


def test_openai_tool_arguments_not_json_is_bad_response(llm):
    llm.enqueue(Reply(tool_calls=[{"name": "filesystem.read", "arguments": '{"path": '}]))
    err = brain_error(openai_brain(llm), HELLO, tools=TOOLS)
    assert err.kind == "bad_response"
    assert "filesystem.read" in err.message


def test_openai_error_in_stream_is_reported(llm):
    llm.enqueue(Reply(text="partial", stream_error={"message": "server exploded", "code": "server_error"}))
    err = brain_error(openai_brain(llm), HELLO, stream=True)
    assert err.kind == "bad_response"
    assert "server exploded" in err.message


def test_openai_connection_refused_is_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    brain = brain_for(agent("openai", base_url=f"http://127.0.0.1:{port}/v1", retry_base_delay=0.01))
    err = brain_error(brain, HELLO)
    assert err.kind == "connection"
    assert f"127.0.0.1:{port}" in err.message


def test_openai_dropped_connection_retried(llm):
    llm.enqueue(Reply(disconnect=True), Reply(text="second time lucky"))
    reply, _ = run(openai_brain(llm), HELLO)
    assert reply.text == "second time lucky"
    assert len(llm.requests) == 2


def test_empty_queue_fails_fast_with_clear_message(llm):
    err = brain_error(openai_brain(llm), HELLO)
    assert err.kind == "bad_response"
    assert "no scripted reply queued" in err.message
    assert len(llm.requests) == 1


# -- anthropic ----------------------------------------------------------------------------------


def test_anthropic_tool_use_round_trip(llm):
    llm.enqueue(
        Reply(
            text="Reading.",
            tool_calls=[{"id": "toolu_1", "name": "filesystem.read", "params": {"path": "a"}}],
        )
    )
    llm.enqueue(Reply(text="The file says hi."))
    brain = anthropic_brain(llm)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is in a?"}]
    first, _ = run(brain, messages, TOOLS)
    assert first.text == "Reading."
    assert first.tool_calls == [ToolCall(id="toolu_1", name="filesystem.read", params={"path": "a"})]
    assert first.usage == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

    messages += [
        {
            "role": "assistant",
            "content": first.text,
            "tool_calls": [{"id": "toolu_1", "name": "filesystem.read", "params": {"path": "a"}}],
        },
        {
            "role": "tool",
            "tool_call_id": "toolu_1",
            "name": "filesystem.read",
            "content": '{"success": true, "data": "hi"}',
        },
    ]
    second, _ = run(brain, messages, TOOLS)
    assert second.text == "The file says hi."
    assert second.tool_calls == []

    req = llm.requests[1]
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == "ak-test"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.json["system"] == "Be brief."
    assert req.json["max_tokens"] == 256
    assert req.json["tools"][0] == {
        "name": "filesystem__read",
        "description": "Read a file",
        "input_schema": TOOLS[0]["parameters"],
    }
    assert req.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "what is in a?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "filesystem__read", "input": {"path": "a"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": '{"success": true, "data": "hi"}',
                }
            ],
        },
    ]


def test_anthropic_parallel_results_merged_into_one_user_turn(llm):
    llm.enqueue(Reply(text="ok"))
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "t1", "name": "filesystem.read", "params": {}},
                {"id": "t2", "name": "shell.run", "params": {}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": '{"success": true}'},
        {"role": "tool", "tool_call_id": "t2", "content": '{"success": false, "error": "boom"}'},
    ]
    run(anthropic_brain(llm), messages, TOOLS)
    sent = llm.requests[0].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["tool_use_id"] for b in sent[2]["content"]] == ["t1", "t2"]
    assert sent[2]["content"][1]["is_error"] is True


def test_anthropic_streaming_text_and_tool_use(llm):
    llm.enqueue(
        Reply(
            text="Looking now", chunks=["Look", "ing ", "now"], tool_calls=[("shell.run", {"command": "ls"})]
        )
    )
    reply, tokens = run(anthropic_brain(llm), HELLO, TOOLS, stream=True)
    assert tokens == ["Look", "ing ", "now"]
    assert reply.text == "Looking now"
    assert [(c.name, c.params) for c in reply.tool_calls] == [("shell.run", {"command": "ls"})]
    assert llm.requests[0].json["stream"] is True


def test_anthropic_errors_map_to_kinds(llm):
    llm.enqueue(Reply(status=401, error="invalid x-api-key"))
    assert brain_error(anthropic_brain(llm), HELLO).kind == "auth"
    llm.enqueue(
        Reply(
            status=400,
            error="prompt is too long: 250000 tokens > 200000 maximum",
            error_code="invalid_request_error",
        )
    )
    assert brain_error(anthropic_brain(llm), HELLO).kind == "context_overflow"
    llm.enqueue(Reply(status=529, error="Overloaded"), Reply(text="fine now"))
    reply, _ = run(anthropic_brain(llm), HELLO)
    assert reply.text == "fine now"


# -- brain_for ----------------------------------------------------------------------------------


def test_brain_for_unknown_provider_names_the_field():
    # gemini is one of the original's OpenAI-compatible providers now; a made-up name is not.
    with pytest.raises(BrainError) as info:
        brain_for(agent("gemeni-x"))
    assert "agents.main.brain.provider" in info.value.message
    assert "openai" in info.value.message


def test_brain_for_unservable_provider_says_why():
    with pytest.raises(BrainError) as info:
        brain_for(agent("github_copilot"))
    assert "cannot be served by this daemon" in info.value.message


def test_openai_without_model_is_reported(llm):
    err = brain_error(brain_for(agent("openai", model="", base_url=llm.base_url)), HELLO)
    assert "brain.model" in err.message
    assert llm.requests == []


# -- scripted -----------------------------------------------------------------------------------

RULES = [
    {
        "when": r"list\s+(the\s+)?files",
        "steps": [
            {
                "call": "filesystem.find",
                "params": {"path": ".", "pattern": "*.py", "note": ["asked: {message}"]},
            },
            {"say": "Found: {result}"},
        ],
    },
    {
        "when": "both",
        "steps": [
            {
                "calls": [
                    {"call": "filesystem__read", "params": {"path": "a"}},
                    {"call": "shell.run", "params": {"command": "echo {message}"}},
                ]
            }
        ],
    },
    {"when": "^read", "steps": [{"call": "filesystem.read", "params": {"path": "x"}}]},
    {"when": "hello", "steps": [{"say": "Hello! You said: {message}"}]},
]


def scripted(rules: list[dict] = RULES) -> Brain:
    return brain_for(AgentSpec(id="main", brain=BrainSpec(provider="scripted", config={"rules": rules})))


def assistant_calls(reply: BrainReply) -> dict:
    return {
        "role": "assistant",
        "content": reply.text,
        "tool_calls": [{"id": c.id, "name": c.name, "params": c.params} for c in reply.tool_calls],
    }


def tool_result(call_id: str, result: dict) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "name": "x", "content": json.dumps(result)}


def test_scripted_when_regex_is_case_insensitive_and_first_match_wins():
    reply, _ = run(scripted(), [{"role": "user", "content": "Please LIST THE FILES and say hello"}])
    assert [c.name for c in reply.tool_calls] == ["filesystem.find"]
    reply, _ = run(scripted(), [{"role": "user", "content": "HELLO you"}])
    assert reply.text == "Hello! You said: HELLO you"
    assert reply.tool_calls == []


def test_scripted_steps_progress_through_transcript_with_substitution():
    brain = scripted()
    messages: list[dict] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "list files please"},
    ]
    first, _ = run(brain, messages)
    assert first.tool_calls == [
        ToolCall(
            id="call_0_0",
            name="filesystem.find",
            params={"path": ".", "pattern": "*.py", "note": ["asked: list files please"]},
        )
    ]
    messages += [
        assistant_calls(first),
        tool_result("call_0_0", {"success": True, "data": ["a.py", "b.py"], "error": None}),
    ]
    second, _ = run(brain, messages)
    assert second.tool_calls == []
    assert second.text == 'Found: {"success":true,"data":["a.py","b.py"],"error":null}'


def test_scripted_step_index_restarts_for_the_next_user_message():
    brain = scripted()
    first, _ = run(brain, [{"role": "user", "content": "list files"}])
    history = [
        {"role": "user", "content": "list files"},
        assistant_calls(first),
        tool_result("call_0_0", {"ok": 1}),
        {"role": "assistant", "content": "Found: {}"},
        {"role": "user", "content": "list files again"},
    ]
    again, _ = run(brain, history)
    assert [c.id for c in again.tool_calls] == ["call_0_0"]
    assert again.tool_calls[0].params["note"] == ["asked: list files again"]


def test_scripted_parallel_calls_then_exhausted_replies_with_results():
    brain = scripted()
    messages: list[dict] = [{"role": "user", "content": "do both"}]
    first, _ = run(brain, messages)
    assert [(c.id, c.name, c.params) for c in first.tool_calls] == [
        ("call_0_0", "filesystem.read", {"path": "a"}),
        ("call_0_1", "shell.run", {"command": "echo do both"}),
    ]
    messages += [
        assistant_calls(first),
        tool_result("call_0_0", {"data": "A"}),
        tool_result("call_0_1", {"data": "B"}),
    ]
    done, _ = run(brain, messages)
    assert done.tool_calls == []
    assert done.text == '[{"data":"A"},{"data":"B"}]'


def test_scripted_steps_exhausted_after_single_call_replies_with_result():
    brain = scripted()
    messages: list[dict] = [{"role": "user", "content": "read it"}]
    first, _ = run(brain, messages)
    messages += [
        assistant_calls(first),
        {"role": "tool", "tool_call_id": "call_0_0", "content": "plain text result"},
    ]
    done, _ = run(brain, messages)
    assert done.text == '"plain text result"'


def test_scripted_no_rule_matches():
    err = brain_error(scripted(), [{"role": "user", "content": "something else entirely"}])
    assert err.kind == "no_rule"
    assert "something else entirely" in err.message
    assert "agents.main.brain.config.rules" in err.message


def test_scripted_rule_without_when_matches_anything_and_streams_tokens():
    brain = scripted([{"steps": [{"say": "one two three four five six seven eight"}]}])
    reply, tokens = run(brain, [{"role": "user", "content": "anything"}], stream=True)
    assert len(tokens) > 1
    assert "".join(tokens) == reply.text == "one two three four five six seven eight"


def test_scripted_latest_user_message_wins_over_later_system_notice():
    brain = scripted()
    messages = [
        {"role": "user", "content": "hello first"},
        {"role": "assistant", "content": "Hello! You said: hello first"},
        {"role": "user", "content": "say hello again"},
        {"role": "system", "content": "background task finished"},
    ]
    reply, _ = run(brain, messages)
    assert reply.text == "Hello! You said: say hello again"


def test_scripted_message_containing_placeholder_is_not_expanded_twice():
    brain = scripted([{"steps": [{"say": "echo: {message}"}]}])
    reply, _ = run(brain, [{"role": "user", "content": "literal {result} here"}])
    assert reply.text == "echo: literal {result} here"


def test_scripted_malformed_rules_are_reported_with_paths():
    problems = scripted_rules_problems(
        [{"when": "(", "steps": [{"call": ""}, {"say": 3}, {"call": "a.b", "say": "x"}]}]
    )
    paths = [p["path"] for p in problems]
    assert paths == [
        "brain.config.rules[0].when",
        "brain.config.rules[0].steps[0].call",
        "brain.config.rules[0].steps[1].say",
        "brain.config.rules[0].steps[2]",
    ]
    assert scripted_rules_problems(RULES) == []
    err = brain_error(scripted([{"steps": [{"calls": []}]}]), [{"role": "user", "content": "x"}])
    assert err.kind == "bad_response"
    assert "agents.main.brain.config.rules[0].steps[0].calls" in err.message


# -- the original's brain options -----------------------------------------------------------------


def test_native_tool_use_false_describes_tools_in_the_prompt_and_reads_calls_from_text(llm):
    from dataclasses import replace

    llm.enqueue_text('Reading it. <tool_call>{"name": "filesystem.read", "arguments": {"path": "a.txt"}}</tool_call>')
    spec = agent("ollama", base_url=llm.base_url, api_key="sk-test").brain
    brain = brain_for(AgentSpec(id="main", brain=replace(spec, protocol="openai", native_tool_use=False)))
    history = [
        {"role": "user", "content": "read a.txt"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "shell.run", "params": {}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "c1", "name": "shell.run"},
    ]
    reply = asyncio.run(brain.complete(messages=history, tools=TOOLS))
    assert reply.text == "Reading it."
    assert [(c.name, c.params) for c in reply.tool_calls] == [("filesystem.read", {"path": "a.txt"})]
    sent = llm.requests[0].json
    assert "tools" not in sent  # nothing native
    assert "<tool_call>" in sent["messages"][0]["content"] and "filesystem.read" in sent["messages"][0]["content"]
    assert all(m["role"] != "tool" for m in sent["messages"])
    assert any("[result of shell.run]" in (m.get("content") or "") for m in sent["messages"])


def test_deepseek_and_other_original_providers_speak_openai_with_their_base_url(llm):
    llm.enqueue_text("hello from deepseek")
    spec = BrainSpec(provider="deepseek", protocol="openai", model="deepseek-chat", top_p=0.7,
                     config={"base_url": llm.base_url, "api_key": "sk-x"})
    reply = asyncio.run(brain_for(AgentSpec(id="main", brain=spec)).complete(messages=HELLO, tools=[]))
    assert reply.text == "hello from deepseek" and llm.requests[0].json["top_p"] == 0.7

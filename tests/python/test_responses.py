"""The official OpenAI Python SDK, and the OpenAI Agents SDK, against /v1/responses (echo
provider). Every answer is checked against OpenAI's published Responses schemas
(tests/fixtures/openai/responses.json, a copy of their closure in OpenAI's openapi.json)."""

import asyncio
import json
import pathlib
import time

import jsonschema
import openai
import pytest

from test_openai_sdk import KEY, base_url, client, raw  # noqa: F401 (base_url: the fixture)

RESPONSES = json.loads(
    (pathlib.Path(__file__).parent.parent / "fixtures" / "openai" / "responses.json").read_text()
)
DOCUMENT = {"components": RESPONSES["components"]}


def validate(instance, name):
    jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}", **DOCUMENT})


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_create_and_retrieve(base_url):
    c = client(base_url)
    r = c.responses.create(model="gpt-4o-mini", input="hello responses", instructions="be brief")
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.output_text == "Echo: hello responses"
    assert r.instructions == "be brief"
    assert r.usage.output_tokens == 3 and r.usage.total_tokens > 3
    got = c.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.status == "completed"
    validate(raw(base_url, "GET", f"/responses/{r.id}").json(), "Response")


def test_item_input_and_input_items(base_url):
    c = client(base_url)
    r = c.responses.create(
        model="gpt-4o-mini",
        input=[
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one two"}]},
        ],
    )
    assert r.output_text == "Echo: one two"
    items = c.responses.input_items.list(r.id)
    assert [i.role for i in items.data] == ["user", "developer"]  # newest first
    assert items.first_id == items.data[0].id and not items.has_more
    asc = c.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.role for i in asc.data] == ["developer"] and asc.has_more
    validate(raw(base_url, "GET", f"/responses/{r.id}/input_items").json(), "ResponseItemList")


def test_raw_event_stream_in_order(base_url):
    stream = client(base_url).responses.create(model="gpt-4o-mini", input="stream these words", stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Echo: stream these words"
    assert events[-1].response.output_text == text
    # On the wire, each event validates (and its `event:` line is its type).
    res = raw(base_url, "POST", "/responses", {"input": "stream these words", "stream": True})
    names = [line[len("event: "):] for line in res.text.splitlines() if line.startswith("event: ")]
    wire = [json.loads(line[len("data: "):]) for line in res.text.splitlines() if line.startswith("data: ")]
    assert names == [e["type"] for e in wire] == types
    for e in wire:
        validate(e, "ResponseStreamEvent")


def test_stream_helper(base_url):
    with client(base_url).responses.stream(model="gpt-4o-mini", input="helper words") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Echo: helper words"
    assert final.status == "completed" and final.output_text == "Echo: helper words"


def test_previous_response_id_chains(base_url):
    c = client(base_url)
    first = c.responses.create(model="gpt-4o-mini", input="first words here")
    alone = c.responses.create(model="gpt-4o-mini", input="second")
    second = c.responses.create(model="gpt-4o-mini", input="second", previous_response_id=first.id)
    assert second.output_text == "Echo: second"
    assert second.previous_response_id == first.id
    # The echo model counts every word it is sent: the first exchange came first.
    assert second.usage.input_tokens > alone.usage.input_tokens
    third = c.responses.create(model="gpt-4o-mini", input="third", previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_nope")
    assert err.value.code == "previous_response_not_found"
    unstored = c.responses.create(model="gpt-4o-mini", input="not kept", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="gpt-4o-mini", input="x", previous_response_id=unstored.id)
    # Another key sees none of it.
    with pytest.raises(openai.NotFoundError):
        client(base_url, key="other-key").responses.retrieve(first.id)


def test_function_tool_round_trip(base_url):
    c = client(base_url)
    r = c.responses.create(
        model="gpt-4o-mini",
        input='what is it like? [tool:get_weather {"city": "Paris"}]',
        tools=[WEATHER],
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert r.tools[0].name == "get_weather"
    done = c.responses.create(
        model="gpt-4o-mini",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert done.status == "completed"
    assert "sunny" in done.output_text
    # Streamed, the call comes as argument deltas and a done event.
    events = list(
        c.responses.create(
            model="gpt-4o-mini", input='[tool:get_weather {"city": "Oslo"}]', tools=[WEATHER], stream=True
        )
    )
    args = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(args) == 1 and json.loads(args[0].arguments) == {"city": "Oslo"}
    assert events[-1].type == "response.completed"


def wait_until_ended(c, rid, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        r = c.responses.retrieve(rid)
        if r.status not in ("queued", "in_progress"):
            return r
        time.sleep(0.05)
    pytest.fail(f"{rid} did not end")


def test_background_poll(base_url):
    c = client(base_url)
    r = c.responses.create(model="gpt-4o-mini", input="in the background", background=True)
    assert r.status in ("queued", "in_progress") and r.background
    done = wait_until_ended(c, r.id)
    assert done.status == "completed" and done.output_text == "Echo: in the background"


def test_background_cancel(base_url):
    c = client(base_url)
    r = c.responses.create(model="gpt-4o-mini", input="[slow] take your time", background=True)
    started = time.time()
    cancelled = c.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert time.time() - started < 5
    assert c.responses.cancel(r.id).status == "cancelled"  # idempotent
    assert c.responses.retrieve(r.id).status == "cancelled"
    validate(raw(base_url, "POST", f"/responses/{r.id}/cancel").json(), "Response")
    foreground = c.responses.create(model="gpt-4o-mini", input="done at once")
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(foreground.id)


def test_background_stream_resumes_after_a_sequence_number(base_url):
    c = client(base_url)
    stream = c.responses.create(model="gpt-4o-mini", input="resume me from here please", background=True, stream=True)
    seen = []
    for e in stream:
        seen.append(e)
        if e.type == "response.output_text.delta":
            break
    stream.close()
    rid, last = seen[0].response.id, seen[-1].sequence_number
    rest = list(c.responses.retrieve(rid, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1].type == "response.completed"
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    assert text == "Echo: resume me from here please"
    # The whole log again, from the start.
    again = list(c.responses.retrieve(rid, stream=True))
    assert [e.sequence_number for e in again] == list(range(len(again)))


def test_delete(base_url):
    c = client(base_url)
    r = c.responses.create(model="gpt-4o-mini", input="delete me")
    res = raw(base_url, "DELETE", f"/responses/{r.id}")
    assert res.status_code == 200
    assert res.json() == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(r.id)


def test_bad_requests_are_400_with_the_param(base_url):
    for body, param in [
        ({"model": "gpt-4o-mini"}, "input"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "background": True, "store": False}, "background"),
    ]:
        res = raw(base_url, "POST", "/responses", body)
        assert res.status_code == 400, body
        assert res.json()["error"]["type"] == "invalid_request_error"
        assert res.json()["error"]["param"] == param
    res = raw(base_url, "POST", "/responses", {"input": "x", "model": "nope"})
    assert res.status_code == 404 and res.json()["error"]["code"] == "model_not_found"


def test_models_list_the_agents(base_url):
    ids = [m.id for m in client(base_url).models.list()]
    assert "gpt-4o-mini" in ids and "agent:default" in ids
    r = client(base_url).responses.create(model="agent:default", input="hello agent")
    assert r.model == "agent:default" and r.output_text == "Echo: hello agent"


def test_openai_agents_sdk_runs_a_function_tool(base_url):
    import agents

    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    agents.set_tracing_disabled(True)
    model = agents.OpenAIResponsesModel(
        model="gpt-4o-mini",
        openai_client=openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10),
    )
    agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model)
    result = asyncio.run(agents.Runner.run(agent, '[tool:get_weather {"city": "Paris"}]'))
    assert calls == ["Paris"]
    assert "sunny in Paris" in result.final_output

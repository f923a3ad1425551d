"""The official OpenAI Python SDK against agent-api's /v1 routes (echo provider, one API key).

AGENT_API_BIN names the server binary; the test starts it on a free port.
"""

import json
import os
import subprocess

import openai
import pytest

KEY = "python-sdk-key"


@pytest.fixture(scope="module")
def base_url():
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": "0",
        "LOG_FORMAT": "json",
        "API_KEYS": f"sdk={KEY},other=other-key",
        "ECHO_DELAY_MS": "0",
        "MODELS": "gpt-4o-mini,gpt-4o",
        "RATE_LIMIT_BURST": "1000",
    }
    proc = subprocess.Popen(
        [os.environ["AGENT_API_BIN"]], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            message = json.loads(line).get("message", "")
            if message.startswith("listening on "):
                yield message.removeprefix("listening on ") + "/v1"
                break
        else:
            pytest.fail("the server exited before listening")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client(base_url, key=KEY):
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


def test_non_stream(base_url):
    done = client(base_url).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hello sdk"}],
        temperature=0.3,
        max_completion_tokens=50,
    )
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == "Echo: hello sdk"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.total_tokens > 0
    assert done.model == "gpt-4o-mini"


def test_stream(base_url):
    stream = client(base_url).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Echo: stream me"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 3


def test_models_list(base_url):
    ids = [m.id for m in client(base_url).models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "agent:default"]


def test_wrong_key_raises_authentication_error(base_url):
    with pytest.raises(openai.AuthenticationError) as err:
        client(base_url, key="wrong").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.status_code == 401


def test_bad_request_raises_bad_request_error(base_url):
    with pytest.raises(openai.BadRequestError):
        client(base_url).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=5
        )


# What /v1 answers validates against OpenAI's own published schemas
# (tests/fixtures/openai/schemas.json, a copy of the components of OpenAI's openapi.json).

import copy
import pathlib

import urllib.error
import urllib.request

import jsonschema

SCHEMAS = json.loads(
    (pathlib.Path(__file__).parent.parent / "fixtures" / "openai" / "schemas.json").read_text()
)


def _nullable_to_anyof(node):
    """OpenAPI 3.0's `nullable: true` means nothing to JSON Schema: rewrite it as anyOf."""
    if isinstance(node, dict):
        node = {k: _nullable_to_anyof(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_anyof(v) for v in node]
    return node


DOCUMENT = {"components": _nullable_to_anyof(copy.deepcopy(SCHEMAS["components"]))}


def validate(instance, name):
    schema = {"$ref": f"#/components/schemas/{name}", **DOCUMENT}
    jsonschema.validate(instance, schema)


class Raw:
    def __init__(self, status_code, text):
        self.status_code, self.text = status_code, text

    def json(self):
        return json.loads(self.text)


def raw(base_url, method, path, body=None, key=KEY):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return Raw(res.status, res.read().decode())
    except urllib.error.HTTPError as err:
        return Raw(err.code, err.read().decode())


def test_answers_validate_against_openai_schemas(base_url):
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "schema check"}]}
    validate(request, "CreateChatCompletionRequest")

    res = raw(base_url, "POST", "/chat/completions", request)
    assert res.status_code == 200
    validate(res.json(), "CreateChatCompletionResponse")

    streamed = dict(request, stream=True, stream_options={"include_usage": True})
    res = raw(base_url, "POST", "/chat/completions", streamed)
    chunks = [
        json.loads(line[len("data: "):])
        for line in res.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert len(chunks) > 3
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert res.text.rstrip().endswith("data: [DONE]")

    res = raw(base_url, "GET", "/models")
    validate(res.json(), "ListModelsResponse")

    for status, res in [
        (401, raw(base_url, "POST", "/chat/completions", request, key="wrong")),
        (400, raw(base_url, "POST", "/chat/completions", {"model": "m", "messages": []})),
        (404, raw(base_url, "GET", "/nothing")),
    ]:
        assert res.status_code == status
        validate(res.json(), "ErrorResponse")

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
        "API_KEYS": f"sdk={KEY}",
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
    assert ids == ["gpt-4o-mini", "gpt-4o"]


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

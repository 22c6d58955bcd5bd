import asyncio
import http.server
import threading

import httpx
import pytest

from homeops.core import http as hhttp
from homeops.core.errors import ExitCode, HomeopsTimeout, HttpUnavailable
from homeops.core.retry import RetryPolicy, is_retryable_http_status
from tests.fixtures.common import free_port


class Recorder:
    def __init__(self):
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def scripted(answers):
    """A MockTransport answering with the given statuses/exceptions in order."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"n": len(calls)})

    return httpx.MockTransport(handler), calls


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        pytest.param(502, True, id="502"),
        pytest.param(503, True, id="503"),
        pytest.param(504, True, id="504"),
        pytest.param(500, False, id="500"),
        pytest.param(400, False, id="400"),
        pytest.param(404, False, id="404"),
        pytest.param(409, False, id="409"),
        pytest.param(200, False, id="200"),
    ],
)
def test_status_predicate(status, retry):
    assert is_retryable_http_status(status) is retry


REQ = httpx.Request("GET", "http://127.0.0.1/")


@pytest.mark.parametrize(
    ("exc", "idempotent", "retry"),
    [
        pytest.param(httpx.ConnectError("refused", request=REQ), False, True, id="connect-post"),
        pytest.param(httpx.ConnectTimeout("t", request=REQ), False, True, id="connect-timeout"),
        pytest.param(httpx.PoolTimeout("t", request=REQ), False, True, id="pool-timeout-post"),
        pytest.param(httpx.ReadTimeout("t", request=REQ), True, True, id="read-timeout-get"),
        pytest.param(httpx.ReadTimeout("t", request=REQ), False, False, id="read-timeout-post"),
        pytest.param(httpx.RemoteProtocolError("x", request=REQ), True, True, id="dropped-get"),
        pytest.param(httpx.RemoteProtocolError("x", request=REQ), False, False, id="dropped-post"),
        pytest.param(ValueError("bug"), True, False, id="programming-error"),
        pytest.param(HttpUnavailable("x"), True, False, id="already-translated"),
    ],
)
def test_error_predicate(exc, idempotent, retry):
    assert hhttp.is_retryable_http_error(exc, idempotent=idempotent) is retry


async def test_retries_503_then_succeeds():
    transport, calls = scripted([503, 502, 200])
    sleep = Recorder()
    async with hhttp.make_client(base_url="http://aloha", transport=transport) as client:
        response = await hhttp.request(client, "GET", "/", sleep=sleep)
    assert response.status_code == 200
    assert len(calls) == 3
    assert sleep.delays == [0.5, 1.0]


async def test_gives_up_after_three_attempts():
    transport, calls = scripted([503])
    sleep = Recorder()
    async with hhttp.make_client(base_url="http://aloha", transport=transport) as client:
        with pytest.raises(
            HttpUnavailable, match=r"GET http://aloha/x: HTTP 503 after 3 attempt"
        ) as info:
            await hhttp.request(client, "GET", "/x", sleep=sleep)
    assert info.value.exit_code == ExitCode.UNAVAILABLE
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 404, 409, 500])
async def test_never_retries_other_statuses(status):
    transport, calls = scripted([status, 200])
    sleep = Recorder()
    async with hhttp.make_client(transport=transport) as client:
        response = await hhttp.request(
            client, "POST", "http://aloha/run_task", json={}, sleep=sleep
        )
    assert response.status_code == status
    assert len(calls) == 1
    assert sleep.delays == []


async def test_post_not_retried_after_read_timeout():
    transport, calls = scripted([httpx.ReadTimeout("slow", request=REQ), 200])
    async with hhttp.make_client(transport=transport) as client:
        with pytest.raises(HomeopsTimeout):
            await hhttp.request(client, "POST", "http://aloha/run_task", sleep=Recorder())
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("method", "retried"),
    [
        pytest.param("GET", True, id="get"),
        pytest.param("PUT", True, id="put"),
        pytest.param("DELETE", True, id="delete"),
        pytest.param("POST", False, id="post"),
        pytest.param("PATCH", False, id="patch"),
    ],
)
async def test_read_timeout_retried_only_for_idempotent_methods(method, retried):
    transport, calls = scripted([httpx.ReadTimeout("slow", request=REQ), 200])
    async with hhttp.make_client(transport=transport) as client:
        if retried:
            response = await hhttp.request(client, method, "http://x/", sleep=Recorder())
            assert response.status_code == 200
        else:
            with pytest.raises(HomeopsTimeout):
                await hhttp.request(client, method, "http://x/", sleep=Recorder())
    assert len(calls) == (2 if retried else 1)


async def test_post_marked_idempotent_is_retried():
    transport, calls = scripted([httpx.ReadTimeout("slow", request=REQ), 200])
    async with hhttp.make_client(transport=transport) as client:
        response = await hhttp.request(
            client, "POST", "http://aloha/stop", idempotent=True, sleep=Recorder()
        )
    assert response.status_code == 200
    assert len(calls) == 2


async def test_refused_port_on_loopback_is_retried_then_unavailable():
    port = free_port()
    sleep = Recorder()
    async with hhttp.make_client(timeout=2) as client:
        with pytest.raises(HttpUnavailable, match=rf"127\.0\.0\.1:{port}/live: .*3 attempt"):
            await hhttp.request(client, "GET", f"http://127.0.0.1:{port}/live", sleep=sleep)
    assert sleep.delays == [0.5, 1.0]


async def test_custom_policy_attempts():
    transport, calls = scripted([503])
    async with hhttp.make_client(transport=transport) as client:
        with pytest.raises(HttpUnavailable):
            await hhttp.request(
                client, "GET", "http://x/", policy=RetryPolicy(attempts=1), sleep=Recorder()
            )
    assert len(calls) == 1


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        code = 503 if type(self).hits == 1 else 200
        body = b"Aloha API server is running"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def test_real_server_on_loopback():
    _Handler.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        async with hhttp.make_client(base_url=f"http://127.0.0.1:{port}") as client:
            response = await hhttp.request(client, "GET", "/", sleep=Recorder())
        assert response.status_code == 200
        assert "Aloha API server is running" in response.text
        assert _Handler.hits == 2
    finally:
        server.shutdown()
        server.server_close()
        await asyncio.sleep(0)


def test_retry_policy_validation():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="delays"):
        RetryPolicy(delays=())
    policy = RetryPolicy(attempts=5)
    assert [policy.delay_after(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 2.0]


async def test_proxy_environment_is_ignored(monkeypatch):
    # A stray proxy in a service's environment must not reroute LAN/loopback requests.
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    _Handler.hits = 1  # answer 200 at once
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        async with hhttp.make_client(timeout=5) as client:
            response = await hhttp.request(
                client, "GET", f"http://127.0.0.1:{port}/", policy=RetryPolicy(attempts=1)
            )
        assert response.status_code == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("answers", "arrived"),
    [
        pytest.param([httpx.ConnectError("refused")], False, id="refused"),
        pytest.param([httpx.ConnectTimeout("slow connect")], False, id="connect-timeout"),
        pytest.param([503], False, id="503s"),
        pytest.param([httpx.ReadTimeout("no answer")], True, id="read-timeout"),
        pytest.param([httpx.RemoteProtocolError("dropped")], True, id="dropped-mid-answer"),
    ],
)
async def test_whether_a_failed_post_may_have_arrived(answers, arrived):
    transport, _ = scripted(answers)
    async with hhttp.make_client(transport=transport) as client:
        with pytest.raises((HttpUnavailable, HomeopsTimeout)) as caught:
            await hhttp.request(
                client, "POST", "http://127.0.0.1:9/run", idempotent=False, sleep=Recorder()
            )
    assert hhttp.request_may_have_arrived(caught.value) is arrived
    # Anything the seam did not raise is not known to have stayed unsent.
    assert hhttp.request_may_have_arrived(RuntimeError("x")) is True

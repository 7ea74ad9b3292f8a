"""Issue 18: a server a lab can leave running. Each numbered defect of the issue against a real
``ijtorch serve`` process on a free loopback port: (1) deadlines and slots after the body,
per-client fairness; (2, 3) admission by estimated cost, replies in flight and job results
counted, results expiring; (4) cancellation on disconnect and per-request deadlines; (5) client
errors are short 4xx; (6) Host/Origin check, token file/env, ``Bearer`` in any case; (7) health,
Prometheus metrics, access log, ``--port 0``, option checks, SIGTERM drain, jobs across a SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _serve_model import CALIBRATION_IMAGE, make_tiny_model  # noqa: E402
from _serve_util import ServerProcess  # noqa: E402

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'ijtorch[serve]')")
pytest.importorskip("uvicorn", reason="the server tests need uvicorn (pip install 'ijtorch[serve]')")
pytest.importorskip("prometheus_client", reason="the server needs prometheus_client (pip install 'ijtorch[serve]')")

from ijtorch.serve import Client, ServerError  # noqa: E402
from ijtorch.serve._wire import MEDIA_TYPE, encode  # noqa: E402

TOKEN = "hardening-token-0123456789"


@pytest.fixture(scope="module")
def image(shared_data):
    from ijtorch.io.tiff import read_tiff

    return read_tiff(shared_data / CALIBRATION_IMAGE).data  # (260, 347) uint8


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, image):
    folder = tmp_path_factory.mktemp("models")
    make_tiny_model(folder, image)
    return folder


@pytest.fixture(scope="module")
def server(models_dir):
    with ServerProcess(models_dir, "--threads", "1", "--max-queue", "4", "--header-timeout", "2",
                       "--body-timeout", "3", "--send-timeout", "3", "--max-pixels", "1000000",
                       "--max-memory-gb", "0.25", "--max-request-mb", "64") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url, timeout=60) as c:
        yield c


def _body(image, **header):
    return encode({"axes": "YX", "model": "tiny", **header}, {"image": image})


def _post(url, path, body, timeout=60.0, **headers):
    return httpx.post(url + path, content=body, headers={"Content-Type": MEDIA_TYPE, **headers}, timeout=timeout)


def _raw(port: int, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    return s


def _reply(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    return out


def _slow(image):
    # TYX with 32-px tiles: thousands of forward passes, seconds of work even on an idle machine
    # (6 planes took 0.4 s once prediction got faster, and finished before the deadline or the kill)
    return np.stack([image[:128, :128]] * 120)


SLOW = {"axes": "TYX", "tile_size": 32, "overlap": 24}


def _wait_idle(client, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = client.metrics()
        if m["queue"]["active"] == 0 and m["memory"]["reserved_bytes"] == 0:
            return m
        time.sleep(0.1)
    raise AssertionError(f"server still busy after {seconds} s: {client.metrics()['queue']}")


# ------------------------------------------------------------------------------- (1) deadlines, slots
def test_stalled_uploads_take_no_slot_and_time_out(server, client, image):
    head = (f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: {MEDIA_TYPE}\r\n"
            "Content-Length: 50000000\r\n\r\n").encode()
    stalled = [_raw(server.port, head + bytes(100)) for _ in range(12)]  # 3x --max-queue, then holding
    chunked = _raw(server.port, (f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MEDIA_TYPE}\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\nFFFFFFF\r\nabc").encode())
    t0 = time.monotonic()
    for _ in range(3):  # valid requests are served next to the stalled uploads
        assert client.segment(image[:64, :64], "YX", model="tiny").labels.shape == (64, 64)
    assert client.metrics()["queue"]["active"] == 0  # the uploads hold no slot
    for s in stalled + [chunked]:
        reply = _reply(s, 10)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"did not arrive within 3 s" in reply
        s.close()
    assert time.monotonic() - t0 < 12
    _wait_idle(client)


def test_half_sent_request_head_is_dropped_and_cl_plus_te_refused(server):
    s = _raw(server.port, b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
    t0 = time.monotonic()
    assert _reply(s, 10) == b"" and time.monotonic() - t0 < 6  # closed after --header-timeout 2
    s.close()
    idle = socket.create_connection(("127.0.0.1", server.port))  # connects and sends nothing at all
    assert _reply(idle, 10) == b""
    idle.close()
    both = _raw(server.port, (f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MEDIA_TYPE}\r\n"
                              "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode())
    reply = _reply(both, 10)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    both.close()


def test_one_client_cannot_take_every_slot(server, client, image):
    movie = _slow(image)
    mine = [client.submit_segment(movie, "TYX", model="tiny", tile_size=32, overlap=24) for _ in range(3)]
    with pytest.raises(ServerError) as info:  # 3 of 4 slots is this client's share
        client.submit_segment(movie, "TYX", model="tiny", tile_size=32, overlap=24)
    assert info.value.status == 503 and "--max-per-client" in info.value.message and info.value.retry_after
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60)
    try:  # another client address (still loopback) gets the slot that is left
        r = other.post(server.url + "/segment", content=_body(image[:64, :64]), headers={"Content-Type": MEDIA_TYPE})
        assert r.status_code == 200, r.text
    finally:
        other.close()
    for j in mine:
        client.cancel(j)
    _wait_idle(client)


# ------------------------------------------------------------------------------- (2, 3) cost
def test_admission_by_estimated_cost(server, client, image):
    r = _post(server.url, "/segment", _body(image[:256, :256], scale=10))  # 64 KiB body, 6.5 Mpx for the model
    assert r.status_code == 413 and "--max-pixels" in r.json()["error"] and "scale 10" in r.json()["error"], r.text
    frame = np.zeros((1000, 1000), np.uint8)  # 1 Mpx: within --max-pixels, ~220 MB of work
    assert _post(server.url, "/segment", _body(frame)).status_code == 200
    r = _post(server.url, "/segment", _body(frame, test_time_augmentation=True))  # twice the maps: over 0.25 GB
    assert r.status_code == 413 and "--max-memory-gb" in r.json()["error"], r.text
    movie = encode({"axes": "TYX", "model": "tiny"}, {"image": np.zeros((3, 1000, 1000), np.uint8)})
    assert _post(server.url, "/segment", movie).status_code == 200  # frame by frame: the cost of one frame
    r = _post(server.url, "/normalize", encode({"axes": "TYX"}, {"image": np.zeros((16, 1000, 1000), np.float32)}))
    assert r.status_code == 413 and "--max-memory-gb" in r.json()["error"], r.text  # the whole stack at once
    metrics = client.metrics()
    assert metrics["memory"]["budget_bytes"] == 1 << 28 and metrics["memory"]["peak_reserved_bytes"] > 200e6
    _wait_idle(client)


def test_replies_waiting_for_clients_that_never_read_are_counted_then_dropped(server, client):
    data = np.random.default_rng(0).random((1500, 1500), np.float32)  # 9 MB reply each
    body = encode({"axes": "YX"}, {"image": data})
    head = (f"POST /normalize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MEDIA_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    socks = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(head + body)  # and never read
        socks.append(s)
    deadline, seen = time.monotonic() + 20, 0
    while time.monotonic() < deadline:
        m = client.metrics()
        seen = max(seen, m["memory"]["reserved_bytes"])
        if m["queue"]["active"] == 0 and seen >= 2 * data.nbytes:
            break
        time.sleep(0.05)
    assert seen >= 2 * data.nbytes, seen  # replies in flight stay in the budget while nobody reads
    assert _wait_idle(client, 20)["memory"]["reserved_bytes"] == 0  # --send-timeout 3: dropped
    for s in socks:
        s.close()


def test_job_results_go_to_disk_and_expire_by_size(models_dir, image):
    with ServerProcess(models_dir, "--threads", "1", "--job-results-mb", "0.02",
                       "--state-dir", str(models_dir / "state-expire")) as srv, Client(srv.url) as c:
        first = c.submit_segment(image[:64, :64], "YX", model="tiny")
        c.wait(first, timeout=60)
        second = c.submit_segment(image[:100, :100], "YX", model="tiny")
        c.wait(second, timeout=60)  # 20 KB of results: the older one goes
        with pytest.raises(ServerError) as info:
            c.result(first)
        assert info.value.status == 410 and "expired" in info.value.message
        assert c.job(first)["result_expired"] is True
        assert list((models_dir / "state-expire" / "results").glob("*.bin"))


# ------------------------------------------------------------------------------- (4) cancellation
def test_clients_that_hang_up_free_their_work(server, client, image):
    body = encode({**SLOW, "model": "tiny"}, {"image": _slow(image)})
    before = client.metrics()

    def impatient(_):
        try:
            _post(server.url, "/segment", body, timeout=0.5)
        except httpx.TimeoutException:
            return "gone"
        return "answered"

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(impatient, range(3)))
    assert outcomes == ["gone"] * 3
    t0 = time.monotonic()
    after = _wait_idle(client, 15)  # queued ones dropped, the running one stopped at its next tile
    assert time.monotonic() - t0 < 10
    gone = [m["routes"].get("/segment", {"status": {}})["status"].get("499", 0) for m in (before, after)]
    assert gone[1] - gone[0] >= 3, after["routes"]
    assert after["cpu_seconds"]["abandoned"] < 5, after["cpu_seconds"]
    assert "500" not in after["routes"]["/segment"]["status"]
    prom = httpx.get(server.url + "/metrics", headers={"Accept": "text/plain"}).text
    assert re.search(r'ijtorch_requests_total\{route="/segment",status="499"\} [1-9]', prom), prom[:2000]
    assert 'ijtorch_requests_cancelled_total{reason="disconnect"}' in prom


def test_request_deadline_gives_504_and_stops_the_work(server, client, image):
    body = encode({**SLOW, "model": "tiny"}, {"image": _slow(image)})
    t0 = time.monotonic()
    r = _post(server.url, "/segment", body, **{"X-Request-Timeout": "0.5"})
    assert r.status_code == 504 and "X-Request-Timeout" in r.json()["error"], r.text
    assert time.monotonic() - t0 < 5
    _wait_idle(client, 10)
    assert _post(server.url, "/segment", _body(image[:8, :8]), **{"X-Request-Timeout": "abc"}).status_code == 400


# ------------------------------------------------------------------------------- (5) client errors
def _message(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<I", len(header)) + header + payload


def test_client_errors_are_short_4xx_without_input_or_paths(server, client, image, models_dir):
    deep = b'{"axes":"YX","calibration":' + b"[" * 100000 + b"]" * 100000 + b"}"
    r = _post(server.url, "/segment", _message(deep))
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text
    r = _post(server.url, "/imagej/function", _message(b'{"name":"\\ud800ijtorchVersion"}'))
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    assert "surrogate" in r.json()["error"]
    r = _post(server.url, "/classify", encode({"model": "tiny"}, {"images": np.zeros((1, 3, 0, 0), np.uint16)}))
    assert r.status_code == 422 and "empty axis" in r.json()["error"], r.text
    nan = image[:64, :64].astype(np.float32)
    nan[3, 4] = np.nan
    r = _post(server.url, "/segment", _body(nan))
    assert r.status_code == 422 and "NaN" in r.json()["error"], r.text
    r = _post(server.url, "/segment", _body(np.full((8, 8), np.inf, np.float32)))
    assert r.status_code == 422 and "infinite" in r.json()["error"]
    huge_axes = "Y" * (1 << 20)
    r = _post(server.url, "/segment", _message(json.dumps({"axes": huge_axes, "model": "tiny", "arrays": []}).encode()))
    assert r.status_code == 422 and len(r.content) < 2000 and "YYYYYYYY" not in r.text, r.text[:300]
    r = _post(server.url, "/segment", _message(json.dumps({"axes": "YX", "model": "x" * 100000, "arrays": [
        {"name": "image", "dtype": "|u1", "shape": [2, 2]}]}).encode(), bytes(4)))
    assert r.status_code == 422 and len(r.content) < 2000, r.text[:300]
    (models_dir / "broken").mkdir(exist_ok=True)
    (models_dir / "broken" / "config.json").write_text("{}")
    r = _post(server.url, "/segment", _body(image[:16, :16], model="broken"))
    assert 400 <= r.status_code < 600 and str(models_dir) not in r.text and "/tmp/" not in r.text, r.text
    r = httpx.get(server.url + "/nowhere/" + "z" * 5000)
    assert r.status_code == 404 and "zzzz" not in r.text
    assert client.segment(image[:64, :64], "YX", model="tiny").labels.shape == (64, 64)


# ------------------------------------------------------------------------------- (6) DNS rebinding, tokens
def test_host_and_origin_are_checked_on_loopback(server, image):
    body = _body(image[:32, :32])
    assert _post(server.url, "/segment", body, Host="evil.example").status_code == 403
    assert _post(server.url, "/segment", body, Host=f"evil.example:{server.port}").status_code == 403
    assert _post(server.url, "/segment", body, Origin="http://evil.example").status_code == 403
    r = _post(server.url, "/segment", body, Origin="null")
    assert r.status_code == 403 and "origin" in r.json()["error"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]", "localhost"):
        assert _post(server.url, "/segment", body, Host=host).status_code == 200, host
    assert _post(server.url, "/segment", body, Origin=f"http://localhost:{server.port}").status_code == 200


def test_token_from_file_or_environment_and_bearer_in_any_case(models_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for extra, env in ((("--token-file", str(token_file)), None), ((), {"IJTORCH_SERVER_TOKEN": TOKEN})):
        with ServerProcess(models_dir, *extra, env=env) as srv:
            assert httpx.get(srv.url + "/models").status_code == 401
            for scheme in ("Bearer", "bearer", "BEARER"):
                assert httpx.get(srv.url + "/models", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
            assert httpx.get(srv.url + "/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
            assert httpx.get(srv.url + "/health/ready").status_code in (200, 503)  # no token for health
            assert TOKEN not in " ".join(srv.proc.args)  # nothing for ps to show


# ------------------------------------------------------------------------------- (7) operations
def test_health_ready_reports_an_unusable_device(models_dir):
    with ServerProcess(models_dir, "--device", "cuda:7") as srv:
        assert httpx.get(srv.url + "/health/live").status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(srv.url + "/health/ready")
            if r.json()["checks"]["device"] != "checking":
                break
            time.sleep(0.2)
        assert r.status_code == 503 and "cuda:7" in r.json()["checks"]["device"], r.text


def test_ready_request_ids_access_log_and_prometheus(server, client, image):
    deadline = time.monotonic() + 60
    while httpx.get(server.url + "/health/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(server.url + "/health/ready").json()["ready"] is True
    r = _post(server.url, "/segment", _body(image[:32, :32]), **{"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    generated = _post(server.url, "/segment", b"\x00").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    time.sleep(0.3)
    log = server.log()
    assert re.search(r'access abc-123 127\.0\.0\.1 "POST /segment" 200 \d+ [\d.]+ms', log), log[-2000:]
    assert f"access {generated} " in log and '"POST /segment" 400' in log
    prom = httpx.get(server.url + "/metrics/prometheus")
    assert prom.headers["content-type"].startswith("text/plain")
    assert "ijtorch_request_seconds_bucket" in prom.text and "ijtorch_memory_budget_bytes" in prom.text


def test_port_zero_prints_the_real_port_and_bad_options_one_line(models_dir, tmp_path):
    env = dict(os.environ, IJTORCH_MODELS=str(models_dir))
    for option, value in (("--max-queue", "0"), ("--max-batch", "0"), ("--batch-wait-ms", "-5"),
                          ("--max-memory-gb", "0"), ("--body-timeout", "nan"), ("--port", "70000")):
        proc = subprocess.run([sys.executable, "-m", "ijtorch.serve", option, value], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and option in proc.stderr, (option, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    log = tmp_path / "port0.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "ijtorch.serve", "--port", "0"], env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline:
            m = re.search(r"http://127\.0\.0\.1:(\d+) \(port \1\)", log.read_text())
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        assert port and port != 0, log.read_text()
        while time.monotonic() < deadline:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
                break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)


def test_sigterm_drains_requests_in_flight(models_dir, image):
    srv = ServerProcess(models_dir, "--threads", "1", "--drain-s", "30")
    try:
        body = encode({"axes": "TYX", "model": "tiny", "tile_size": 32, "overlap": 24},
                      {"image": np.stack([image[:128, :128]] * 2)})
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_post, srv.url, "/segment", body)
            time.sleep(1.0)
            srv.proc.send_signal(signal.SIGTERM)
            reply = pending.result(60)
        assert reply.status_code == 200, reply.text
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        with pytest.raises(httpx.HTTPError):
            httpx.get(srv.url + "/health", timeout=2)
    finally:
        srv.stop()


def test_jobs_survive_a_sigkill_as_interrupted_or_done(models_dir, image):
    state = models_dir / "state-kill"
    port = None
    srv = ServerProcess(models_dir, "--threads", "1", "--state-dir", str(state))
    try:
        c = Client(srv.url)
        done = c.submit_segment(image[:64, :64], "YX", model="tiny")
        c.wait(done, timeout=60)
        lost = [c.submit_segment(_slow(image), "TYX", model="tiny", tile_size=32, overlap=24) for _ in range(2)]
        time.sleep(0.5)
        c.close()
        port = srv.port
        srv.kill()
    finally:
        srv.stop()
    with ServerProcess(models_dir, "--threads", "1", "--state-dir", str(state), port=port) as again, \
            Client(again.url) as c:
        for job_id in lost:
            status = c.job(job_id)
            assert status["status"] == "failed" and status["error"] == "interrupted by restart", status
            with pytest.raises(ServerError) as info:
                c.result(job_id)
            assert "interrupted by restart" in info.value.message
        assert c.job(done)["status"] == "done"
        header, arrays = c.result(done)
        assert arrays["labels"].shape == (64, 64)
        with pytest.raises(ServerError) as info:
            c.job("0123456789abcdef01234567")
        assert info.value.status == 404


# ------------------------------------------------------------------------------- issue 13 (4): channels
def test_server_channels_are_one_based_as_in_imagej(client, models_dir, image, monkeypatch):
    from ijtorch.tasks.segment import segment

    monkeypatch.setenv("IJTORCH_MODELS", str(models_dir))
    cyx = np.stack([image[:64, :64], image[100:164, 100:164], image[:64, :64].T])
    for k in (1, 2, 3):
        remote = client.segment(cyx, "CYX", model="tiny", channel=k)
        local = segment(cyx, "CYX", model="tiny", channel=k - 1, device="cpu")
        np.testing.assert_array_equal(remote.labels, local.labels)
    with pytest.raises(ServerError) as info:
        client.segment(cyx, "CYX", model="tiny", channel=0)
    assert info.value.status == 422 and "channel" in info.value.message
    with pytest.raises(ServerError) as info:
        client.segment(cyx, "CYX", model="tiny", channel=4)
    assert info.value.status == 422 and "channel=4" in info.value.message, info.value.message

"""`fcnseg serve` operations: /metrics scraped from a real server on loopback under load, /readyz, and a graceful
shutdown (SIGTERM) that answers every admitted request before the process exits."""

import io
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import photo_jpeg, post_upload, start_serve
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from fcnseg.serve import create_app, load_models


def _start(tiny_model_file: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    return start_serve(["--model", str(tiny_model_file), "--workers", "1", "--queue", "2", "--threads", "1",
                        "--log-level", "warning", "--drain-timeout", "60", *extra], log)


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a /metrics scrape, parsed by prometheus-client's parser."""
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def _post(url: str, body: bytes, name: str = "x.jpg"):
    return post_upload(url, name, body, "image/jpeg", timeout=300)


@pytest.mark.slow
def test_metrics_under_load_then_graceful_shutdown(tiny_model_file, tmp_path):
    log = tmp_path / "server.log"
    proc, url = _start(tiny_model_file, log)
    try:
        health = httpx.get(url + "/healthz").json()
        assert httpx.get(url + "/readyz").json() == {"status": "ready", "models": health["models"]}
        for seed in range(3):
            assert _post(url, photo_jpeg(48, 64, seed)).status_code == 200
        assert _post(url, b"not an image", "x.txt").status_code == 415
        m = _scrape(url)
        assert m[("fcnseg_requests_total", (("endpoint", "/predict"), ("status", "200")))] == 3
        assert m[("fcnseg_requests_total", (("endpoint", "/predict"), ("status", "415")))] == 1
        assert m[("fcnseg_request_seconds_count", (("endpoint", "/predict"),))] == 4
        assert m[("fcnseg_model_seconds_count", (("model", "tiny"),))] == 3
        assert m[("fcnseg_model_seconds_sum", (("model", "tiny"),))] > 0
        assert m[("fcnseg_images_total", (("model", "tiny"),))] == 3
        assert m[("fcnseg_queue_depth", ())] == 0 and m[("fcnseg_images_in_flight", ())] == 0
        assert m[("fcnseg_ready", ())] == 1
        assert m[("fcnseg_requests_total", (("endpoint", "/readyz"), ("status", "200")))] >= 2

        # Three slow images at once: one runs, two wait; the gauges show it while it happens.
        big = photo_jpeg(1600, 1600, 7)
        pool = ThreadPoolExecutor(3)
        futures = [pool.submit(_post, url, big) for _ in range(3)]
        seen = None
        for _ in range(200):  # bounded: about 20 s
            m = _scrape(url)
            if m[("fcnseg_images_in_flight", ())] == 1 and m[("fcnseg_queue_depth", ())] == 2:
                seen = m
                break
            time.sleep(0.1)
        assert seen is not None, "never saw 1 image in flight with 2 waiting"

        # SIGTERM now: every admitted request is still answered, then the process exits by itself.
        proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=300) for f in futures]
        pool.shutdown()
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.json()["width"] == 1600 for a in answers)
        proc.wait(60)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text
    # uvicorn re-raises the signal it caught once it has finished: a graceful end reads as "terminated by SIGTERM".
    assert proc.returncode in (0, -signal.SIGTERM), (proc.returncode, text)


def test_readyz_follows_the_lifecycle(tiny_model_file):
    app = create_app(load_models([str(tiny_model_file)], "cpu"))
    client = TestClient(app)
    r = client.get("/readyz")  # the app has not started (no lifespan yet)
    assert r.status_code == 503 and r.json() == {"detail": "not ready: starting"}
    assert client.get("/healthz").status_code == 200  # alive all the same
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": ["tiny"]}
        app.state.lifecycle["draining"] = True  # what the shutdown signal sets
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == "not ready: shutting down"
        r = client.post("/predict", files={"file": ("a.jpg", photo_jpeg(32, 32), "image/jpeg")})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"]
        assert "fcnseg_ready 0.0" in client.get("/metrics").text


def test_dynamic_batching_groups_same_sized_images(tiny_model_file, tmp_path):
    import base64

    import fcnseg
    from fcnseg.models.inference import predict_image

    log = tmp_path / "server.log"
    proc, url = _start(tiny_model_file, log, "--queue", "6", "--max-batch", "4", "--max-delay-ms", "1500")
    model = fcnseg.load(tiny_model_file)
    try:
        bodies = [photo_jpeg(48, 64, seed) for seed in range(4)] + [photo_jpeg(40, 40, 9)]
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda b: _post(url, b), bodies))
        assert [a.status_code for a in answers] == [200] * 5
        assert [a.json()["batch"] for a in answers] == [4, 4, 4, 4, 1]  # the odd size waits, then runs alone
        for body, answer in zip(bodies, answers):
            got = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["labels_png"]))))
            want, _ = predict_image(model, Image.open(io.BytesIO(body)))
            assert (got == want).mean() > 0.999  # equal up to float ties (tested: usually every pixel)
        assert answers[4].json()["queue_ms"] >= 1000  # it waited for company that never came
        m = _scrape(url)
        assert m[("fcnseg_batch_size_count", ())] == 2 and m[("fcnseg_batch_size_sum", ())] == 5
        assert m[("fcnseg_images_total", (("model", "tiny"),))] == 5
        png = httpx.post(url + "/predict", params={"format": "png"}, timeout=60,
                         files={"file": ("a.jpg", bodies[0], "image/jpeg")})
        assert png.headers["x-fcnseg-batch"] == "1"
    finally:
        proc.terminate()
        proc.wait(60)
    assert "Traceback" not in log.read_text(), log.read_text()

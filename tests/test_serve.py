"""`fcnseg serve` end to end: one real uvicorn server on loopback for the module, driven over HTTP, by
schemathesis from its OpenAPI schema, by the load-test script and in headless Chromium."""

import base64
import io
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import REPO, make_clip, make_shapes, photo_jpeg, post_upload, start_serve
from PIL import Image

import fcnseg
from fcnseg.serve import Limits, is_loopback
from fcnseg.serve.app import prefers_png

DEMO = REPO / "fcnseg" / "demo_images" / "leuvenA.jpg"
CHROMIUM = Path("/usr/bin/chromium")
MAX_UPLOAD_MB, MAX_PIXELS, QUEUE = 2, 4_000_000, 2


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    """``fcnseg serve`` in a subprocess on a free loopback port, with small limits so that tests can reach them:
    the shipped CamVid model (default) and the tiny model, uploads up to 2 MiB and 4 Mpixel, 1 worker, queue 2."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc, url = start_serve(["--model", "camvid-fcn8s-lite0", "--model", str(tiny_model_file),
                             "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-pixels", str(MAX_PIXELS),
                             "--workers", "1", "--queue", str(QUEUE), "--threads", "2", "--log-level", "warning"],
                            log, threads=2)
    yield {"url": url, "proc": proc, "log": log}
    proc.terminate()
    proc.wait(30)
    # Every refusal in these tests is a 4xx answer: the server must never have failed inside.
    assert "Traceback" not in log.read_text(), log.read_text()


def _png_header_only(w: int, h: int) -> bytes:
    """A valid 8x8 PNG whose header claims ``w x h``: what a decompression bomb looks like before decoding."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", w, h)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def test_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert prefers_png("image/png") and not prefers_png("application/json, image/png") and not prefers_png("*/*")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        Limits(workers=0)


def test_page_models_health_and_schema(server, tiny_model_file):
    url = server["url"]
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(url + asset).status_code == 200, asset
    assert "/static/app.js" in page.text and "http" not in page.text.split("<body>")[0]  # nothing from elsewhere
    models = httpx.get(url + "/models").json()
    assert [m["name"] for m in models] == ["camvid-fcn8s-lite0", "tiny"]
    assert [m["default"] for m in models] == [True, False]
    camvid = fcnseg.load("camvid-fcn8s-lite0")
    assert models[0]["classes"] == camvid.class_names and models[0]["num_classes"] == 11
    assert models[0]["palette"][0] == "#{:02x}{:02x}{:02x}".format(*camvid.palette[0])
    assert models[1]["classes"] == ["background", "square", "disc"] and models[1]["source"] == str(tiny_model_file)
    health = httpx.get(url + "/healthz").json()
    assert health["status"] == "ok" and health["max_pixels"] == MAX_PIXELS
    assert health["max_upload_bytes"] == MAX_UPLOAD_MB * 2**20 and health["queue"] == QUEUE
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/predict", "/models", "/healthz"} <= set(schema["paths"])
    responses = schema["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
    assert "image/png" in responses["200"]["content"]


def test_predict_json_and_png_match_the_library(server, tiny_model_file, tmp_path):
    from fcnseg.models.inference import predict_image
    from fcnseg.predict import load_for_inference

    root = make_shapes(tmp_path / "shapes", n=1, size=(96, 128))
    path = root / "images" / "img000.png"
    data = path.read_bytes()
    # The file name and declared type say text; the content is a PNG, and the content is what counts.
    r = post_upload(server["url"], "notes.txt", data, "text/plain", data={"model": "tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["format"], body["width"], body["height"]) == ("tiny", "PNG", 128, 96)
    with Image.open(io.BytesIO(base64.b64decode(body["labels_png"]))) as im:
        assert im.mode == "P" and im.size == (128, 96)
        labels = np.array(im)
    model = load_for_inference(str(tiny_model_file), "torch", "cpu")  # loaded as the server loads it
    expected, _ = predict_image(model, np.array(Image.open(path).convert("RGB")))
    assert np.array_equal(labels, expected) and len(np.unique(labels)) >= 2
    shares = {s["name"]: s["share"] for s in body["shares"]}
    assert list(shares) == ["background", "square", "disc"]
    for k, name in enumerate(shares):
        assert shares[name] == pytest.approx(np.mean(expected == k), abs=1e-5)
    assert body["ms"] > 0 and body["queue_ms"] >= 0
    # The label PNG itself, asked for by query or by Accept header.
    for kw in ({"params": {"format": "png"}}, {"headers": {"Accept": "image/png"}}):
        r = post_upload(server["url"], "x.png", data, data={"model": "tiny"}, **kw)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", kw
        assert 'filename="x_labels.png"' in r.headers["content-disposition"]
        assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), expected)
    # max_size: segmented small, returned at full size.
    r = post_upload(server["url"], "x.png", data, data={"model": "tiny", "max_size": "64", "flip": "true"})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (128, 96)


def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(server):
    url = server["url"]
    jpeg = photo_jpeg(300, 400)
    too_many = photo_jpeg(1500, 3000)  # 4.5 Mpixel, a small file
    assert len(too_many) < MAX_UPLOAD_MB * 2**20
    cases = [
        ("empty.jpg", b"", 400, "empty.jpg: empty file"),
        ("notes.jpg", b"just some text, named like a photo", 415, "notes.jpg: not a JPEG, PNG"),
        ("doc.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 415, "not a JPEG"),
        ("vector.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not a JPEG"),
        ("cut.jpg", jpeg[: len(jpeg) // 2], 422, "cut.jpg: cannot read image"),
        ("bomb.png", _png_header_only(30_000, 30_000), 413, "bomb.png: refused as a decompression bomb"),
        ("wide.png", _png_header_only(5_000, 1_000), 413, "wide.png: 5000x1000 is 5.0 Mpixel, more than the limit"),
        ("big.jpg", too_many, 413, "big.jpg: 3000x1500 is 4.5 Mpixel"),
        ("huge.jpg", jpeg + b"\0" * (MAX_UPLOAD_MB * 2**20), 413, "upload too large"),
    ]
    for name, data, status, message in cases:
        r = post_upload(url, name, data, "image/jpeg")
        assert r.status_code == status, (name, r.text)
        assert message in r.json()["detail"], (name, r.json())
        assert httpx.get(url + "/healthz").status_code == 200
    # A body of undeclared length (chunked) is counted as it arrives.
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(MAX_UPLOAD_MB + 1):
            yield b"\0" * 2**20
        yield b"\r\n--b--\r\n"

    r = httpx.post(url + "/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]
    fields = [({"model": "nope"}, "model: unknown model 'nope'; loaded: camvid-fcn8s-lite0, tiny"),
              ({"max_size": "8"}, "max_size: Input should be greater than or equal to 32"),
              ({"flip": "perhaps"}, "flip:")]
    for data, message in fields:
        r = post_upload(url, "a.jpg", jpeg, data=data)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    r = httpx.post(url + "/predict", data={"model": "tiny"})
    assert r.status_code == 422 and r.json()["detail"] == "file: Field required"
    r = httpx.post(url + "/predict", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=z"})
    assert r.status_code == 400
    r = post_upload(url, "fine.jpg", jpeg, "image/jpeg", data={"model": "tiny"})
    assert r.status_code == 200 and r.json()["width"] == 400


def test_a_full_queue_answers_503_with_retry_after(server):
    url = server["url"]
    data = photo_jpeg(480, 640, seed=3)  # a few tenths of a second each with flip: the burst arrives within one

    def one(_):
        return post_upload(url, "q.jpg", data, "image/jpeg", data={"flip": "true"})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    # One running and QUEUE waiting are admitted at any moment; the burst is larger.
    assert codes.count(200) >= 1 + QUEUE and codes.count(503) >= 1, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["detail"].startswith("busy:")
    health = httpx.get(url + "/healthz").json()
    assert health["running"] == 0 and health["waiting"] == 0


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert st, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    # positive_data_acceptance is left out: a schema cannot say "the bytes of a valid image", so schema-valid
    # random files are rightly refused (415).
    r = subprocess.run([st, "run", server["url"] + "/openapi.json", "--checks", "all", "--exclude-checks",
                        "positive_data_acceptance", "--max-examples", "40", "--seed", "1", "--workers", "1",
                        "--report-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "passed" in r.stdout


def test_load_script_reports_latency_errors_and_rss(server):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--url", server["url"],
                        "--server-pid", str(server["proc"].pid), "--requests", "12", "--concurrency", "3",
                        "--model", "tiny"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| the running server | 12 | 0 |" in r.stdout and "concurrency 3" in r.stdout, r.stdout
    for key in ("p50", "p95", "p99", "max", "requests/s", "peak RSS"):
        assert key in r.stdout, key


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _open_page(server, browser) -> tuple:
    """The app's page, ready, and the list its JavaScript errors and console errors are collected in."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(server["url"] + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page, problems


def test_browser_upload_shows_overlay_legend_and_shares(server, browser, tmp_path):
    page, problems = _open_page(server, browser)
    assert page.locator("#model option").all_inner_texts() == ["camvid-fcn8s-lite0 (11 classes)", "tiny (3 classes)"]
    assert "up to 2 MB and 4 Mpixel" in page.inner_text("#limits")

    page.set_input_files("#files", str(DEMO))
    card = page.locator(".result").first
    card.locator("xpath=self::*[@data-state='done']").wait_for(timeout=120_000)
    assert card.locator(".name").inner_text() == "leuvenA.jpg"
    # The overlay is the label map at the photo's size, drawn over the photo.
    size = page.eval_on_selector(".result .labels", "e => [e.naturalWidth, e.naturalHeight]")
    assert size == [751, 563]
    legend = card.locator(".legend li")
    assert legend.count() == 11
    names = legend.evaluate_all("els => els.map(e => e.dataset.class)")
    shares = [float(s) for s in legend.evaluate_all("els => els.map(e => e.dataset.share)")]
    assert sorted(names) == sorted(fcnseg.load("camvid-fcn8s-lite0").class_names)
    assert sum(shares) == pytest.approx(1.0, abs=1e-3) and shares == sorted(shares, reverse=True)
    # The page shows what the API computes for the same photo and options (size 1024 > 751: full size).
    api = post_upload(server["url"], "leuvenA.jpg", DEMO.read_bytes(), "image/jpeg").json()
    top = max(api["shares"], key=lambda s: s["share"])
    assert names[0] == top["name"] and f"{100 * top['share']:.1f}%" in legend.first.inner_text()
    assert "751×563 JPEG" in card.locator(".timing").inner_text() and " ms" in card.locator(".timing").inner_text()
    link = card.locator("a.download")
    assert link.get_attribute("download") == "leuvenA_labels.png"
    assert link.get_attribute("href").startswith("data:image/png;base64,")
    # The opacity slider sets the overlay's opacity.
    page.locator("#opacity").fill("25")
    assert page.eval_on_selector(".result .labels", "e => getComputedStyle(e).opacity") == "0.25"
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000

    # A bad file through the page: the card says why, and the next image still works.
    bad = tmp_path / "fake.jpg"
    bad.write_bytes(b"not an image at all")
    page.set_input_files("#files", str(bad))
    page.locator(".result[data-state='error']").wait_for(timeout=30_000)
    assert "415: fake.jpg: not a JPEG" in page.locator(".result[data-state='error'] .error").inner_text()
    page.select_option("#model", "tiny")
    page.set_input_files("#files", str(DEMO))
    # (Locators, not wait_for_function: the page's Content-Security-Policy forbids evaluating strings.)
    page.locator(".result[data-state='done']").nth(1).wait_for(timeout=120_000)
    assert page.locator(".result").first.locator(".legend li").count() == 3
    assert not [p for p in problems if "415" not in p], problems  # the 415 is the only console error
    page.close()


def test_browser_video_upload_shows_the_overlay_video(server, browser, tmp_path):
    pytest.importorskip("av")
    clip = make_clip(tmp_path / "walk.mp4", n=8, fps=8)
    page, problems = _open_page(server, browser)
    assert page.get_attribute("#files", "accept") == "image/*,video/*"
    page.select_option("#model", "tiny")
    page.select_option("#smooth", "0.5")

    with page.expect_response(lambda r: r.url.endswith("/predict/video")) as answer:
        page.set_input_files("#files", str(clip))
    card = page.locator(".result").first
    assert card.locator(".name").inner_text() == "walk.mp4"
    assert card.locator("video.clip").get_attribute("src").startswith("blob:")  # the upload, shown at once
    assert answer.value.status == 200 and answer.value.headers["x-fcnseg-frames"] == "8"
    card.locator("xpath=self::*[@data-state='done']").wait_for(timeout=120_000)
    assert card.locator(".badge").inner_text() == "8 frames"
    media = answer.value.headers["content-type"]
    assert media in ("video/mp4", "video/webm")
    # The overlay came back as a video blob and the browser loaded it: its length is the clip's, 8 frames at 8/s.
    video = card.locator("video.overlay-video")
    assert video.get_attribute("src").startswith("blob:") and video.get_attribute("controls") is not None
    state = video.evaluate("e => [e.readyState, e.duration, e.videoWidth, e.videoHeight, e.error && e.error.code]")
    assert state[0] >= 1 and state[1] == pytest.approx(1.0, abs=0.2) and state[2:] == [96, 64, None], state
    assert card.locator(".note").is_hidden()
    timing = card.locator(".timing").inner_text()
    assert "8 frames" in timing and "frames/s" in timing and "tiny" in timing, timing
    link = card.locator("a.download")
    assert link.get_attribute("download") == "walk_overlay" + (".webm" if media == "video/webm" else ".mp4")
    assert link.get_attribute("href") == video.get_attribute("src") and link.is_visible()
    # (The page's Content-Security-Policy keeps fetch() off blob: URLs: the link carries the blob's type and size.)
    assert link.get_attribute("type") == media and int(link.get_attribute("data-bytes")) > 1000
    assert page.inner_text("#status") == "1 video added"

    # Text named like a video goes to /predict/video too: the card shows the server's 422 like an image error.
    fake = tmp_path / "x.mp4"
    fake.write_text("this is not a video, only some text\n" * 10)
    page.set_input_files("#files", str(fake))
    error = page.locator(".result[data-state='error']")
    error.wait_for(timeout=60_000)
    assert error.locator(".name").inner_text() == "x.mp4" and error.locator(".badge").inner_text() == "failed"
    assert error.locator(".error").inner_text().startswith("422: x.mp4: not a readable video")
    assert not [p for p in problems if "422" not in p], problems  # the 422 is the only console error
    page.close()

"""A bounded load test of ``fcnseg serve`` on loopback: latency percentiles, errors, throughput, peak RSS.

    python benchmarks/serve_load.py                       # starts a server, 200 requests, 8 at a time
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --server-pid PID   # an already running server

Every request uploads the same photo (default: fcnseg/demo_images/leuvenA.jpg) to ``POST /predict`` and reads the
JSON answer. An error is any answer but 200, or no answer. The server's peak RSS is the kernel's high-water mark
(``VmHWM`` in ``/proc/PID/status``) of the server process. Only loopback addresses are accepted: this is not a
tool for loading other people's machines.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "fcnseg" / "demo_images" / "leuvenA.jpg"


def _mb(pid: int, key: str) -> float | None:
    """A ``kB`` field of ``/proc/PID/status`` (VmRSS, VmHWM) in MB, or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "fcnseg.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--workers", str(args.workers), "--queue", str(max(args.concurrency, 1)), "--threads", str(args.threads)]
    for m in args.serve_model or []:
        cmd += ["--model", m]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("serve_load: the server did not start")


def run(url: str, image: Path, requests: int, concurrency: int, model: str | None, time_limit: float) -> dict:
    """Sends ``requests`` uploads of ``image``, ``concurrency`` at a time; stops early after ``time_limit`` s."""
    data = image.read_bytes()
    fields = {"model": model} if model else {}
    latencies: list[float] = []
    model_ms: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    counter = iter(range(requests))
    stop = time.monotonic() + time_limit

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                with lock:
                    if next(counter, None) is None:
                        return
                t = time.perf_counter()
                try:
                    r = client.post(url + "/predict", files={"file": (image.name, data, "image/jpeg")}, data=fields)
                    status = r.status_code
                    ms = r.json().get("ms") if status == 200 else None
                except httpx.HTTPError as e:
                    status, ms = type(e).__name__, None
                dt = 1000 * (time.perf_counter() - t)
                with lock:
                    statuses[status] += 1
                    latencies.append(dt)
                    if ms is not None:
                        model_ms.append(ms)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    errors = sum(n for s, n in statuses.items() if s != 200)
    return {"sent": len(latencies), "statuses": dict(statuses), "errors": errors,
            "p50": q[49], "p95": q[94], "max": max(latencies), "wall": wall, "rps": len(latencies) / wall,
            "model_ms": statistics.median(model_ms) if model_ms else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--image", type=Path, default=DEMO)
    p.add_argument("--model", help="the model field of each request (default: the server's default)")
    p.add_argument("--url", help="an already running server (loopback only); default: start one")
    p.add_argument("--server-pid", type=int, help="the running server's process id, for its peak RSS")
    p.add_argument("--serve-model", action="append", help="--model for the started server (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="--workers for the started server")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the started server")
    p.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be at least 1")
    proc = None
    if args.url:
        host = urlparse(args.url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error(f"--url must be a loopback address (127.0.0.1, localhost, ::1); got {host}")
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        proc, url = _start_server(args)
        pid = proc.pid
    try:
        rss_start = _mb(pid, "VmRSS") if pid else None
        r = run(url, args.image, args.requests, args.concurrency, args.model, args.time_limit)
        peak = _mb(pid, "VmHWM") if pid else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"fcnseg serve load test: {args.image.name}, {r['sent']} of {args.requests} requests sent")
    print(f"requests {r['sent']}, concurrency {args.concurrency}, errors {r['errors']}, statuses {r['statuses']}")
    print(f"latency ms: p50 {r['p50']:.0f}, p95 {r['p95']:.0f}, max {r['max']:.0f} "
          f"(model time per image, median: {r['model_ms']:.0f} ms)")
    print(f"throughput {r['rps']:.2f} requests/s over {r['wall']:.1f} s")
    if peak is not None:
        print(f"server peak RSS {peak:.0f} MB (at the start of the load: {rss_start:.0f} MB)")
    else:
        print("server peak RSS unknown (give --server-pid)")
    return 0 if r["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""A bounded load test of `edgespec serve` on loopback (issue 27): concurrent requests against
the concurrency limit, abandoned requests, and the server's memory meanwhile.

    python benchmarks/serve_load.py --bundle BUNDLE [--requests 200] [--concurrency 8]

Starts `edgespec serve` in a subprocess three times and reports:
1. --requests concurrent completions with --concurrency slots and a queue too small for all:
   every answer equals its solo output or is a clean 503; the server's peak RSS;
2. 8 non-streamed requests whose clients hang up at once: the server's CPU seconds in the
   2 s after they left (a decode left running would spend ~2 CPU-s a request);
3. the default limits: 64 concurrent short requests all complete (the queue absorbs them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edgespec serve` in a subprocess, with its RSS sampled every 50 ms."""

    def __init__(self, bundle: str, *flags: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgespec.cli", "serve", bundle,
                                      "--port", str(self.port), "--threads", "1", *flags],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.peak_rss, self._stop = 0, threading.Event()
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            time.sleep(0.05)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) << 10

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def post(self, body: dict, timeout: float = 300) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()  # uvicorn's own 503 (past its connection limit) is plain text
        is_json = r.getheader("content-type", "").startswith("application/json")
        return r.status, json.loads(data) if is_json else {"text": data.decode()}

    def close(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def body(i: int, tokens: int) -> dict:
    return {"model": "b", "prompt": f"def f{i}(x):\n    return", "max_tokens": tokens,
            "temperature": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ns = ap.parse_args()
    name = ["--name", "b"]

    # 1. many at once against the slots and a queue smaller than the burst
    srv = Server(ns.bundle, *name, "--concurrency", str(ns.concurrency), "--queue", str(ns.queue))
    solo = {i: srv.post(body(i, ns.tokens))[1]["choices"][0]["text"] for i in range(20)}
    idle_rss = srv.rss()
    with ThreadPoolExecutor(ns.requests) as pool:
        answers = list(pool.map(lambda i: srv.post(body(i % 20, ns.tokens)), range(ns.requests)))
    ok = sum(s == 200 and a["choices"][0]["text"] == solo[i % 20]
             for i, (s, a) in enumerate(answers))
    busy = sum(s == 503 for s, _ in answers)
    print(f"1. {ns.requests} concurrent requests, concurrency {ns.concurrency}, queue "
          f"{ns.queue}: {ok} equal to their solo output, {busy} answered 503, "
          f"{ns.requests - ok - busy} other; RSS idle {idle_rss / 2**20:.0f} MB, peak "
          f"{srv.peak_rss / 2**20:.0f} MB")

    # 2. abandoned non-streamed requests
    conns = []
    for i in range(8):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(body(i, 400)),
                     {"Content-Type": "application/json"})
        conns.append(conn)
    time.sleep(0.5)
    for conn in conns:
        conn.sock.close()
    time.sleep(1.0)  # the cancels land within a step and the 0.2 s disconnect poll
    cpu0 = srv.cpu_seconds()
    time.sleep(2.0)
    print(f"2. 8 abandoned requests of 400 tokens: the server spent "
          f"{srv.cpu_seconds() - cpu0:.2f} CPU-s in the 2 s after they left")
    srv.close()

    # 3. the default limits absorb a burst of 64
    srv = Server(ns.bundle, *name)
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda i: srv.post(body(i, 8)), range(64)))
    print(f"3. default limits, 64 concurrent requests: {sum(s == 200 for s, _ in answers)} "
          f"completed, peak RSS {srv.peak_rss / 2**20:.0f} MB")
    srv.close()


if __name__ == "__main__":
    main()

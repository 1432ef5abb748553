"""Serving load test: `pocketchat serve` on loopback under N concurrent streaming chat clients, continuous
batching (--max-batch 16) against one request at a time (--max-batch 1), same model, same run.

Each configuration (max_batch x clients) gets a fresh server subprocess, so its peak RSS (the kernel's
VmHWM of the server process; model, KV cache, Python and all) is its own. After a warm-up, N clients
(httpx, one asyncio loop) send chat completions back to back for --seconds: stream=True, max_tokens
--max-tokens, temperature 0.7, a different short question each time. Requests in flight at the deadline run
to the end and count; rates are over the time until the last one ends.

Per configuration: requests/s, generated tokens/s (the server's `usage.completion_tokens`), time to first
token (request sent -> first content chunk, queueing included) and inter-token latency (gap between
consecutive content chunks) at p50/p95, failed requests, the largest batch the server ran, peak RSS.

The default model is random weights of the `tiny` pretrain preset's shape with a 4,096-token tokenizer
trained in ~2 s on part of the embedded corpus; random weights rarely end a turn, so nearly every request
generates all --max-tokens. --model DIR serves a real checkpoint instead (it may end answers early).

The clients share the machine with the server, so the server gets --threads torch threads (default: half
the CPUs) and the clients the rest; the figures are a floor for what the server does alone. Oversubscribed
torch threads are very slow (each op waits for its slowest thread), so on a busy machine use --threads 1.

Usage:
    python benchmarks/bench_serve.py [--model DIR] [--clients 1,4,16] [--max-batches 16,1] [--seconds 15]
                                     [--max-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

QUESTIONS = ["What is the meaning of love?", "Tell me a story about a king.", "How are you today?",
             "What is 12 + 30?", "Who wrote Hamlet?", "Say something kind.", "Why is the sky blue?",
             "Describe the sea at night.", "What should I eat for dinner?", "Give me three words that rhyme.",
             "What is a tokenizer?", "Write a short poem about rain.", "hello there", "What time is it?",
             "Explain batching in one line.", "Name a color."]


def tiny_folder(root: Path) -> Path:
    """Random weights of the tiny preset's shape + a tokenizer trained quickly on the embedded corpus."""
    from tiny_random import tiny_random

    from pocketchat.chat_format import CHAT_TEMPLATE

    model, tok = tiny_random([__doc__ * 50, *QUESTIONS * 50])
    folder = root / "tiny-random"
    model.save_pretrained(folder)
    tok.save(folder, chat_template=CHAT_TEMPLATE, model_max_length=model.config.max_position_embeddings)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water mark of resident memory (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class RSSPoller:
    """Polls a process's RSS (a fallback where /proc/PID/status has no VmHWM)."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Server:
    """`pocketchat serve` as a subprocess on a free loopback port."""

    def __init__(self, model: Path, max_batch: int, queue: int, threads: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "pocketchat.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--max-batch", str(max_batch), "--queue", str(queue), "--device", "cpu"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's intra-op threads in the server
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                r = httpx.get(self.url + "/v1/models", timeout=2)
                if r.status_code == 200:
                    return r.json()["data"][0]
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not come up in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Result:
    ok: bool
    tokens: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    error: str = ""


async def chat(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    """One streamed chat completion, timed chunk by chunk."""
    t0 = time.perf_counter()
    stamps, usage, finish = [], None, None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return Result(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    return Result(False, error=f"error frame: {obj['error'].get('message')}")
                if obj.get("usage"):
                    usage = obj["usage"]
                for choice in obj["choices"]:
                    if choice["delta"].get("content"):
                        stamps.append(time.perf_counter())
                    finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return Result(False, error=f"{type(e).__name__}: {e}")
    if finish not in ("stop", "length") or usage is None:
        return Result(False, error=f"finish_reason {finish!r}, usage {usage!r}")
    return Result(True, usage["completion_tokens"], stamps[0] - t0 if stamps else None,
                  [b - a for a, b in zip(stamps, stamps[1:])])


async def load(url: str, model_id: str, clients: int, seconds: float, max_tokens: int,
               warmup: int) -> tuple[list[Result], float]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    endpoint = url + "/v1/chat/completions"

    def body(i: int) -> dict:
        return {"model": model_id, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": max_tokens, "temperature": 0.7, "stream": True,
                "stream_options": {"include_usage": True}}

    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        # warm-up (allocations, first-request paths), not measured: `warmup` rounds of `clients` requests
        for _ in range(warmup):
            await asyncio.gather(*(chat(client, endpoint, body(i)) for i in range(clients)))
        results: list[Result] = []
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                results.append(await chat(client, endpoint, body(i)))
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        return results, time.perf_counter() - start


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def run_config(model: Path, max_batch: int, clients: int, args, tmp: Path) -> dict:
    server = Server(model, max_batch, queue=max(64, 2 * clients), threads=args.threads,
                    log=tmp / f"server-{max_batch}-{clients}.log")
    try:
        model_id = server.wait_ready()["id"]
        poller = RSSPoller(server.proc.pid)
        results, elapsed = asyncio.run(load(server.url, model_id, clients, args.seconds, args.max_tokens, args.warmup))
        polled = poller.stop()
        peak = peak_rss_bytes(server.proc.pid) or polled
        stats = server.health()
    finally:
        server.stop()
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    errors = [r.error for r in results if not r.ok]
    if errors:
        print(f"  first error: {errors[0]}")
    return dict(max_batch=max_batch, clients=clients, requests=len(ok), seconds=elapsed, rps=len(ok) / elapsed,
                tps=sum(r.tokens for r in ok) / elapsed, tokens_per_request=sum(r.tokens for r in ok) / max(len(ok), 1),
                ttft50=pct(ttft, 50) * 1e3, ttft95=pct(ttft, 95) * 1e3, itl50=pct(gaps, 50) * 1e3,
                itl95=pct(gaps, 95) * 1e3, errors=len(errors), peak_batch=stats.get("peak_batch"),
                rss_mib=peak / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint folder to serve (default: random weights of the tiny preset's shape)")
    ap.add_argument("--clients", default="1,4,16", help="concurrent streaming clients, comma-separated")
    ap.add_argument("--max-batches", default="16,1", help="server --max-batch values to compare")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured load time per configuration")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="torch threads in the server (default: half the CPUs; the clients need the rest)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds of one request per client first")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.max_batches.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tiny_folder(tmp)
        for n in clients:  # the configurations compared run back to back, so a busy machine slows them alike
            for max_batch in batches:
                r = run_config(model, max_batch, n, args, tmp)
                rows.append(r)
                print(f"  max_batch {max_batch:>2}, {n:>2} clients: {r['tps']:.0f} tokens/s, {r['rps']:.2f} req/s, "
                      f"TTFT p50 {r['ttft50']:.0f} ms, ITL p50 {r['itl50']:.1f} ms, {r['errors']} errors", flush=True)

    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\n{model.name if args.model else 'tiny preset shape, random weights'}; streamed chat completions, "
          f"max_tokens {args.max_tokens}, temperature 0.7, {args.seconds:g} s per configuration (in-flight requests "
          f"drained), server with {args.threads} torch thread(s), clients on the same {os.cpu_count()}-CPU machine; "
          f"load average at the end: {load_avg}\n")
    print("| max_batch | clients | requests | req/s | gen tok/s | tok/req | TTFT p50 ms | TTFT p95 ms | ITL p50 ms "
          "| ITL p95 ms | errors | peak batch | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (-r["max_batch"], r["clients"])):
        print(f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['tps']:.0f} | "
              f"{r['tokens_per_request']:.1f} | {r['ttft50']:.0f} | {r['ttft95']:.0f} | {r['itl50']:.1f} | "
              f"{r['itl95']:.1f} | {r['errors']} | {r['peak_batch']} | {r['rss_mib']:.0f} |")
    if len(batches) >= 2:
        by = {(r["max_batch"], r["clients"]): r for r in rows}
        hi, lo = max(batches), min(batches)
        parts = [f"{n} clients {by[hi, n]['tps'] / by[lo, n]['tps']:.2f}x" for n in clients
                 if by[lo, n]["tps"] > 0]
        print(f"\ntokens/s, max_batch {hi} over max_batch {lo}: " + ", ".join(parts))


if __name__ == "__main__":
    main()

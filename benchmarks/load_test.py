"""Load test: N concurrent gradio_client clients run /compare against one app on loopback.

Starts `python app.py` on a free port (or uses --url), waits until the model is loaded, then starts N clients at
once, each in its own thread with its own Client (its own session). Client i asks for the needle task with seed
i % --seeds, so several clients share each prompt: greedy decoding is deterministic, so clients with the same seed
must get identical outputs, and every result must carry its own seed. Bounded: N requests, one deadline for all.

Prints completed / failed (an error, or a result that is not the client's own) / lost (no answer by the deadline),
latency percentiles from submit to the last message, and the machine. Then stops the app with Ctrl-C (SIGINT) and
reports its exit status (130 is a clean stop).

    python benchmarks/load_test.py                      # 16 clients, 256-token prompts, 4 new tokens
    python benchmarks/load_test.py --clients 32 --length 1024 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    client: int
    seed: int
    status: str = "lost"  # completed, failed or lost
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)
    detail: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(port: int, wait_s: float) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"app.py did not start serving on port {port} (exit status {proc.poll()}).")
        time.sleep(0.5)


def _one_client(url: str, outcome: Outcome, args, start: threading.Event, deadline: float) -> None:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        start.wait()
        t0 = time.perf_counter()
        job = client.submit(
            fa_layers="none", fa_decode="off", sinks=0, window=128, pinned=[], task="needle", length=args.length,
            seed=outcome.seed, max_new_tokens=args.max_new_tokens, api_name="/compare",
        )  # fmt: skip
        _board, _summary, rows, _csv, _json = job.result(timeout=max(1.0, deadline - time.monotonic()))
        outcome.seconds = time.perf_counter() - t0
    except TimeoutError:
        return  # lost
    except Exception as e:  # noqa: BLE001 - every other failure is counted and described
        outcome.status, outcome.detail = "failed", f"{type(e).__name__}: {e}"[:200]
        return
    wrong = [r for r in rows if r.get("seed") != outcome.seed or r.get("error")]
    if len(rows) != 2 or wrong:
        outcome.status, outcome.detail = "failed", f"not its own result or an error: {wrong or rows}"[:200]
        return
    outcome.status, outcome.outputs = "completed", [r["output_text"] for r in rows]


def _check_same_seed_same_output(outcomes: list[Outcome]) -> None:
    """Clients that sent the same prompt must have received the same text (a mixed-up result would differ)."""
    first: dict[int, list[str]] = {}
    for o in outcomes:
        if o.status != "completed":
            continue
        expected = first.setdefault(o.seed, o.outputs)
        if o.outputs != expected:
            o.status, o.detail = "failed", f"seed {o.seed}: output differs from another client's with that seed"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--seeds", type=int, default=4, help="distinct prompts; clients share them (default: 4)")
    parser.add_argument("--length", type=int, default=256, help="prompt length in tokens (default: 256)")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="tokens generated per column (default: 4)")
    parser.add_argument("--deadline", type=float, default=900, help="seconds for all requests together")
    parser.add_argument("--url", help="an app already running (default: start app.py on a free port)")
    args = parser.parse_args()
    if args.clients < 1 or args.seeds < 1:
        parser.error("--clients and --seeds must be at least 1")

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        proc = _start_app(port, wait_s=300)
        url = f"http://127.0.0.1:{port}"
    try:
        from gradio_client import Client

        t0 = time.perf_counter()
        Client(url, verbose=False).predict("smollm2-135m", api_name="/load_model")  # the model is loaded first
        print(f"model ready after {time.perf_counter() - t0:.0f} s; {args.clients} clients start now", flush=True)

        outcomes = [Outcome(i, i % args.seeds) for i in range(args.clients)]
        start = threading.Event()
        deadline = time.monotonic() + args.deadline
        threads = [
            threading.Thread(target=_one_client, args=(url, o, args, start, deadline), daemon=True) for o in outcomes
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every client connected before any submits
        wall = time.perf_counter()
        start.set()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
        wall = time.perf_counter() - wall
        _check_same_seed_same_output(outcomes)
    finally:
        exit_status = None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                exit_status = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_status = "killed after 60 s"

    counts = {k: sum(o.status == k for o in outcomes) for k in ("completed", "failed", "lost")}
    latencies = [o.seconds for o in outcomes if o.status == "completed" and o.seconds is not None]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · Python {platform.python_version()}")  # fmt: skip
    print(f"{args.clients} clients, {args.seeds} distinct prompts, {args.length} tokens, {args.max_new_tokens} new "
          f"tokens, 2 columns each; wall time {wall:.1f} s")  # fmt: skip
    print("| completed | failed | lost | p50 s | p90 s | p99 s | max s |")
    print("|---|---|---|---|---|---|---|")
    if latencies:
        p = [_percentile(latencies, q) for q in (50, 90, 99)] + [max(latencies)]
        print(
            f"| {counts['completed']} | {counts['failed']} | {counts['lost']} | "
            + " | ".join(f"{x:.1f}" for x in p)
            + " |"
        )
    else:
        print(f"| 0 | {counts['failed']} | {counts['lost']} | – | – | – | – |")
    for o in outcomes:
        if o.status != "completed":
            print(f"client {o.client} (seed {o.seed}): {o.status} {o.detail}")
    if exit_status is not None:
        print(f"app stopped with Ctrl-C: exit status {exit_status}")
    return 0 if counts["completed"] == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())

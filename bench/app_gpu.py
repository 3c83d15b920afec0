"""The app itself on a GPU, through its own endpoints, as a visitor of a GPU Space uses it.

    python bench/app_gpu.py                  # on cuda: /generate on the bundled model, then a 270m run via /train_start
    python bench/app_gpu.py --device cpu     # a dry run of the same calls on the CPU (tiny preset)

Starts `python app.py` (bundled model, its home in a temporary folder), then through gradio_client:
/generate twice (the first one captures the CUDA graph) and prints the summary line the page shows
(tokens, tokens/s, prefill); /train_start with the given preset, device and steps, polling /train_metrics
until the run ends, and prints its status and stats line (tokens/s, MFU, ETA) and the last losses.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free port, and its address once it answers."""
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--home", str(home)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return proc, Client(url, verbose=False)
        except Exception:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the app did not answer at {url} in 180 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default=None, help="default: 270m on cuda, tiny on cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=None, help="default: 32 on cuda, 4 on cpu")
    ap.add_argument("--seq", type=int, default=None, help="default: 512 on cuda, 64 on cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--timeout", type=float, default=240, help="seconds to wait for the run to end")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    # a time limit's SIGTERM exits through the `finally` below, which stops the run and the app: else both would
    # go on using the GPU after this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp())
    proc, client = start_app(tmp)
    name = None
    try:
        for attempt in ("first", "second"):
            t0 = time.perf_counter()
            _, summary = client.predict("Once upon a time, there was a little girl named Lily.", 200, 0.0, 0, 1.0, 1.0,
                                        0, api_name="/generate")
            print(f"/generate ({attempt}, {time.perf_counter() - t0:.1f} s): {summary}", flush=True)

        settings = dict(data_source="builtin", stories=3000 if cuda else 300, hub=None, files=None,
                        preset=args.preset or ("270m" if cuda else "tiny"), max_steps=args.steps,
                        batch_size=args.batch or (32 if cuda else 4), grad_accum=1, seq_len=args.seq or (512 if cuda else 64),
                        lr=6e-4, device=args.device, gpus=1, compile=args.compile)
        t0 = time.perf_counter()
        dd, status, _ = client.predict(*settings.values(), api_name="/train_start")
        name = dd["value"]
        print(f"/train_start: {status.splitlines()[0] if status else name}", flush=True)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            _, status, stats, _ = client.predict(name, False, api_name="/train_metrics")
            if not any(word in status for word in ("running", "starting", "Preparing")):
                break
            time.sleep(2)
        print(f"/train_metrics after {time.perf_counter() - t0:.0f} s:\n  status: {' '.join(status.split())}\n"
              f"  stats: {' '.join(stats.split())}", flush=True)
        metrics = tmp / "runs" / name / "metrics.jsonl"
        if metrics.exists():
            print("  last lines of metrics.jsonl:\n    " + "\n    ".join(metrics.read_text().splitlines()[-3:]))
    finally:
        if name:  # the run is a process of its own (its own session): stop it, or it outlives a timeout
            try:
                client.predict(name, api_name="/train_stop")
            except Exception:
                pass  # it had ended
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

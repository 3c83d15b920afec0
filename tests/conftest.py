"""Shared test setup: offline environment, importable repo root, and a tiny transformers reference model."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# Test models are tiny: one thread avoids thread-pool handoffs, which on a busy 2-core machine
# cost ~10 ms per op (measured: a decode-step SDPA takes 26 us on 1 thread, 10 ms on 2 under load).
torch.set_num_threads(1)

# A tiny Gemma 3 in transformers' terms. head_dim 32 is deliberately not hidden/heads (64/4 = 16), and
# query_pre_attn_scalar 16 is not head_dim, so neither shortcut can go unnoticed; a window of 8 makes
# the sliding mask bite on short inputs.
TINY_HF = dict(
    vocab_size=50257,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,         # Gemma pattern: layers 0-4 sliding, 5 full, 6 sliding again
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    sliding_window=8,
    query_pre_attn_scalar=16,
    max_position_embeddings=512,
    pad_token_id=None,
)


def randomise_norms(model: torch.nn.Module, std: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Give every RMSNorm weight (zero at init) random values, so a misplaced norm changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def build_hf_tiny(seed: int = 0, **overrides):
    """A randomly initialised transformers Gemma3ForCausalLM at the tiny shape, in eval mode (fp32)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    # eager: transformers' plainest attention code, the most independent reference for ours (SDPA)
    config = Gemma3TextConfig(**{**TINY_HF, "attn_implementation": "eager", **overrides})
    config.bos_token_id = config.eos_token_id = None
    model = Gemma3ForCausalLM(config).eval()
    return randomise_norms(model, seed=seed)


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(transformers model, folder it was saved to with save_pretrained) -- the reference for parity tests."""
    model = build_hf_tiny()
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session")
def tiny(hf_tiny):
    """Our model, loaded in fp32 from the transformers folder of `hf_tiny` (same weights)."""
    import gemma3

    model, _ = gemma3.load_model(hf_tiny[1], device="cpu", dtype=torch.float32)
    return model


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = TINY_HF["vocab_size"]) -> torch.Tensor:
    """Reproducible random token ids [batch, length]."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- helpers for tests that launch the app or trainer processes ------------------------------------

def poll(fn, timeout=30.0, every=0.1, what="condition"):
    """fn() until it returns something true; that value, or an AssertionError after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_ready(url: str, timeout: float = 30):
    """Wait until a launched Gradio app answers /gradio_api/info."""
    import httpx

    def answers():
        try:
            return httpx.get(url + "gradio_api/info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    poll(answers, timeout, what=f"the app at {url} to answer /gradio_api/info")


def kill_run(run):
    """Safety net for finally blocks: no trainer a test started outlives it."""
    import os
    import signal

    pid = run.launch_info().get("pid")
    if pid and run.is_alive():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run.wait(timeout=10)


def kill_runs(runs_dir):
    from training import runs

    for info in runs.list_runs(runs_dir):
        kill_run(runs.get(info.name, runs_dir))


def serve(demo, runs_dir, **launch):
    """Launch a built app for a test module and yield it; closed and its runs killed afterwards."""
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **launch)
    try:
        wait_ready(demo.local_url)
        yield demo
    finally:
        demo.close()
        kill_runs(runs_dir)


# ---- one app and one browser for every browser test module ----------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app on random weights of the demo preset, launched once for every browser test module (each opens
    its own browser and pages); training writes into a temporary folder."""
    import app
    from webapp import models

    tmp = tmp_path_factory.mktemp("browser")
    cache = models.ModelCache(*models.load_source("random:demo"))
    demo = app.build(cache=cache, runs_dir=tmp / "runs", data_dir=tmp / "data")
    try:
        yield from serve(demo, tmp / "runs", **app.LAUNCH)
    finally:
        kill_runs(tmp / "runs")


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (apt-get install chromium; never `playwright install`). One per module:
    Playwright's sync API keeps an event loop running in this thread until it stops, which would break a later
    module's asyncio.run()."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


SHOTS = ROOT / "artifacts" / "screenshots"
KEEP_SHOTS = os.environ.get("GEMMA3_SCREENSHOTS", "") not in ("", "0")


def screenshot(target, name: str, **options):
    """With GEMMA3_SCREENSHOTS=1, what the test saw (a page or one element: Playwright's screenshot options), in
    artifacts/screenshots/NAME.png; else nothing (they take seconds, and no test reads them)."""
    if KEEP_SHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        target.screenshot(path=str(SHOTS / f"{name}.png"), **options)


def open_page(browser, url: str, width: int = 1400, height: int = 1000):
    """A new page of the app at this viewport, once the model bar is on it."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#model-info")
    return page

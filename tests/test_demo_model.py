"""The bundled demo model: `python app.py` offline opens on it, and it writes words, not noise."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import gemma3
from training.stories import vocabulary, words

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo-model"


def test_demo_model_is_small_and_loads_as_the_demo_preset():
    size = sum(f.stat().st_size for f in DEMO.iterdir())
    assert size <= 25e6, f"the bundled model must ship in 25 MB, it takes {size / 1e6:.1f} MB"
    model, tok = gemma3.load_model(DEMO)
    assert model.config == gemma3.Gemma3Config.from_preset("demo")
    card = (DEMO / "README.md").read_text()
    for fact in ("python -m training train", "steps", "tokens seen", "validation loss", "## Samples"):
        assert fact in card, fact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_starts_offline_on_the_demo_model_and_tells_stories(tmp_path):
    from gradio_client import Client

    from webapp.generation import continuation_text

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GEMMA3_RUNS_DIR": str(tmp_path / "runs"),
           "GEMMA3_DATA_DIR": str(tmp_path / "data")}
    env.pop("GEMMA3_MODEL", None)
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        page = httpx.get(url, timeout=10).text
        assert "demo-model" in page and "expect noise" not in page  # the model bar names the bundled model
        client = Client(url, verbose=False)
        shown, _ = client.predict("Once upon a time", 120, 0.7, 50, 1.0, 1.0, 0, api_name="/generate")
        text = continuation_text(shown)   # the story view's HTML: the prompt, then the continuation's tokens
        found = words(text)
        assert len(found) >= 40, text
        unknown = sorted(set(found) - vocabulary())
        assert not unknown, f"words the built-in corpus never uses: {unknown} in {text!r}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_explore_pictures_show_real_structure_on_the_demo_model():
    """On the trained model, attention is far from uniform and the logit lens converges on the answer."""
    import explain

    model, tok = gemma3.load_model(DEMO)
    rec = explain.record(model, tok, "Once upon a time, there was a little girl named Lily. She liked to play")
    T = rec.seq_len
    for layer, probs in enumerate(rec.attn_probs):
        seen = (probs > 0).sum(-1).float()                   # keys each query may see
        uniform = 1.0 / seen                                  # what a head with no preference would give
        sharp = (probs.max(-1).values > 3 * uniform)[:, T // 2:].float().mean()
        assert sharp > 0.7, f"layer {layer}: attention is close to uniform"
    final = rec.lens_ids[-1]
    agreement = [(rec.lens_ids[i] == final).float().mean().item() for i in range(rec.layers + 1)]
    assert agreement[-1] == 1.0 and agreement[-2] > 0.8 and agreement[1] < 0.5, agreement
    assert rec.lens_probs[-1].mean() > rec.lens_probs[1].mean(), "later layers should be more confident"

"""The minimal app: launched for real, driven through its API like a user's browser would."""

import time

import httpx
import pytest

import app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model, tok, desc = app.load(None)
    demo = app.build(model, tok, desc).queue()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        url = demo.local_url
        for _ in range(100):
            try:
                if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        demo.close()


def test_generate_streams_pieces(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    job = client.submit("Once upon a time", 40, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    updates = []
    while not job.done():
        updates.extend(job.outputs()[len(updates):])
        time.sleep(0.01)
    outputs = job.outputs()
    text, info = outputs[-1]
    assert len(outputs) > 2, "text should arrive in several pieces, not at the end"
    assert len(text) > 20 and "tokens/s" in info


def test_bad_setting_is_a_clear_error_and_server_keeps_serving(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="minimum|max_new_tokens"):
        client.predict("Once", 0, 0.7, 0, 1.0, 1.0, 0, api_name="/generate")
    text, _ = client.predict("Once", 5, 0.0, 0, 1.0, 1.0, 0, api_name="/generate")
    assert text

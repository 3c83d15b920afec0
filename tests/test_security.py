"""A model folder is a stranger's to fill: every file a loader opens must resolve inside it.

The app lets visitors load folders under its allowed roots, and `hf:` puts any repository's files
into the Hugging Face cache, one of those roots. So an index may name any path and any file may be a
link. Each escape below is built twice, once aimed at an outside target that exists (a loadable
model) and once at one that does not: both must be refused with the same one sentence, naming
neither target, before anything outside is opened. The same layouts aimed inside the folder load,
so the refusals are about where the files lead and nothing else.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import gemma3
from gemma3.io import checkpoints
from gemma3.io.layouts import from_native

OUTSIDE = "points outside the model folder"


def _tiny(seed=0):
    torch.manual_seed(seed)
    return gemma3.Gemma3(gemma3.Gemma3Config.from_preset("tiny")).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def outside(tmp_path_factory, model):
    """A folder outside every model folder below, holding a loadable model in several forms."""
    out = tmp_path_factory.mktemp("outside")
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), out / "hf")              # config.json + model.safetensors
    torch.save(model.state_dict(), str(out / "hf" / "weights.pt"))            # our names, as a .pt
    (out / "hf" / "model_config.json").write_text(json.dumps({"sliding_window": 4}))
    (out / "hf" / "tokenizer.json").write_text("{}")
    return out / "hf"


@pytest.fixture
def opened(monkeypatch):
    """Every path a weights reader is handed."""
    seen = []
    load_file, torch_load = checkpoints.load_file, torch.load

    def spy_load_file(path, *a, **k):
        seen.append(os.path.realpath(path))
        return load_file(path, *a, **k)

    def spy_torch_load(path, *a, **k):
        seen.append(os.path.realpath(path))
        return torch_load(path, *a, **k)

    monkeypatch.setattr(checkpoints, "load_file", spy_load_file)
    monkeypatch.setattr(torch, "load", spy_torch_load)
    return seen


def _hf_config(folder, _where=None):
    """A transformers config.json for the tiny model, so that only the weights' location decides."""
    (folder / "config.json").write_text(json.dumps(gemma3.Gemma3Config.from_preset("tiny").to_hf()))


def _index(folder, shard):
    (folder / checkpoints.INDEX).write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": str(shard)}}))


# Each builder fills `folder` so that it would read `target` (a file or folder in `where`).
def index_absolute(folder, where):
    _hf_config(folder, where)
    _index(folder, where / "model.safetensors")


def index_relative(folder, where):
    _hf_config(folder, where)
    _index(folder, os.path.relpath(where / "model.safetensors", folder))  # ../../outside/model.safetensors


def linked_weights(folder, where):
    _hf_config(folder, where)
    (folder / "model.safetensors").symlink_to(where / "model.safetensors")


def linked_weights_our_format(folder, where):
    (folder / "config.json").write_text(_tiny().config.to_json())
    (folder / "model.safetensors").symlink_to(where / "model.safetensors")


def linked_any_weights_file(folder, where):
    (folder / "weights.pt").symlink_to(where / "weights.pt")


def linked_folder(folder, where):
    _hf_config(folder, where)
    (folder / "shards").symlink_to(where, target_is_directory=True)
    _index(folder, "shards/model.safetensors")


def linked_config(folder, where):
    save_file(from_native(_tiny().state_dict()), str(folder / "model.safetensors"))
    (folder / "config.json").symlink_to(where / "config.json")


def linked_seed_config(folder, where):
    torch.save(_tiny().state_dict(), str(folder / "weights.pt"))
    (folder / "model_config.json").symlink_to(where / "model_config.json")


def linked_tokenizer(folder, where):
    gemma3.save_model(_tiny(), gemma3.gpt2_tokenizer(), folder)
    (folder / "tokenizer.json").symlink_to(where / "tokenizer.json")


ESCAPES = [index_absolute, index_relative, linked_weights, linked_weights_our_format, linked_any_weights_file,
           linked_folder, linked_config, linked_seed_config, linked_tokenizer]


def _refusal(source) -> str:
    with pytest.raises(ValueError) as e:
        gemma3.load_model(source)
    msg = str(e.value)
    assert OUTSIDE in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("build", ESCAPES, ids=lambda f: f.__name__)
def test_a_path_out_of_the_folder_is_refused_alike_whether_its_target_exists_or_not(tmp_path, outside, opened,
                                                                                    build):
    missing = tmp_path / "nowhere" / "hf"  # the same names, in a folder that does not exist
    messages = []
    for where in (outside, missing):
        folder = tmp_path / "allowed" / ("a" if where is outside else "b") / "model"
        folder.mkdir(parents=True)
        build(folder, where)
        messages.append(_refusal(folder))
    assert messages[0] == messages[1]
    assert str(outside.parent) not in messages[0] and str(tmp_path) not in messages[0]
    assert not [p for p in opened if p.startswith(str(outside.parent))], "an outside file was opened"


def test_probing_system_files_tells_nothing(tmp_path, opened):
    """The issue's probe: an index aimed at /etc/shadow and at a file that does not exist read alike."""
    messages = []
    for i, target in enumerate(("/etc/shadow", "/etc/gemma3-no-such-file")):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        _index(folder, target)
        messages.append(_refusal(folder))
    assert messages[0] == messages[1] and "/etc" not in messages[0]
    assert not opened


@pytest.mark.parametrize("shard", ["absolute", "relative"])
def test_a_hub_repository_cannot_reach_out_of_its_cache_folder(tmp_path, monkeypatch, outside, opened, shard):
    """An `hf:` repository's index lands in the cache, an allowed folder; it may not name files beside it,
    in another repository, or anywhere else."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hub"
    snapshot = _hub_repo(cache, "someone/evil")
    other = _hub_repo(cache, "someone/victim")  # another repository in the same cache
    save_file(from_native(_tiny().state_dict()), str(other / "model.safetensors"))
    _hf_config(snapshot, outside)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    messages = []
    for target in (other / "model.safetensors", outside / "model.safetensors", tmp_path / "no" / "such.safetensors"):
        _index(snapshot, target if shard == "absolute" else os.path.relpath(target, snapshot))
        messages.append(_refusal("hf:someone/evil"))
    assert len(set(messages)) == 1 and str(tmp_path) not in messages[0]
    assert not opened


def _hub_repo(cache, repo_id):
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


# ---- the same layouts, aimed inside, load -----------------------------------------------------------

def _same_logits(a, b):
    ids = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a(ids), b(ids), atol=1e-5, rtol=0)


def test_links_and_shards_inside_the_folder_load(tmp_path, model):
    folder = tmp_path / "model"
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), folder / "real")
    os.rename(folder / "real" / "config.json", folder / "config.json")
    (folder / "shards").symlink_to("real", target_is_directory=True)
    _index(folder, "shards/model.safetensors")
    loaded, _ = gemma3.load_model(folder, dtype=torch.float32)
    _same_logits(loaded, model)

    (folder / checkpoints.INDEX).unlink()
    (folder / "model.safetensors").symlink_to(folder / "real" / "model.safetensors")  # absolute, but inside
    loaded, _ = gemma3.load_model(folder, dtype=torch.float32)
    _same_logits(loaded, model)


def test_a_hub_download_laid_out_as_links_into_blobs_loads(tmp_path, monkeypatch, model):
    """A real download's snapshot files are links to ../../blobs/<hash>: inside the repository's cache folder."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hub"
    snapshot = _hub_repo(cache, "someone/tiny")
    blobs = snapshot.parent.parent / "blobs"
    gemma3.export_hf(model, gemma3.gpt2_tokenizer(), blobs)
    for i, name in enumerate(("config.json", "model.safetensors")):
        os.rename(blobs / name, blobs / f"{i:040x}")
        (snapshot / name).symlink_to(f"../../blobs/{i:040x}")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    loaded, _ = gemma3.load_model("hf:someone/tiny", dtype=torch.float32)
    _same_logits(loaded, model)


def test_a_tokenizer_link_out_of_the_folder_is_refused_by_the_tokenizer_loader_too(tmp_path, outside):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    with pytest.raises(ValueError, match=OUTSIDE):
        gemma3.load_tokenizer(tmp_path / "a")
    assert isinstance(gemma3.load_tokenizer(tmp_path), gemma3.GPT2Tokenizer)  # no tokenizer.json: GPT-2


# ---- pickles ------------------------------------------------------------------------------------------

RAN = []


def _payload(path):
    RAN.append(path)
    open(path, "w").close()
    return {}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_payload, (self.marker,))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt"])
def test_a_pickle_with_code_in_a_model_folder_never_runs(tmp_path, name):
    marker = tmp_path / "was_executed"
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"model_state_dict": Payload(str(marker)), "x": torch.zeros(1)}, str(folder / name))
    with pytest.raises(ValueError) as e:
        gemma3.load_model(folder)
    msg = str(e.value)
    assert name in msg and "\n" not in msg and str(tmp_path) not in msg
    assert not marker.exists() and not RAN

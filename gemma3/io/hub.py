"""The Hugging Face Hub: `hf:owner/name` sources resolved to a folder in the local cache (downloaded when
needed and allowed), and a short probe of whether the Hub can be reached at all.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from .files import is_model_folder

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def resolve_source(source: str | os.PathLike, token: str | bool | None = None) -> Path:
    """A local path, or `hf:owner/name` downloaded (or found in the cache) with huggingface_hub.

    token: what the Hub requests carry: None, the environment's (HF_TOKEN or the cached login); a token; or
    False, none at all (an app's visitor: a copy already in the cache, else a public repository)."""
    text = str(source)
    if text.startswith("hf:"):
        return _download(text[3:], token)
    path = Path(text).expanduser()
    interrupted = path.with_name(f".{path.name}.old")
    if not path.exists() and is_model_folder(interrupted):
        os.rename(interrupted, path)  # a save stopped between its two renames: restore the previous one
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: give a folder, a weights file, or hf:owner/name.")
    return path


HUB_PROBE_SECONDS = 1.5  # a TCP connect to the Hub takes well under 0.5 s on any working network


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hugging Face Hub (or to the proxy the environment names for it)
    opens within `timeout` seconds.

    One short probe before any download: without a network huggingface_hub and datasets retry for
    24-36 s before giving up. The name lookup and the connect run in a helper thread, because
    getaddrinfo ignores socket timeouts (an unreachable DNS server would hold us for its own).
    """
    import urllib.request
    from urllib.parse import urlsplit

    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    try:
        url = urlsplit(endpoint)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        proxies = urllib.request.getproxies()
        proxy = proxies.get(url.scheme) or proxies.get("all")
        if host and proxy and not urllib.request.proxy_bypass_environment(host, proxies):
            p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            host, port = p.hostname, p.port or (443 if p.scheme == "https" else 80)
    except ValueError:  # a malformed endpoint or proxy setting
        return False
    if not host:
        return False
    opened = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except (OSError, ValueError):
            pass

    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


def _hub_offline() -> bool:
    from huggingface_hub import constants
    env = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return bool(constants.HF_HUB_OFFLINE) or env


def _download(repo_id: str, token: str | bool | None = None) -> Path:
    """A Hub repository's snapshot folder, or one GGUF file of it: `owner/name/file.gguf` names the file;
    a repository of GGUF files only (no transformers weights) gives its one file, or a sentence listing them."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    filename = None
    if repo_id.count("/") > 1 and repo_id.endswith(".gguf"):
        owner, name, filename = repo_id.split("/", 2)
        repo_id = f"{owner}/{name}"
        if ".." in filename.split("/"):
            raise ValueError(f"{filename} is not a file name inside the repository.")
    offline = _hub_offline()
    endpoint = constants.ENDPOINT  # read now, and passed on: HfApi's default endpoint is fixed at import
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]

    def cached():
        if filename:
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))
        return Path(snapshot_download(repo_id, local_files_only=True))

    what = f"{repo_id}/{filename}" if filename else repo_id
    if token is False:  # nobody's credentials: the copy in the cache first, else what anyone may download
        try:
            return cached()
        except Exception:
            pass
    if not offline and not hub_reachable(endpoint):
        try:  # no network: a copy already in the cache still loads, at once
            return cached()
        except Exception:
            raise ConnectionError(f"{what} is not in the local Hugging Face cache and the Hugging Face Hub "
                                  "cannot be reached from here; download it once with a network.") from None
    try:
        if offline:
            return cached()
        if filename:
            return Path(hf_hub_download(repo_id, filename, etag_timeout=10, endpoint=endpoint, token=token))
        files = HfApi(endpoint=endpoint).list_repo_files(repo_id, token=token)
        weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
        ggufs = [f for f in files if f.endswith(".gguf")]
        if ggufs and not weights:
            if len(ggufs) > 1:
                raise _Choose(f"{repo_id} holds several GGUF files ({', '.join(ggufs)}); pick one as "
                              f"hf:{repo_id}/<file>, e.g. hf:{repo_id}/{ggufs[0]}.")
            return Path(hf_hub_download(repo_id, ggufs[0], etag_timeout=10, endpoint=endpoint, token=token))
        if not any(f.endswith(".safetensors") for f in weights):
            patterns += weights[:1] if len(weights) == 1 else [f for f in weights if "pytorch_model" in f]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10, endpoint=endpoint,
                                      token=token))
    except _Choose as e:
        raise ValueError(str(e)) from None
    except Exception as e:
        if offline:
            raise ConnectionError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                                  "download it once with a network.") from None
        raise ConnectionError(f"Could not download {what} from the Hugging Face Hub "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0][:200]}).") from None


class _Choose(Exception):
    """A repository holds several files and the user must name one."""

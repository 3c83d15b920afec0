"""`pip install .` and `pip install -e .`: the packages, the bundled assets and the console scripts work
from any folder, and `python -m gemma3` opens the app's default model when no --model is given.

Each install goes into a fresh venv that sees this interpreter's packages (torch, gradio, ...) and
builds offline (--no-deps --no-build-isolation), from a copy of the checkout so that no build/ or
*.egg-info is left in it. Every command then runs from an unrelated folder, without PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gemma3", "explain", "training", "webapp")
SCRIPTS = ("gemma3", "gemma3-train", "gemma3-app")


def _version(name):
    try:
        return tuple(int(p) for p in re.findall(r"\d+", metadata.version(name))[:2])
    except metadata.PackageNotFoundError:
        return None


def _can_build() -> str | None:
    """Why an offline build (no build isolation) cannot run here, or None."""
    st = _version("setuptools")
    if st is None or st < (64, 0):
        return "needs setuptools >= 64 installed (pip install 'setuptools>=64') to build offline"
    if st < (70, 1) and _version("wheel") is None:
        return "setuptools < 70.1 needs the wheel package to build a wheel"
    return None


needs_build = pytest.mark.skipif(_can_build() is not None, reason=str(_can_build()))


def _copy_checkout(dst: Path) -> Path:
    """The working tree (tracked and new files) without VCS data, build output, caches, runs or data."""
    skip_anywhere = {".git", "__pycache__", ".pytest_cache", ".venv", "build", "dist"}
    skip_top = {"runs", "data", "artifacts"}

    def ignore(folder, names):
        top = Path(folder).resolve() == ROOT
        return [n for n in names if n in skip_anywhere or n.endswith((".egg-info", ".pyc"))
                or (top and n in skip_top)]

    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    return dst


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GEMMA3_MODEL", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONDONTWRITEBYTECODE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(args, cwd, env=None, timeout=300, check=True):
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _venv_with(tmp: Path, *pip_args) -> tuple[Path, Path]:
    """A fresh venv with the checkout's copy installed; (bin, copy). It sees the packages of the interpreter running
    the tests (torch, gradio, setuptools, pip ...) through a .pth file after its own: inside a venv or a conda env
    those are not the base interpreter's, which is all a venv's `system_site_packages` would show."""
    copy = _copy_checkout(tmp / "src")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    ours = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    ours = Path(ours.stdout.strip())
    paths = dict.fromkeys(p for p in (*site.getsitepackages(), site.getusersitepackages(),
                                      sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
                          if Path(p).is_dir() and Path(p).resolve() != ours.resolve())
    (ours / "_tests_see_the_running_interpreter.pth").write_text("".join(f"{p}\n" for p in paths))
    # No pip of its own: the running interpreter's pip (seen through the .pth file) installs into the venv.
    _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          *pip_args, copy], cwd=tmp)
    return bin_dir, copy


def _site(bin_dir: Path, cwd: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_run([bin_dir / "python", "-c", code], cwd=cwd).stdout.strip()).resolve()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, the folder commands run in, the venv's site-packages) after `pip install .`."""
    tmp = tmp_path_factory.mktemp("pkg")
    bin_dir, copy = _venv_with(tmp)
    shutil.rmtree(copy)  # an installed package must not need its source tree
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere, _site(bin_dir, elsewhere)


IMPORTS = """
import sys, gemma3, explain, training, webapp, app
from gemma3.defaults import ASSETS, DEMO_MODEL
from webapp import models
for m in (gemma3, explain, training, webapp, app):
    print("FILE", m.__name__, m.__file__)
print("ASSETS", ASSETS)
print("DEMO", models.DEMO_MODEL == DEMO_MODEL, models.default_source() == str(DEMO_MODEL))
print("TOKENS", gemma3.gpt2_tokenizer().encode("Once upon a time"))
"""


@needs_build
def test_install_imports_everything_from_another_folder(installed):
    bin_dir, elsewhere, site = installed
    out = _run([bin_dir / "python", "-c", IMPORTS], cwd=elsewhere).stdout
    files = dict(re.findall(r"^FILE (\S+) (.+)$", out, flags=re.M))
    assert set(files) == {*PACKAGES, "app"}, out
    for name, file in files.items():   # imported from the venv, not from the checkout
        assert Path(file).resolve().is_relative_to(site), (name, file, site)
    assets = Path(re.search(r"^ASSETS (.+)$", out, flags=re.M).group(1))
    assert assets.resolve() == site / "gemma3" / "assets"
    assert "DEMO True True" in out
    assert "TOKENS [7454, 2402, 257, 640]" in out   # GPT-2's ids: the ranks file came with the package


@needs_build
def test_install_carries_every_asset_and_c_source(installed):
    bin_dir, elsewhere, site = installed
    assets = site / "gemma3" / "assets"   # where gemma3.defaults.ASSETS points once installed (tested above)
    want = {p.relative_to(ROOT / "assets") for p in (ROOT / "assets").rglob("*") if p.is_file()}
    have = {p.relative_to(assets) for p in assets.rglob("*") if p.is_file()}
    assert want and want <= have, sorted(map(str, want - have))
    assert (assets / "demo-model" / "model.safetensors").stat().st_size == \
        (ROOT / "assets" / "demo-model" / "model.safetensors").stat().st_size
    package = assets.parent   # the C/C++ sources gemma3 compiles at run time travel with it
    sources = [p.relative_to(ROOT / "gemma3") for ext in ("*.c", "*.cpp", "*.h") for p in (ROOT / "gemma3").rglob(ext)]
    assert [s for s in sources if not (package / s).is_file()] == []


@needs_build
def test_console_scripts_run_from_another_folder(installed):
    bin_dir, elsewhere, _ = installed
    exe = ".exe" if os.name == "nt" else ""
    for name in SCRIPTS:
        assert (bin_dir / f"{name}{exe}").is_file(), f"no console script {name}"
    info = _run([bin_dir / "gemma3", "info"], cwd=elsewhere)    # no --model: the bundled demo model
    assert re.search(r"Loading \S*gemma3[/\\]assets[/\\]demo-model", info.stderr), info.stderr
    demo = json.loads((ROOT / "assets" / "demo-model" / "config.json").read_text())
    assert f"Gemma 3: {demo['layers']} layers" in info.stdout, info.stdout
    assert f"hidden {demo['hidden']}," in info.stdout and "vocabulary 50257 (gpt2)" in info.stdout, info.stdout

    for name, words in (("gemma3", "convert"), ("gemma3-train", "prepare"), ("gemma3-app", "--runs-dir")):
        helped = _run([bin_dir / name, "--help"], cwd=elsewhere)
        assert words in helped.stdout, helped.stdout
        assert helped.stdout.startswith(f"usage: {name} "), "the usage line names the command as it was typed"


def _readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^From Python:\s*```python\n(.*?)^```", readme, flags=re.M | re.S)
    assert m, "README.md has no 'From Python:' snippet"
    return m.group(1)


@needs_build
def test_readme_python_snippet_runs_from_another_folder(installed):
    bin_dir, elsewhere, _ = installed
    snippet = _readme_snippet()   # shortened: the point is that it runs, not how long it writes
    snippet = snippet.replace("max_new_tokens=200", "max_new_tokens=16").replace("top_p=0.9)", "top_p=0.9, max_new_tokens=16)")
    assert snippet.count("max_new_tokens=16") == 2, snippet
    out = _run([bin_dir / "python", "-c", snippet + "\nprint()\n"], cwd=elsewhere).stdout
    words = re.findall(r"[A-Za-z]+", out)
    assert len(words) > 12 and {"the", "a", "to", "and"} & set(words), out   # two short stories, in English


@needs_build
def test_editable_install_uses_the_checkout(tmp_path):
    bin_dir, copy = _venv_with(tmp_path, "-e")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import importlib.util as u; from gemma3.defaults import ASSETS\n"
            "for m in ('gemma3', 'explain', 'training', 'webapp', 'app'): print(u.find_spec(m).origin)\n"
            "print(ASSETS)")
    out = _run([bin_dir / "python", "-c", code], cwd=elsewhere).stdout.splitlines()
    want = [copy / "gemma3" / "__init__.py", copy / "explain" / "__init__.py", copy / "training" / "__init__.py",
            copy / "webapp" / "__init__.py", copy / "app.py", copy / "assets"]
    assert [Path(p).resolve() for p in out] == [p.resolve() for p in want], out
    assert (bin_dir / ("gemma3.exe" if os.name == "nt" else "gemma3")).is_file()


def test_every_package_folder_is_shipped():
    """A new subpackage (a folder with an __init__.py) must be listed in pyproject.toml, or the install lacks it."""
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        tomllib = pytest.importorskip("tomli")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in PACKAGES for p in (ROOT / top).rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert cfg["package-dir"]["gemma3.assets"] == "assets" and (ROOT / "assets" / "gpt2.tiktoken").is_file()
    assert "app" in cfg["py-modules"]


def test_cli_default_model_is_the_apps(monkeypatch, tmp_path, capsys):
    """python -m gemma3 and the app share one default: $GEMMA3_MODEL, else the bundled demo model."""
    import gemma3.__main__ as cli
    from gemma3 import defaults
    from webapp import models

    monkeypatch.setattr(cli, "keep_freed_memory", lambda: False)   # leave this process's allocator alone
    monkeypatch.delenv("GEMMA3_MODEL", raising=False)
    assert defaults.default_model() == str(defaults.DEMO_MODEL) == models.default_source()
    assert (defaults.DEMO_MODEL / "model.safetensors").is_file()
    monkeypatch.setenv("GEMMA3_MODEL", "hf:someone/some-model")
    assert defaults.default_model() == "hf:someone/some-model" == models.default_source()
    assert models.default_source("cli-choice") == "cli-choice"

    missing = tmp_path / "no-such-model"   # $GEMMA3_MODEL is what `python -m gemma3 generate` opens
    monkeypatch.setenv("GEMMA3_MODEL", str(missing))
    assert cli.main(["generate", "--max-new-tokens", "2"]) == 2
    assert "no-such-model" in capsys.readouterr().err

"""Issue 21 item 5: one trainer per run folder, for the whole run; a second one says who holds it and exits."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.__main__ import main
from training.status import read_status

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--preset", "tiny", "--batch-size", "1", "--seq-len", "8", "--eval-windows", "1", "--sample-tokens", "1",
         "--snapshot-mb", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from training.data import prepare

    out = tmp_path_factory.mktemp("data") / "builtin"
    prepare("builtin", out, builtin_stories=100, progress=False)
    return out


def test_a_second_trainer_or_a_resume_is_refused_while_a_trainer_runs(data, tmp_path, capsys):
    """Issue 21 item 5: while a trainer runs in a folder, a second trainer and a resume of it are refused in one
    sentence naming the holder's pid and start, touching nothing; once the holder is killed (-9), the OS has
    dropped its lock and the folder is the next trainer's."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-m", "training", "train", "--data", str(data), *SMALL,
                               "--max-steps", "1000000", "--out", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while read_status(run).get("state") != "running":
            assert holder.poll() is None and time.monotonic() < deadline, "the first trainer did not start"
            time.sleep(0.1)
        config = (run / "config.json").read_bytes()
        sentence = (rf"error: {re.escape(str(run))} is being trained by process {holder.pid} "
                    r"\(started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it to end, or stop it first "
                    rf"\(create {re.escape(str(run / 'STOP'))}\)\.\n")
        for flags in (["--data", str(data), *SMALL], ["--resume"]):
            assert main(["train", "--out", str(run), "--max-steps", "3", *flags]) == 2
            assert re.fullmatch(sentence, capsys.readouterr().err)
        assert (run / "config.json").read_bytes() == config
        st = read_status(run)
        assert st["pid"] == holder.pid and st["state"] == "running" and not (run / "STOP").exists()
    finally:
        holder.kill()
        holder.wait()
    from training.trainer import claim

    fd, _ = claim(run, True, 1_000_000)
    os.close(fd)

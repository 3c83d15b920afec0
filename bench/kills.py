"""Kill test: the trainer killed (SIGKILL) at random moments and in the middle of its writes, resumed each time.

    python bench/kills.py                     # 20 kills of a tiny run (a few minutes on a CPU)
    python bench/kills.py --kills 40 --seed 3 --steps 120

Each launch is `python -m training train ... [--resume]`, run through this file's child mode, which can
kill the trainer at a chosen point of its writes:
    write      a checkpoint's model file written, its trainer.pt not yet (a temporary .step_N.* folder)
    rename     a checkpoint fully written in its temporary folder, not yet renamed into place
    prune      an old checkpoint being deleted, one of its files already gone
    trash      an old checkpoint renamed out of the set, not yet deleted
    best       best/ moved aside for the new best model, the new one not yet in place
    best-old   the previous best/ being deleted, one of its files already gone
    status     status.json's temporary file written, not yet renamed
    clean      what an earlier kill left being deleted as a run starts, one of its files already gone
or, for `random`, the harness kills it from outside at a random moment once it trains. The first kill
hits the very first checkpoint write (the run then has no complete checkpoint and must start again
from step 0).

After every kill: each checkpoint the run counts as complete (training.trainer.checkpoints) loads,
model and trainer state, and so does best/. After the last resume: the run finished, no temporary
file or folder is left, and the final weights and every logged loss equal those of an uninterrupted
run of the same settings. Prints one line per launch and a summary; exits 1 on a failed check.
tests/test_kill.py runs a short version.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POINTS = ("write", "rename", "prune", "trash", "best", "best-old", "status", "clean", "random")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


# ---- the child: the trainer, with a kill at a chosen point -----------------------------------------

def _install(point: str, occurrence: int):
    """Make this process SIGKILL itself at the `occurrence`-th time it reaches `point`."""
    import shutil

    import training.trainer as trainer_module

    hits = [0]
    deleting: list[str] = []  # names of the folders shutil.rmtree is deleting, innermost last

    def hit(name: str):
        if name == point:
            hits[0] += 1
            if hits[0] == occurrence:
                print(f"KILL at {point} #{occurrence}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    real_write = trainer_module.write_model_files

    def write_model_files(model, tokenizer, folder):
        real_write(model, tokenizer, folder)
        if Path(folder).name.startswith(".step_"):
            hit("write")
    trainer_module.write_model_files = write_model_files

    real_rename, real_replace, real_unlink, real_rmtree = os.rename, os.replace, os.unlink, shutil.rmtree

    def rename(src, dst, *args, **kwargs):
        s, d = Path(os.fsdecode(src)).name, Path(os.fsdecode(dst)).name
        if s.startswith(".step_") and d.startswith("step_"):
            hit("rename")
        real_rename(src, dst, *args, **kwargs)
        if s.startswith("step_") and d.startswith(".step_"):
            hit("trash")
        if s == "best" and d.startswith(".best"):
            hit("best")

    def replace(src, dst, *args, **kwargs):
        if Path(os.fsdecode(src)).name.startswith(".status.json.tmp"):
            hit("status")
        real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):
        deleting.append(Path(os.fsdecode(path)).name)
        try:
            real_rmtree(path, *args, **kwargs)
        finally:
            deleting.pop()

    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if deleting and Path(os.fsdecode(path)).name == "model.safetensors":
            folder = deleting[-1]
            if folder.startswith("step_") or ".deleting." in folder:
                hit("prune")
            elif folder == ".best.old":
                hit("best-old")
            elif folder.startswith((".step_", ".best.")):
                hit("clean")

    os.rename, os.replace, os.unlink, shutil.rmtree = rename, replace, unlink, rmtree


def child(argv: list[str]) -> int:
    """`--child POINT N -- train ARGS...`: the trainer CLI, killed at POINT's N-th occurrence."""
    point, occurrence, rest = argv[0], int(argv[1]), argv[3:]
    sys.path.insert(0, str(ROOT))
    if point != "none":
        _install(point, occurrence)
    from training.__main__ import main
    return main(rest)


# ---- the harness ---------------------------------------------------------------------------------

def train_args(data: Path, out: Path, steps: int) -> list[str]:
    """A tiny run that checkpoints every 2 steps, keeps 2 (so every save prunes) and evaluates every 3."""
    return ["train", f"--data={data}", f"--out={out}", "--preset=tiny", "--device=cpu", "--batch-size=4",
            "--seq-len=32", f"--max-steps={steps}", "--warmup-steps=2", "--log-every=1", "--eval-every=3",
            "--eval-windows=4", "--sample-tokens=2", "--ckpt-every=2", "--keep-last=2"]


def launch(args: list[str], log: Path, point: str = "none", occurrence: int = 1) -> subprocess.Popen:
    """The trainer CLI as a child process (killed at `point`), its output into the file `log`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", point, str(occurrence), "--", *args]
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while the harness polls
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the child; (its return code, its output)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"a trainer ran past {timeout:.0f} s:\n{proc.log.read_text()[-3000:]}") from None
    return proc.returncode, proc.log.read_text(errors="replace")


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"kind": "broken"})
    return out


def losses(run: Path) -> dict[int, float]:
    """Each step's training loss, the last record of it (a resumed run logs again the steps it redoes)."""
    return {r["step"]: r["loss"] for r in _records(run) if r.get("kind") == "train"}


def last_step(run: Path) -> int:
    return max(losses(run), default=0)


def leftovers(run: Path) -> list[str]:
    """Temporary files and folders in a run (the run's .lock is not one)."""
    found = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"] if run.is_dir() else []
    folder = run / "checkpoints"
    if folder.is_dir():
        found += [f"checkpoints/{p.name}" for p in folder.iterdir() if p.name.startswith(".")]
    return sorted(found)


def check_loadable(run: Path) -> int:
    """Load every checkpoint the run counts as complete (and best/); returns how many. Raises if one fails."""
    import torch

    import gemma3
    from training.trainer import checkpoints

    found = checkpoints(run)
    for folder in found:
        gemma3.load_model(folder, device="cpu", dtype=torch.float32)
        state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
        assert state["step"] == int(folder.name.split("_")[1]), folder
    if (run / "best" / "model.safetensors").exists():
        gemma3.load_model(run / "best", device="cpu", dtype=torch.float32)
    return len(found)


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def kill_test(data: Path, work: Path, kills: int = 20, steps: int | None = None, seed: int = 0, plan=None,
              log=print) -> dict:
    """Train a reference run, then the same run killed `kills` times (or as `plan` says: [(point, occurrence)])
    and resumed each time; returns the figures. steps: the run's length, by default 6 per kill."""
    steps = steps or 6 * (len(plan) if plan else kills)
    rng = random.Random(seed)
    reference, run = work / "reference", work / "killed"
    # the uninterrupted run trains beside the killed one (one thread each): it is waited for where its step time
    # is first needed (a kill at a random moment) or at the end, for the comparison
    reference_proc = launch(train_args(data, reference, steps), work / "reference.log")

    @functools.cache
    def per_step() -> float:
        rc, out = finish(reference_proc, 600)
        assert rc == 0, out[-3000:]
        records = [r for r in _records(reference) if r.get("kind") == "train"]
        step = max(0.01, (records[-1]["time"] - records[0]["time"]) / max(1, len(records) - 1))
        log(f"reference: {steps} steps, {step * 1000:.0f} ms a step with its checkpoints")
        return step

    if plan is None:
        plan = [("write", 1)]  # the very first checkpoint write: no complete checkpoint yet
        kinds = [k for k in POINTS if k != "clean"]
        while len(plan) < kills:
            rng.shuffle(kinds)
            for k in kinds:
                plan.append((k, rng.randint(1, 2)))
                if k in ("write", "rename") and rng.random() < 0.5:
                    plan.append(("clean", 1))  # something is left to clean only after these
    plan = list(plan)[:kills]

    figures = {"kills": 0, "planned": len(plan), "by_point": {}, "launches": 0, "resumed_from_zero": 0,
               "leftovers_seen": 0, "checkpoints_loaded": 0, "missed": 0}
    args = train_args(data, run, steps)
    for i, (point, n) in enumerate(plan):
        before = last_step(run)
        proc = launch(args + (["--resume"] if i else []), work / f"launch-{i + 1}.log", point, n)
        if point == "random":
            while last_step(run) <= before and proc.poll() is None:
                time.sleep(0.02)  # until it trains (its first new step)
            time.sleep(rng.uniform(0, 4 * per_step()))
            proc.send_signal(signal.SIGKILL)
        else:  # a point it never reaches: killed from outside after a dozen new steps
            while proc.poll() is None and last_step(run) <= before + 12:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        rc, out = finish(proc, 600)
        figures["launches"] += 1
        if "starts from step 0" in out:
            figures["resumed_from_zero"] += 1
        if rc != -signal.SIGKILL:
            assert rc == 0, f"launch {i + 1} ({point}) failed:\n{out[-3000:]}"
            figures["missed"] += 1
            log(f"{i + 1:3d} {point:8s} #{n}: not reached, the run finished")
            break
        where = point if point == "random" or f"KILL at {point}" in out else "random"
        figures["kills"] += 1
        figures["by_point"][where] = figures["by_point"].get(where, 0) + 1
        left = leftovers(run)
        figures["leftovers_seen"] += len(left)
        loaded = check_loadable(run)
        figures["checkpoints_loaded"] += loaded
        nth = "" if where == "random" else f"#{n}"
        log(f"{i + 1:3d} {where:8s} {nth:3s}: killed at step {last_step(run):3d}; {loaded} complete checkpoint(s) "
            f"load; left behind: {', '.join(left) or 'nothing'}")

    if not figures["missed"]:  # else the run has finished already, and a resume of it is refused
        rc, out = finish(launch(args + ["--resume"], work / "last.log"), 600)
        figures["launches"] += 1
        assert rc == 0, f"the last resume failed:\n{out[-3000:]}"
    per_step()   # the reference has finished
    status = json.loads((run / "status.json").read_text())
    final = f"step_{steps:07d}"
    figures.update(
        finished=status["state"] == "finished", leftovers_at_end=leftovers(run), final_checkpoints=check_loadable(run),
        same_weights=same_weights(reference / "checkpoints" / final, run / "checkpoints" / final),
        same_losses=losses(reference) == losses(run))
    log(f"end: {status['state']}; leftovers {figures['leftovers_at_end'] or 'none'}; final weights "
        f"{'equal' if figures['same_weights'] else 'DIFFER from'} the uninterrupted run's; losses "
        f"{'equal' if figures['same_losses'] else 'DIFFER'}")
    return figures


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=80, help="max steps of the run (enough for every kill)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the data and runs (default: a temporary one)")
    args = p.parse_args()
    import tempfile

    sys.path.insert(0, str(ROOT))
    from training.data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data = work / "data"
        prepare("builtin", data, builtin_stories=300, progress=False)
        t0 = time.monotonic()
        f = kill_test(data, work, args.kills, args.steps, args.seed)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(f["by_point"].items()))
        print(f"\n{f['kills']} kills of {f['planned']} planned ({kinds}); {f['launches']} launches; "
              f"{f['resumed_from_zero']} resumed from step 0; {f['checkpoints_loaded']} complete checkpoints "
              f"loaded after the kills; {f['leftovers_seen']} temporary files or folders seen after them, "
              f"{len(f['leftovers_at_end'])} at the end; final weights "
              f"{'equal' if f['same_weights'] else 'differ from'} the uninterrupted run's, losses "
              f"{'equal' if f['same_losses'] else 'differ'}; {time.monotonic() - t0:.0f} s.")
        ok = (f["kills"] == f["planned"] and f["finished"] and not f["leftovers_at_end"] and f["same_weights"]
              and f["same_losses"])
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

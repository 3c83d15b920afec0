"""The Train tab's words and pictures for a run, from its folder (no app needed)."""

from pathlib import Path

import pytest

from training import runs
from webapp.train import state_words


@pytest.mark.parametrize("status, words", [
    (dict(state="stopped", reason="stopped by signal SIGTERM", step=120, max_steps=300),
     "stopped by you at step 120 of 300; Resume continues it"),
    (dict(state="stopped", reason="stop requested (STOP file)", step=5, max_steps=300),
     "stopped by you at step 5 of 300; Resume continues it"),
    (dict(state="running", step=40, max_steps=300), "running: step 40 of 300"),
    (dict(state="starting", step=0, max_steps=300), "starting …"),
    (dict(state="finished", reason="reached 300 steps", step=300, max_steps=300), "finished: all 300 steps"),
    (dict(state="failed", reason="Out of GPU memory with micro-batch 32 x 512: use a smaller --batch-size.",
          step=7, max_steps=300),
     "failed at step 7: Out of GPU memory with micro-batch 32 x 512: use a smaller --batch-size."),
    (dict(state="failed", reason=runs.DIED, step=12, max_steps=300),
     "interrupted at step 12 of 300 (its processes ended, e.g. the app restarted); Resume starts it again "
     "from step 0 (it has no checkpoint)"),
])
def test_a_run_state_reads_as_people_say_it(status, words):
    assert state_words(status) == words


def test_an_interrupted_run_names_its_last_checkpoint():
    st = dict(state="failed", reason=runs.DIED, step=12, max_steps=300)
    assert state_words(st, Path("runs/x/checkpoints/step_0000010")).endswith(
        "Resume continues it from its last checkpoint, step 10")
    assert "step 10" in state_words(st, Path("runs/x/checkpoints/step_0000010"))

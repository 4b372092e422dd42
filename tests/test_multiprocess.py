"""DistillationTrainer under two real processes (torchrun, gloo, CPU) against one process with the same global batch.

Launches tests/distil_tiny_bert.py twice: `torchrun --nproc_per_node 2` at 4 rows per process, and plain `python` at
8 rows. Each process writes its trained student + projections and how it handled the teacher.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # two launches of fresh interpreters: about a minute, more on a busy machine

SCRIPT = os.path.join(os.path.dirname(__file__), "distil_tiny_bert.py")
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ("hard_loss", "logit_loss", "hidden_loss", "attention_loss")
# About a minute on 2 idle cores; far longer when other jobs hold them.
TIMEOUT_S = 1800


def _launch(command: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(process: subprocess.Popen) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun passes SIGTERM on to its workers
        output, _ = process.communicate()
        pytest.fail(f"{process.args} ran over {TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]


def _read(output_dir, rank: int) -> tuple[dict, dict]:
    with open(output_dir / f"rank{rank}.json", encoding="utf-8") as file:
        report = json.load(file)
    return load_file(str(output_dir / f"rank{rank}.safetensors")), report


def _training_logs(report: dict) -> list[dict]:
    return [entry for entry in report["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if TORCHRUN is None:
        pytest.skip(f"no torchrun next to {sys.executable}")
    two_dir, one_dir = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
    two = _launch(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", SCRIPT, str(two_dir), "--per_device_train_batch_size", "4"]
    )
    one = _launch([sys.executable, SCRIPT, str(one_dir), "--per_device_train_batch_size", "8"])
    _wait(two)
    _wait(one)
    return [_read(two_dir, rank) for rank in (0, 1)], _read(one_dir, 0)


def test_two_processes_really_ran_ddp(runs):
    two_processes, _ = runs
    for _, report in two_processes:
        assert report["world_size"] == 2
        assert report["model_wrapped_in_ddp"]


def test_the_teacher_is_never_wrapped_trained_or_optimised(runs):
    two_processes, one_process = runs
    for _, report in [*two_processes, one_process]:
        assert report["teacher_is_the_given_model"] and not report["teacher_wrapped_in_ddp"]
        assert not report["teacher_requires_grad"] and not report["teacher_has_grads"]
        assert not report["teacher_in_optimizer"]
        assert not report["teacher_training"] and report["teacher_unchanged"]
        assert report["teacher_device"] == "cpu"


def test_student_and_projections_are_identical_on_both_ranks(runs):
    (state0, _), (state1, _) = runs[0]
    assert any(name.startswith("projections.") for name in state0)
    assert state0.keys() == state1.keys()
    for name in state0:
        # Exact: DDP all-reduces the gradients, so both ranks take the very same steps.
        assert torch.equal(state0[name], state1[name]), f"{name} differs between ranks"


def test_two_processes_train_as_one_process_with_their_global_batch(runs):
    (state, _), _ = runs[0]
    one_state, _ = runs[1]
    assert state.keys() == one_state.keys()
    for name in state:
        # Gradients summed in another float32 order move the weights apart by ~1e-7 in 3 steps of lr 0.5.
        torch.testing.assert_close(state[name], one_state[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_logged_loss_and_components_are_reduced_over_both_processes(runs):
    (_, report0), (_, report1) = runs[0]
    _, one_report = runs[1]
    logs = _training_logs(report0)
    assert len(logs) == 3
    # Each process logs the same, all-process values; they match one process fed the whole global batch, so a
    # component is weighted by its positions on every process (the ragged rows give the processes different counts).
    # Tolerance: the ranks log one all-gathered value; one process sums its batch in another float32 order. The
    # logit loss (3e-5 to 4e-4) is a difference of log-probabilities of ~0.7: its rounding is absolute, ~1e-7, not
    # relative, hence the abs floor. A mean of per-process means moves the loss and hidden loss by ~5e-4 of themselves.
    for entry, other_rank, one_entry in zip(logs, _training_logs(report1), _training_logs(one_report), strict=True):
        for name in ("loss", *COMPONENTS):
            assert entry[name] == pytest.approx(other_rank[name], rel=1e-6), name
            assert entry[name] == pytest.approx(one_entry[name], rel=1e-5, abs=1e-6), (name, entry, one_entry)
        weighted = 0.3 * entry["hard_loss"] + 0.7 * entry["logit_loss"] + 2.0 * entry["hidden_loss"]
        assert entry["loss"] == pytest.approx(weighted + 0.1 * entry["attention_loss"], rel=1e-5)

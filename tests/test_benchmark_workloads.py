"""benchmarks/workloads.py, step_overhead.py and peak_memory.py: the pairs and batches they build, their CUDA refusal
without CUDA, and one tiny run of each mode printing its ratios."""

import argparse
import os
import re
import subprocess
import sys

import pytest
import torch
from test_student_runs import BENCHMARKS, load


def options(**overrides) -> argparse.Namespace:
    settings = dict(task="classification", teacher="minilm", batch_size=4, seq_len=None, device="cpu", bf16=False)
    settings.update(threads=torch.get_num_threads(), **overrides)
    return argparse.Namespace(**settings)


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_the_bert_base_teacher_is_built_from_its_config_with_the_task_head(task):
    workloads = load("workloads")
    teacher = workloads.build_teacher(workloads.resolve(options(task=task, teacher="bert-base")))
    config = teacher.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
    assert type(teacher).__name__ == ("BertLMHeadModel" if task == "causal_lm" else "BertForSequenceClassification")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = workloads.build_student(teacher)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (4, 312)


def test_causal_batches_label_every_real_token_and_ignore_padding():
    workloads = load("workloads")
    settings = workloads.resolve(options(task="causal_lm", batch_size=8))
    batch = workloads.make_batch(settings, 30522)
    assert batch["input_ids"].shape == (8, 128)  # the language-modelling default's block size
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["labels"][padded] == -100).all()
    assert torch.equal(batch["labels"][~padded], batch["input_ids"][~padded])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_with_the_fix():
    workloads = load("workloads")
    with pytest.raises(SystemExit, match="torch finds no CUDA device"):
        workloads.resolve(options(device="cuda"))


def run_benchmark(script: str, *flags: str) -> str:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, str(BENCHMARKS / script), *flags]
    return subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout


@pytest.mark.slow
def test_step_and_loop_modes_print_their_ratios():
    tiny = ("--batch_size", "2", "--seq_len", "8", "--threads", "1")
    steps = run_benchmark("step_overhead.py", *tiny, "--rounds", "1", "--warmup", "0")
    for name in ("logits only", "all losses", "all plus relation"):
        assert re.search(rf"P1 {name} +=.* = \d+\.\d{{3}}", steps), steps
    loop = run_benchmark("step_overhead.py", *tiny, "--mode", "loop", "--batches", "2", "--rounds", "1")
    assert re.search(r"real-loop ratio, all losses = .* = \d+\.\d{3}", loop), loop
    memory = run_benchmark("peak_memory.py", *tiny, "--steps", "1")
    assert re.search(r"P5 peak memory, all losses  = .* = \d+\.\d{3}", memory), memory

"""Logit KD over a large vocabulary: the chunked `nlpkd.losses.logit_kd_loss` against the unchunked computation it
replaced (select the counted positions, fp32 log-softmax of both sides, KL, autograd), forward and backward of the
loss alone, in one run. The kinds are timed in turns, round after round; medians are reported.

    python benchmarks/logit_loss.py [--positions 4064] [--classes 30522] [--chunks 16 17 18 20 24] [--rounds 3]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nlpkd.losses import logit_kd_loss

TEMPERATURE = 2.0


def unchunked(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss as it was computed before chunking: whole (N, C) fp32 tensors, differentiated by autograd."""
    student_log_probs = F.log_softmax(student[mask].float() / TEMPERATURE, dim=-1)
    teacher_log_probs = F.log_softmax(teacher[mask].float() / TEMPERATURE, dim=-1)
    per_position = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(-1)
    return per_position.mean() * TEMPERATURE**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=4064, help="32 x 127 next-token positions")
    parser.add_argument("--classes", type=int, default=30522)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 17, 18, 20, 24], help="log2 logits per chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(options.positions, options.classes, generator=generator)
    teacher = torch.randn(options.positions, options.classes, generator=generator)
    mask = torch.rand(options.positions, generator=generator) < 0.9
    kinds = {"unchunked": lambda leaf: unchunked(leaf, teacher, mask)}
    for power in options.chunks:
        kinds[f"chunks of 2^{power}"] = lambda leaf, power=power: logit_kd_loss(
            leaf, teacher, TEMPERATURE, "kl", mask, chunk_elements=2**power
        )
    seconds = {name: [] for name in kinds}
    for _ in range(options.rounds):
        for name, loss in kinds.items():
            leaf = student.clone().requires_grad_()
            start = time.perf_counter()
            loss(leaf).backward()
            seconds[name].append(time.perf_counter() - start)
    shape = f"{options.positions} positions x {options.classes} classes"
    print(f"{shape}, {options.threads} threads, {options.rounds} rounds")
    for name, values in seconds.items():
        print(f"  {name:16s} {statistics.median(values):7.3f} s (median: forward and backward)")


if __name__ == "__main__":
    main()

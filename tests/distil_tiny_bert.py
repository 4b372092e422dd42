"""A few DistillationTrainer steps on tiny config-built BERTs, for tests/test_multiprocess.py to launch.

    python tests/distil_tiny_bert.py OUTPUT_DIR --per_device_train_batch_size 8
    torchrun --standalone --nproc_per_node 2 tests/distil_tiny_bert.py OUTPUT_DIR --per_device_train_batch_size 4

Every process writes OUTPUT_DIR/rank<N>.safetensors (the student and its projections, as the Trainer's model holds
them) and OUTPUT_DIR/rank<N>.json (how the teacher was handled, whether the model was wrapped for DDP, the logs).
Fixed seeds, no dropout, sequential batches and plain SGD: runs with the same global batch train the same weights.
"""

import argparse
import json
import os

import safetensors.torch
import torch
from conftest import PadCollator, make_classification_dataset, tiny_bert_config
from torch.nn.parallel import DistributedDataParallel
from transformers import BertForSequenceClassification

from nlpkd import DistillationArguments, DistillationTrainer

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STUDENT_SHAPE = dict(hidden_size=16, num_hidden_layers=2, intermediate_size=20)
ALL_LOSSES = dict(hard_label_weight=0.3, logit_weight=0.7, hidden_weight=2.0, attention_weight=0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--per_device_train_batch_size", type=int, required=True)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--num_rows", type=int, default=24)
    options = parser.parse_args()
    torch.set_num_threads(1)

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(**NO_DROPOUT)).eval()
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_bert_config(**STUDENT_SHAPE, **NO_DROPOUT))
    teacher_before = {name: value.clone() for name, value in teacher.state_dict().items()}

    args = DistillationArguments(
        output_dir=options.output_dir,
        report_to="none",
        use_cpu=True,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.per_device_train_batch_size,
        train_sampling_strategy="sequential",
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **ALL_LOSSES,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        # Ragged lengths: processes see different token counts, which the losses must weigh correctly.
        train_dataset=make_classification_dataset(num_rows=options.num_rows, seed=5),
        data_collator=PadCollator(),
    )
    trainer.train()

    rank = args.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    safetensors.torch.save_file(state, os.path.join(options.output_dir, f"rank{rank}.safetensors"))
    optimized = {id(param) for group in trainer.optimizer.param_groups for param in group["params"]}
    report = {
        "world_size": args.world_size,
        "model_wrapped_in_ddp": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "teacher_is_the_given_model": trainer.teacher is teacher,
        "teacher_wrapped_in_ddp": isinstance(trainer.teacher, DistributedDataParallel),
        "teacher_requires_grad": any(param.requires_grad for param in teacher.parameters()),
        "teacher_has_grads": any(param.grad is not None for param in teacher.parameters()),
        "teacher_in_optimizer": any(id(param) in optimized for param in teacher.parameters()),
        "teacher_training": any(module.training for module in teacher.modules()),
        "teacher_unchanged": all(torch.equal(value, teacher_before[n]) for n, value in teacher.state_dict().items()),
        "teacher_device": str(next(teacher.parameters()).device),
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(options.output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()

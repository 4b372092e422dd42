"""The distillation losses as maths: zeros, hand-computed values, T² scaling, masks, fp32."""

import math

import numpy as np
import pytest
import torch

from nlpkd.losses import attention_kl_loss, attention_scores_mse_loss, hidden_mse_loss, logit_kd_loss


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _hand_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> float:
    """Σ_c p_T log(p_T / p_S), averaged over every leading position, in float64 numpy."""
    p_student = _softmax(student_logits.double().numpy() / temperature)
    p_teacher = _softmax(teacher_logits.double().numpy() / temperature)
    per_position = (p_teacher * np.log(p_teacher / p_student)).sum(-1)
    return float(per_position.mean())


def _hand_entropy(teacher_logits: torch.Tensor, temperature: float) -> float:
    p_teacher = _softmax(teacher_logits.double().numpy() / temperature)
    return float(-(p_teacher * np.log(p_teacher)).sum(-1).mean())


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 7, generator=generator) * 2
    teacher = torch.randn(3, 5, 7, generator=generator) * 2
    return student, teacher


@pytest.fixture
def token_mask():
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)


# ---- identical inputs give 0 ----


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_logit_loss_of_identical_logits_is_zero(logits, kind):
    student, _ = logits
    assert logit_kd_loss(student, student.clone(), temperature=3.0, kind=kind).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_ce_of_identical_logits_is_the_teacher_entropy(logits):
    # Cross-entropy does not vanish for identical inputs: it is the entropy, which makes its minimum teacher-dependent.
    student, _ = logits
    loss = logit_kd_loss(student, student.clone(), temperature=2.0, kind="soft_ce")
    assert loss.item() == pytest.approx(_hand_entropy(student, 2.0) * 4.0, rel=1e-5)
    assert loss.item() > 0.1


def test_hidden_and_attention_losses_of_identical_inputs_are_zero(token_mask):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 5, 8, generator=generator)
    scores = torch.randn(3, 2, 5, 5, generator=generator)
    assert hidden_mse_loss(hidden, hidden.clone(), token_mask).item() == 0.0
    assert attention_scores_mse_loss(scores, scores.clone(), token_mask).item() == 0.0
    assert attention_kl_loss(scores, scores.clone(), token_mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl_loss(scores, scores.clone()).item() == pytest.approx(0.0, abs=1e-6)


# ---- logit losses ----


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_kl_matches_hand_computation_times_t_squared(logits, temperature):
    student, teacher = logits
    loss = logit_kd_loss(student, teacher, temperature=temperature, kind="kl")
    assert loss.item() == pytest.approx(_hand_kl(student, teacher, temperature) * temperature**2, rel=1e-5)


def test_logit_kl_is_scaled_by_t_squared(logits):
    student, teacher = logits
    at_1 = logit_kd_loss(student, teacher, temperature=1.0, kind="kl").item()
    at_4 = logit_kd_loss(student, teacher, temperature=4.0, kind="kl").item()
    # Not just T² times the T=1 value: the distributions soften too; the ratio is exactly 16 × the raw KL ratio.
    raw_ratio = _hand_kl(student, teacher, 4.0) / _hand_kl(student, teacher, 1.0)
    assert at_4 / at_1 == pytest.approx(16.0 * raw_ratio, rel=1e-5)
    assert raw_ratio < 1.0  # softer distributions are closer


def test_logit_kl_fixed_value():
    # p_T = (3/4, 1/4), p_S = (1/2, 1/2): KL = 3/4·ln(3/2) + 1/4·ln(1/2).
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert expected == pytest.approx(0.1308120, abs=1e-7)
    # float32 against float64: the KL is a difference of terms of ~0.3 (a few ulp, ~1e-7, absolute), hence abs.
    assert logit_kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # At T=2 the teacher's logits halve: p_T = (√3, 1)/(√3 + 1).
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    assert logit_kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected_t2, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_ce_is_kl_plus_teacher_entropy(logits, temperature):
    student, teacher = logits
    soft_ce = logit_kd_loss(student, teacher, temperature=temperature, kind="soft_ce").item()
    kl = logit_kd_loss(student, teacher, temperature=temperature, kind="kl").item()
    assert soft_ce == pytest.approx(kl + _hand_entropy(teacher, temperature) * temperature**2, rel=1e-5)


def test_logit_mse_is_on_raw_logits_and_ignores_temperature(logits):
    student, teacher = logits
    expected = float(((student.double() - teacher.double()) ** 2).mean())
    for temperature in (1.0, 5.0):
        loss = logit_kd_loss(student, teacher, temperature=temperature, kind="mse")
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    fixed = logit_kd_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), temperature=2.0, kind="mse")
    assert fixed.item() == pytest.approx(2.5)


def test_logit_loss_rejects_unknown_kind(logits):
    student, teacher = logits
    with pytest.raises(ValueError, match="kind must be one of 'kl', 'soft_ce', 'mse', got 'js'"):
        logit_kd_loss(student, teacher, kind="js")


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_logit_loss_ignores_masked_positions(logits, token_mask, kind):
    student, teacher = logits
    loss = logit_kd_loss(student, teacher, temperature=2.0, kind=kind, mask=token_mask)
    changed_student, changed_teacher = student.clone(), teacher.clone()
    changed_student[~token_mask] = 100.0 * torch.randn_like(changed_student[~token_mask])
    changed_teacher[~token_mask] = -50.0
    changed = logit_kd_loss(changed_student, changed_teacher, temperature=2.0, kind=kind, mask=token_mask)
    assert changed.item() == pytest.approx(loss.item(), rel=1e-6)
    # ...and equals the loss over the valid positions alone.
    valid_only = logit_kd_loss(student[token_mask], teacher[token_mask], temperature=2.0, kind=kind)
    assert loss.item() == pytest.approx(valid_only.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
def test_logit_loss_of_all_masked_batch_is_zero_with_finite_gradients(logits, kind):
    student, teacher = logits
    student = student.clone().requires_grad_(True)
    loss = logit_kd_loss(student, teacher, temperature=2.0, kind=kind, mask=torch.zeros(3, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().max().item() == 0.0


# ---- hidden states ----


def test_hidden_mse_counts_only_non_padding_tokens(token_mask):
    generator = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 5, 8, generator=generator), torch.randn(3, 5, 8, generator=generator)
    loss = hidden_mse_loss(student, teacher, token_mask.long())
    expected = ((student - teacher) ** 2)[token_mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # a mean of per-token means: another sum order
    changed = student.clone()
    changed[~token_mask] = 1e3
    assert hidden_mse_loss(changed, teacher, token_mask.long()).item() == pytest.approx(loss.item(), rel=1e-6)
    assert hidden_mse_loss(changed, teacher).item() > 1e4  # without a mask, padding counts


def test_hidden_mse_fixed_value():
    student = torch.tensor([[[1.0, 2.0], [3.0, 3.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    # Token 0: (1 + 4)/2 = 2.5; token 1 is padding.
    assert hidden_mse_loss(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(2.5)
    assert hidden_mse_loss(student, teacher).item() == pytest.approx((2.5 + 9.0) / 2)


def test_hidden_mse_of_all_padding_is_zero_with_finite_gradients():
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = hidden_mse_loss(student, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(student.grad).all() and student.grad.abs().max().item() == 0.0


# ---- attention maps ----


@pytest.fixture
def scores():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, 2, 5, 5, generator=generator) * 3, torch.randn(3, 2, 5, 5, generator=generator) * 3


def _perturb_padding(scores: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Overwrite every score whose query row or key column is padding."""
    changed = scores.clone()
    pair_is_valid = (token_mask[:, :, None] & token_mask[:, None, :])[:, None].expand_as(scores)
    changed[~pair_is_valid] = 1e4
    return changed


def test_attention_score_mse_ignores_padded_rows_and_columns(scores, token_mask):
    student, teacher = scores
    loss = attention_scores_mse_loss(student, teacher, token_mask.long())
    assert attention_scores_mse_loss(_perturb_padding(student, token_mask), teacher, token_mask.long()).item() == (
        pytest.approx(loss.item(), rel=1e-6)
    )
    # Padded rows alone, and padded columns alone, each leave the loss unchanged.
    rows, columns = student.clone(), student.clone()
    rows[2, :, 1:, :] = -7.0
    columns[1, :, :, 3:] = 9.0
    for changed in (rows, columns):
        assert attention_scores_mse_loss(changed, teacher, token_mask).item() == pytest.approx(loss.item(), rel=1e-6)
    expected_terms = [
        ((student[b, :, :n, :n] - teacher[b, :, :n, :n]) ** 2).flatten() for b, n in enumerate((5, 3, 1))
    ]
    assert loss.item() == pytest.approx(torch.cat(expected_terms).mean().item(), rel=1e-5)  # sums in another order


def test_attention_score_mse_fixed_value():
    student = torch.zeros(1, 1, 2, 2)
    teacher = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert attention_scores_mse_loss(student, teacher).item() == pytest.approx(30.0 / 4)
    assert attention_scores_mse_loss(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


def _hand_attention_kl(student: torch.Tensor, teacher: torch.Tensor, lengths: tuple[int, ...]) -> float:
    """KL(p_T ‖ p_S) per valid query row over the valid keys, head-averaged maps when head counts differ."""
    terms = []
    for b, n in enumerate(lengths):
        p_student = _softmax(student[b, :, :n, :n].double().numpy())  # (H, n, n)
        p_teacher = _softmax(teacher[b, :, :n, :n].double().numpy())
        if p_student.shape[0] != p_teacher.shape[0]:
            p_student, p_teacher = p_student.mean(0, keepdims=True), p_teacher.mean(0, keepdims=True)
        terms.append((p_teacher * np.log(p_teacher / p_student)).sum(-1).ravel())  # one per (head, row)
    return float(np.concatenate(terms).mean())


def test_attention_kl_matches_hand_computation_and_ignores_padding(scores, token_mask):
    student, teacher = scores
    loss = attention_kl_loss(student, teacher, token_mask.long())
    assert loss.item() == pytest.approx(_hand_attention_kl(student, teacher, (5, 3, 1)), rel=1e-5)
    perturbed = attention_kl_loss(
        _perturb_padding(student, token_mask), _perturb_padding(teacher, token_mask), token_mask.long()
    )
    assert perturbed.item() == pytest.approx(loss.item(), rel=1e-6)


def test_attention_kl_without_mask_matches_hand_computation(scores):
    student, teacher = scores
    assert attention_kl_loss(student, teacher).item() == pytest.approx(
        _hand_attention_kl(student, teacher, (5, 5, 5)), rel=1e-5
    )


def test_attention_kl_fixed_value():
    # One query over two keys: p_S = (1/2, 1/2), p_T = (3/4, 1/4).
    student = torch.zeros(1, 1, 1, 2)
    teacher = torch.tensor([[[[math.log(3.0), 0.0]]]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # float32 against float64: abs, as in test_logit_kl_fixed_value.
    assert attention_kl_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_attention_kl_with_different_head_counts_compares_head_averaged_maps(token_mask):
    generator = torch.Generator().manual_seed(4)
    student = torch.randn(3, 2, 5, 5, generator=generator) * 2
    teacher = torch.randn(3, 6, 5, 5, generator=generator) * 2
    loss = attention_kl_loss(student, teacher, token_mask)
    assert loss.item() == pytest.approx(_hand_attention_kl(student, teacher, (5, 3, 1)), rel=1e-5)
    # A student whose every head is the teacher's head-average map scores 0.
    p_teacher_mean = torch.softmax(teacher, -1).mean(1, keepdim=True)
    student_matching = p_teacher_mean.log().expand(3, 2, 5, 5)
    assert attention_kl_loss(student_matching, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_losses_of_all_padding_are_zero_with_finite_gradients(scores):
    student, teacher = scores
    no_tokens = torch.zeros(3, 5, dtype=torch.long)
    for loss_fn in (attention_scores_mse_loss, attention_kl_loss):
        leaf = student.clone().requires_grad_(True)
        loss = loss_fn(leaf, teacher, no_tokens)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().max().item() == 0.0


def test_attention_kl_gradient_is_finite_with_partly_padded_rows(scores, token_mask):
    student, teacher = scores
    leaf = student.clone().requires_grad_(True)
    attention_kl_loss(leaf, teacher, token_mask).backward()
    assert torch.isfinite(leaf.grad).all()
    pair_is_valid = (token_mask[:, :, None] & token_mask[:, None, :])[:, None].expand_as(leaf)
    assert leaf.grad[~pair_is_valid].abs().max().item() == 0.0
    assert leaf.grad[pair_is_valid].abs().max().item() > 0.0


# ---- precision ----


def test_bf16_inputs_are_computed_in_fp32(logits, scores, token_mask):
    student, teacher = logits
    student_bf16, teacher_bf16 = student.bfloat16(), teacher.bfloat16()
    for kind in ("kl", "soft_ce", "mse"):
        loss = logit_kd_loss(student_bf16, teacher_bf16, temperature=2.0, kind=kind, mask=token_mask)
        assert loss.dtype == torch.float32
        reference = logit_kd_loss(
            student_bf16.float(), teacher_bf16.float(), temperature=2.0, kind=kind, mask=token_mask
        )
        assert loss.item() == reference.item()
    hidden = hidden_mse_loss(student_bf16, teacher_bf16, token_mask)
    assert hidden.dtype == torch.float32
    assert hidden.item() == hidden_mse_loss(student_bf16.float(), teacher_bf16.float(), token_mask).item()
    student_scores, teacher_scores = (s.bfloat16() for s in scores)
    for loss_fn in (attention_scores_mse_loss, attention_kl_loss):
        loss = loss_fn(student_scores, teacher_scores, token_mask)
        assert loss.dtype == torch.float32
        assert loss.item() == loss_fn(student_scores.float(), teacher_scores.float(), token_mask).item()


# ---- causal attention ----


@pytest.mark.parametrize("loss", [attention_scores_mse_loss, attention_kl_loss], ids=["mse", "kl"])
def test_causal_attention_losses_ignore_future_keys(loss):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    changed = student.masked_fill(future, 1e4)  # wildly different scores on keys after the query
    torch.testing.assert_close(loss(changed, teacher, mask, causal=True), loss(student, teacher, mask, causal=True))
    assert not torch.allclose(loss(changed, teacher, mask), loss(student, teacher, mask))


def test_causal_attention_mse_averages_over_past_and_present_pairs_only():
    student, teacher = torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3)
    teacher[..., 0, 0] = 3.0  # pair (0, 0): squared error 9; the other 5 counted pairs: 1 each
    mask = torch.ones(1, 3)
    assert attention_scores_mse_loss(student, teacher, mask, causal=True).item() == pytest.approx((9 + 5) / 6)
    assert attention_scores_mse_loss(student, teacher, None, causal=True).item() == pytest.approx((9 + 5) / 6)


def test_causal_attention_kl_matches_a_hand_computation_on_the_lower_triangle():
    torch.manual_seed(1)
    student, teacher = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    expected = []
    for row in range(4):
        p = teacher[..., row, : row + 1].softmax(-1)
        q = student[..., row, : row + 1].softmax(-1)
        expected.append((p * (p.log() - q.log())).sum(-1))
    expected = torch.stack(expected, -1).mean()
    torch.testing.assert_close(attention_kl_loss(student, teacher, None, causal=True), expected)

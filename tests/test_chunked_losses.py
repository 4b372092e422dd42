"""Chunked logit KD and the attention MSE from queries and keys against the plain computations they replace: the
same values and gradients, whatever the chunking, padding and leading dims."""

import pytest
import torch
import torch.nn.functional as F

from nlpkd import losses
from nlpkd.losses import (
    attention_mse_from_projections,
    attention_scores_mse_loss,
    hidden_mse_loss,
    logit_kd_loss,
    pair_mask,
    token_cross_entropy,
)
from nlpkd.positions import batch_counts

CLASSES = 37


def reference_logit_loss(student, teacher, temperature, kind, mask):
    """The unchunked loss, by selecting the counted positions and letting autograd differentiate it."""
    student, teacher = student[mask].float(), teacher[mask].float()
    if kind == "mse":
        return (student - teacher).pow(2).mean(-1).mean()
    log_student = F.log_softmax(student / temperature, -1)
    log_teacher = F.log_softmax(teacher / temperature, -1)
    if kind == "kl":
        per_row = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    else:
        per_row = -(log_teacher.exp() * log_student).sum(-1)
    return per_row.mean() * temperature**2


def logits_and_mask(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 11, CLASSES, generator=generator) * 3
    teacher = torch.randn(3, 11, CLASSES, generator=generator) * 3
    mask = torch.rand(3, 11, generator=generator) < 0.6
    return student, teacher, mask


@pytest.mark.parametrize("kind", ["kl", "soft_ce", "mse"])
@pytest.mark.parametrize("chunk_positions", [1, 4, 7, 33, 1000])  # 33 and 7 leave a ragged last chunk
def test_chunked_logit_loss_equals_the_unchunked_loss_in_value_and_gradient(kind, chunk_positions):
    student, teacher, mask = logits_and_mask()
    student_a = student.clone().requires_grad_()
    student_b = student.clone().requires_grad_()
    loss = logit_kd_loss(student_a, teacher, 2.0, kind, mask, chunk_elements=chunk_positions * CLASSES)
    expected = reference_logit_loss(student_b, teacher, 2.0, kind, mask)
    loss.backward()
    expected.backward()
    # fp32 sums of ~20 terms of size ~10 in another order: a few ulps of the loss; gradients ~1e-2 in size.
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(student_a.grad, student_b.grad, rtol=1e-6, atol=1e-7)
    assert not student_a.grad[~mask].any()  # positions outside the mask get exactly no gradient


def test_chunk_count_does_not_change_the_gradient():
    student, teacher, mask = logits_and_mask(1)
    gradients = []
    for chunk_positions in (2, 5):
        leaf = student.clone().requires_grad_()
        logit_kd_loss(leaf, teacher, 1.0, "kl", mask, chunk_elements=chunk_positions * CLASSES).backward()
        gradients.append(leaf.grad)
    # Each position's gradient comes from its own row alone: the chunking may only move the count's last bits.
    torch.testing.assert_close(*gradients, rtol=1e-6, atol=1e-9)


def test_masked_positions_holding_inf_or_nan_reach_neither_loss_nor_gradient():
    student, teacher, mask = logits_and_mask(2)
    student[~mask] = float("inf")
    teacher[~mask] = float("nan")
    leaf = student.clone().requires_grad_()
    loss = logit_kd_loss(leaf, teacher, 2.0, "kl", mask, chunk_elements=3 * CLASSES)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()


def test_the_gradient_keeps_the_student_dtype_and_the_teacher_gets_none():
    student, teacher, mask = logits_and_mask(3)
    student = student.bfloat16().requires_grad_()
    teacher = teacher.requires_grad_()
    logit_kd_loss(student, teacher, 2.0, "kl", mask).backward()
    assert student.grad.dtype == torch.bfloat16 and teacher.grad is None


def test_no_grad_gives_the_same_value_without_a_gradient_buffer():
    student, teacher, mask = logits_and_mask(4)
    with torch.no_grad():
        value = logit_kd_loss(student, teacher, 2.0, "soft_ce", mask)
    assert value.item() == pytest.approx(reference_logit_loss(student, teacher, 2.0, "soft_ce", mask).item(), rel=1e-6)


def test_mismatched_shapes_and_masks_are_refused():
    student, teacher, mask = logits_and_mask(5)
    with pytest.raises(ValueError, match="differ in shape"):
        logit_kd_loss(student, teacher[:, :5])
    with pytest.raises(ValueError, match="does not match the logits' positions"):
        logit_kd_loss(student, teacher, mask=mask[:, :5])


# ---- attention MSE from queries and keys ----


def projections(batch, heads, queries, keys, width, seed, layers=None):
    generator = torch.Generator().manual_seed(seed)
    lead = () if layers is None else (layers,)
    return (
        torch.randn(*lead, batch, heads, queries, width, generator=generator),
        torch.randn(*lead, batch, heads, keys, width, generator=generator),
    )


def token_masks():
    # Right padding, left padding, and a row with one real token.
    return torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layers", [None, 3])
def test_attention_mse_from_projections_equals_the_loss_on_masked_scores(causal, layers):
    mask = token_masks()
    student = [t.requires_grad_() for t in projections(3, 2, 6, 6, 4, seed=0, layers=layers)]
    teacher = projections(3, 2, 6, 6, 8, seed=1, layers=layers)
    student_copy = [t.detach().clone().requires_grad_() for t in student]
    loss = attention_mse_from_projections(tuple(student), teacher, mask, causal)
    scores = student_copy[0] @ student_copy[1].transpose(-1, -2), teacher[0] @ teacher[1].transpose(-1, -2)
    if layers is None:
        expected = attention_scores_mse_loss(*scores, mask, causal)
    else:  # the mean of the per-layer losses
        per_layer = [attention_scores_mse_loss(s, t, mask, causal) for s, t in zip(*scores, strict=True)]
        expected = torch.stack(per_layer).mean()
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(student, student_copy, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_cross_attention_mse_from_projections_masks_queries_and_keys_separately():
    queries = torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    keys = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    student, teacher = projections(2, 2, 3, 5, 4, seed=2), projections(2, 2, 3, 5, 4, seed=3)
    loss = attention_mse_from_projections(student, teacher, queries, key_mask=keys)
    expected = attention_scores_mse_loss(
        student[0] @ student[1].transpose(-1, -2), teacher[0] @ teacher[1].transpose(-1, -2), queries, key_mask=keys
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_inf_in_padded_queries_and_keys_reaches_neither_loss_nor_gradient():
    mask = token_masks()
    student = [t.clone() for t in projections(3, 2, 6, 6, 4, seed=4)]
    for tensor in student:
        tensor[~mask[:, None, :, None].expand_as(tensor)] = float("inf")
    student = [t.requires_grad_() for t in student]
    loss = attention_mse_from_projections(tuple(student), projections(3, 2, 6, 6, 4, seed=5), mask)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in student)


def test_stacked_hidden_mse_is_the_mean_of_the_per_layer_losses():
    generator = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(4, 3, 6, 8, generator=generator), torch.randn(4, 3, 6, 8, generator=generator)
    mask = token_masks()
    expected = torch.stack([hidden_mse_loss(s, t, mask) for s, t in zip(student, teacher, strict=True)]).mean()
    # Sums of ~600 fp32 terms in another order: typically sqrt(n)·eps ≈ 1.5e-6 relative (n·eps ≈ 3.6e-5 at worst).
    torch.testing.assert_close(hidden_mse_loss(student, teacher, mask), expected, rtol=1e-5, atol=1e-7)
    by_selection = (student[:, mask] - teacher[:, mask]).pow(2).mean()
    torch.testing.assert_close(hidden_mse_loss(student, teacher, mask), by_selection, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("causal", [False, True])
def test_pair_counts_from_token_counts_equal_the_pair_masks(causal):
    mask = token_masks().long()
    counts = batch_counts({"input_ids": torch.ones_like(mask), "attention_mask": mask}, "sequence", causal)
    assert counts["pairs"].item() == pair_mask(mask, mask.shape[1], causal).sum().item()
    assert counts["tokens"].item() == mask.sum().item()


def test_a_second_backward_pass_is_refused_not_silently_rescaled():
    student, teacher, mask = logits_and_mask(7)
    leaf = student.clone().requires_grad_()
    loss = logit_kd_loss(leaf, teacher, 2.0, "kl", mask)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated twice"):
        loss.backward()


@pytest.mark.parametrize("chunk", [1, 5, 10**6])  # score entries per chunk: one grid, a ragged split, all at once
def test_attention_mse_is_the_same_whatever_the_chunking(monkeypatch, chunk):
    mask = token_masks()
    values = []
    for elements in (chunk, 10**9):
        monkeypatch.setitem(losses.SCORE_CHUNK_ELEMENTS, "cpu", elements)
        student = [t.requires_grad_() for t in projections(3, 2, 6, 6, 4, seed=8, layers=2)]
        loss = attention_mse_from_projections(tuple(student), projections(3, 2, 6, 6, 4, seed=9, layers=2), mask, True)
        loss.backward(retain_graph=True)
        values.append((loss.detach(), *(t.grad for t in student)))
        with pytest.raises(RuntimeError, match="backpropagated twice"):
            loss.backward()
    for chunked, whole in zip(*values, strict=True):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def test_hidden_mse_over_a_list_of_layers_equals_the_stacked_form_and_skips_padding_gradients():
    generator = torch.Generator().manual_seed(10)
    student = torch.randn(3, 3, 6, 8, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 3, 6, 8, generator=generator)
    mask = token_masks()
    listed = hidden_mse_loss(list(student.unbind(0)), list(teacher.unbind(0)), mask)
    listed.backward()
    expected = (student.detach()[:, mask] - teacher[:, mask]).pow(2).mean()
    torch.testing.assert_close(listed, expected, rtol=1e-5, atol=1e-7)
    assert not student.grad[:, ~mask].any() and student.grad[:, mask].abs().sum() > 0
    with pytest.raises(ValueError, match="3 student layers against 2 teacher layers"):
        hidden_mse_loss(list(student.unbind(0)), list(teacher.unbind(0))[:2], mask)


def test_overwriting_the_teacher_logits_gives_the_same_loss_and_gradient_and_only_when_asked():
    student, teacher, mask = logits_and_mask(11)
    results = []
    for overwrite in (False, True):
        leaf, target = student.clone().requires_grad_(), teacher.clone()
        loss = logit_kd_loss(leaf, target, 2.0, "kl", mask, chunk_elements=3 * CLASSES, overwrite_teacher=overwrite)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
        assert torch.equal(target, teacher) != overwrite  # kept intact unless the caller gave it up
    for kept, overwritten in zip(*results, strict=True):  # the same arithmetic, only the buffer differs
        torch.testing.assert_close(kept, overwritten, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("chunk_positions", [1, 4, 1000])
def test_token_cross_entropy_equals_torch_cross_entropy_over_the_labelled_positions(chunk_positions):
    student, _, mask = logits_and_mask(12)
    targets = torch.randint(0, CLASSES, mask.shape, generator=torch.Generator().manual_seed(13))
    targets[~mask] = -100
    mine, reference = student.clone().requires_grad_(), student.clone().requires_grad_()
    loss = token_cross_entropy(mine, targets, chunk_elements=chunk_positions * CLASSES)
    expected = F.cross_entropy(reference.view(-1, CLASSES), targets.view(-1))
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="do not match the logits' positions"):
        token_cross_entropy(student, targets[:, :3])

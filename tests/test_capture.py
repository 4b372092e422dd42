"""AttentionCapture: scores from hooked Q/K projections equal what eager attention computes."""

import gc

import pytest
import torch
from conftest import tiny_bert_config
from torch import nn
from transformers import BertModel, DistilBertConfig, DistilBertModel

from nlpkd.capture import AttentionCapture, find_layers, find_query_key

INPUT_IDS = torch.tensor([[2, 15, 33, 47, 8, 91, 3], [2, 61, 12, 3, 0, 0, 0], [2, 5, 3, 0, 0, 0, 0]])
ATTENTION_MASK = (INPUT_IDS != 0).long()


def _sdpa_and_eager(model_class, config_builder):
    torch.manual_seed(0)
    sdpa_model = model_class(config_builder()).eval()
    eager_model = model_class(config_builder(attn_implementation="eager")).eval()
    eager_model.load_state_dict(sdpa_model.state_dict())
    assert sdpa_model.config._attn_implementation == "sdpa"
    assert eager_model.config._attn_implementation == "eager"
    return sdpa_model, eager_model


def _bert_config(**overrides):
    return tiny_bert_config(num_hidden_layers=3, **overrides)


def _distilbert_config(**overrides):
    return DistilBertConfig(
        vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=37, max_position_embeddings=64, **overrides
    )


def _bert_query_key(model, layer):
    attention = model.encoder.layer[layer - 1].attention.self
    return attention.query, attention.key


def _distilbert_query_key(model, layer):
    attention = model.transformer.layer[layer - 1].attention
    return attention.q_lin, attention.k_lin


@pytest.mark.parametrize(
    ("model_class", "config_builder", "query_key"),
    [(BertModel, _bert_config, _bert_query_key), (DistilBertModel, _distilbert_config, _distilbert_query_key)],
    ids=["bert", "distilbert"],
)
def test_captured_scores_match_eager_attention_and_hand_computation(model_class, config_builder, query_key):
    sdpa_model, eager_model = _sdpa_and_eager(model_class, config_builder)
    layers = [1, 3]
    capture = AttentionCapture(sdpa_model, layers)
    with torch.no_grad(), capture.recording():
        sdpa_outputs = sdpa_model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, output_hidden_states=True)
    with torch.no_grad():
        eager_outputs = eager_model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, output_attentions=True)
    torch.testing.assert_close(sdpa_outputs.last_hidden_state, eager_outputs.last_hidden_state, rtol=1e-4, atol=1e-5)

    num_heads, head_dim = 4, 8
    valid_rows = ATTENTION_MASK.bool()[:, None, :, None].expand(-1, num_heads, -1, INPUT_IDS.shape[1])
    for layer in layers:
        scores = capture.scores(layer)
        assert scores.shape == (3, num_heads, 7, 7) and scores.dtype == torch.float32

        # Pre-softmax scores from the layer's input hidden state and its own query/key weights.
        query_proj, key_proj = query_key(sdpa_model, layer)
        layer_input = sdpa_outputs.hidden_states[layer - 1]
        query = (layer_input @ query_proj.weight.T + query_proj.bias).view(3, 7, num_heads, head_dim).transpose(1, 2)
        key = (layer_input @ key_proj.weight.T + key_proj.bias).view(3, 7, num_heads, head_dim).transpose(1, 2)
        torch.testing.assert_close(scores, query @ key.transpose(-1, -2) / head_dim**0.5, rtol=1e-5, atol=1e-5)

        # Add the models' additive padding mask and softmax: eager attention's probabilities, on real query rows.
        additive_mask = (1.0 - ATTENTION_MASK[:, None, None, :].float()) * torch.finfo(torch.float32).min
        probabilities = torch.softmax(scores + additive_mask, dim=-1)
        eager_probabilities = eager_outputs.attentions[layer - 1]
        torch.testing.assert_close(probabilities[valid_rows], eager_probabilities[valid_rows], rtol=1e-4, atol=1e-6)
        # Padded keys get no probability in both.
        assert eager_probabilities[1, :, :4, 4:].abs().max() == 0.0
        assert probabilities[1, :, :4, 4:].abs().max() == 0.0
    capture.remove()


def test_scores_only_exist_for_a_recording():
    torch.manual_seed(0)
    model = BertModel(_bert_config()).eval()
    capture = AttentionCapture(model, [2])
    with pytest.raises(RuntimeError, match=r"No attention recorded for layer 2; run the model inside `recording\(\)`"):
        capture.scores(2)
    with torch.no_grad():
        model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)  # outside a recording: nothing is kept
    with pytest.raises(RuntimeError, match="No attention recorded for layer 2"):
        capture.scores(2)

    with torch.no_grad(), capture.recording():
        model(input_ids=INPUT_IDS[:1], attention_mask=ATTENTION_MASK[:1])
    first = capture.scores(2)
    assert first.shape == (1, 4, 7, 7)  # readable after the block
    with torch.no_grad():
        model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)  # a later forward outside does not overwrite it
    torch.testing.assert_close(capture.scores(2), first, rtol=0, atol=0)

    with pytest.raises(RuntimeError, match=r"Layer 1 is not captured; this capture holds layers \[2\]"):
        capture.scores(1)  # not a captured layer

    with torch.no_grad(), capture.recording(enabled=False):
        model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)
    with pytest.raises(RuntimeError, match="No attention recorded for layer 2"):
        capture.scores(2)  # a new recording clears the old scores; a disabled one records none


def test_remove_detaches_the_hooks():
    torch.manual_seed(0)
    model = BertModel(_bert_config()).eval()
    capture = AttentionCapture(model, [1])
    query = model.encoder.layer[0].attention.self.query
    assert len(query._forward_hooks) == 1
    capture.remove()
    assert len(query._forward_hooks) == 0
    with torch.no_grad(), capture.recording():
        model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK)
    with pytest.raises(RuntimeError, match="No attention recorded for layer 1"):
        capture.scores(1)


class _Config:
    num_hidden_layers = 2
    num_attention_heads = 2


class _UnknownAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wq, self.wk, self.wv = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)


class _UnknownBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = _UnknownAttention()


class TinyCustomModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = _Config()
        self.layers = nn.ModuleList([_UnknownBlock(), _UnknownBlock()])


def test_unknown_projection_names_give_a_clear_error():
    model = TinyCustomModel()
    assert find_layers(model) is model.layers
    with pytest.raises(
        ValueError,
        match=r"Attention distillation does not know the self-attention projections of TinyCustomModel: none of "
        r"query/key/value, q_lin/k_lin/v_lin",
    ):
        AttentionCapture(model, [1])
    with pytest.raises(
        ValueError,
        match=r"Set attention_weight=0 \(or that stack's weight\), or add its names to nlpkd.capture.PROJECTION_NAMES",
    ):
        find_query_key(model.layers[0], "TinyCustomModel")


def test_model_without_a_layer_list_gives_a_clear_error():
    model = TinyCustomModel()
    model.layers = nn.ModuleList([_UnknownBlock()])  # config says 2 layers, the list holds 1
    with pytest.raises(ValueError, match=r"Cannot find the 2 transformer layers of TinyCustomModel"):
        AttentionCapture(model, [1])


class _QueryKeyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)


class _DecoderBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.crossattention = _QueryKeyAttention()  # registered first, so found first unless skipped
        self.attention = _QueryKeyAttention()


def test_cross_attention_is_skipped():
    block = _DecoderBlock()
    attention = find_query_key(block, "TinyDecoder")
    assert attention.query is block.attention.query
    assert attention.key is block.attention.key
    assert attention.names.query == "query" and attention.names.scaled
    assert not attention.causal


def test_hooks_go_away_with_their_capture():
    model = BertModel(tiny_bert_config(num_hidden_layers=2))
    query = model.encoder.layer[0].attention.self.query
    capture = AttentionCapture(model, layers=[1])
    assert len(query._forward_hooks) == 1
    del capture
    gc.collect()
    assert len(query._forward_hooks) == 0

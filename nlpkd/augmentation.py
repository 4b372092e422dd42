"""TinyBERT's data augmentation for task distillation (Jiao et al., 2020, §3.1): more inputs for the student to
imitate the teacher on, made by replacing words of the training texts.

Each text yields `copies` variants. In each, every replaceable word (letters only) is replaced with probability
`probability` by one of `candidates` candidates drawn uniformly:

- a word that is one piece of the tokenizer's vocabulary gets the masked LM's top predictions at its position, with
  the word masked in its sentence (the candidates of a word never depend on which others a copy replaces);
- any other word (several pieces, or cut off by `max_length`) gets its nearest neighbours by cosine in the
  teacher's word-embedding matrix, the word standing for the mean of its pieces' rows.

Candidates are whole vocabulary words (letters only, no `##` continuation, not the word itself) and keep a capital
first letter. To keep the masked LM's cost at a few passes per text rather than one per word, the words of a text
are masked in `MASK_STRIDE` passes, words whose index differs by a multiple of the stride together: no two masked
words are neighbours, and each sees most of its context.

Augmented rows have no hard label (`label` = -100): the student learns them from the teacher's outputs alone, while
the no-distillation baseline keeps the original rows. The variants are cached on disk, keyed by a fingerprint of the
texts, the masked LM's and teacher's weights and the settings, and are the same for the same seed on any machine
whose models predict the same candidates.
"""

import logging
import os
import shutil
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel

from .fingerprint import fingerprint, teacher_digest
from .language_modeling import tokenize_blocks
from .positions import IGNORE_INDEX
from .progress import Progress
from .teacher_stage import finetune_teacher_once, trained_teacher

logger = logging.getLogger(__name__)

MASK_STRIDE = 4
BATCH_SIZE = 64
COMPLETE_MARKER = "nlpkd_augmentation_complete"
MLM_HEADS = ("ForMaskedLM", "ForPreTraining")


@dataclass
class AugmentationArguments:
    augment_copies: int = field(
        default=0,
        metadata={
            "help": "TinyBERT data augmentation: this many word-replaced variants of each training text, learnt from "
            "the teacher's outputs alone (0: none)."
        },
    )
    augment_probability: float = field(
        default=0.4, metadata={"help": "Chance that a word of a variant is replaced (TinyBERT: 0.4)."}
    )
    augment_candidates: int = field(
        default=15, metadata={"help": "Candidates per word a replacement is drawn from (TinyBERT: 15)."}
    )
    augment_mlm_path: str | None = field(
        default=None,
        metadata={
            "help": "Masked LM proposing replacements. Default: the teacher checkpoint when it has a trained MLM "
            "head, else its body with an MLM head trained once on the training texts (kept with the teachers)."
        },
    )
    augment_seed: int = field(default=42, metadata={"help": "Seed of the replacements; apart from --seed."})

    def __post_init__(self):
        if self.augment_copies < 0:
            raise ValueError(f"augment_copies must be >= 0 (0 turns augmentation off), got {self.augment_copies}.")
        if not 0 < self.augment_probability <= 1:
            raise ValueError(
                f"augment_probability must be in (0, 1], got {self.augment_probability}; TinyBERT uses 0.4."
            )
        if self.augment_candidates < 1:
            raise ValueError(f"augment_candidates must be >= 1, got {self.augment_candidates}; TinyBERT uses 15.")

    def settings(self) -> dict:
        """What decides the variants, by short name: copies, probability, candidates, seed."""
        names = ("augment_copies", "augment_probability", "augment_candidates", "augment_seed")
        return {name.removeprefix("augment_"): getattr(self, name) for name in names}


def word_spans(text: str, tokenizer) -> list[tuple[str, int, int]]:
    """The words of `text` as the tokenizer's pre-tokenizer splits them (punctuation apart), with their offsets."""
    return [
        (word, start, end) for word, (start, end) in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    ]


def whole_word_ids(tokenizer) -> np.ndarray:
    """Vocabulary ids that are whole words of letters (no `##` continuation, no special or unused token)."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    ids = [index for token, index in vocab.items() if token.isalpha() and index not in special]
    return np.array(sorted(ids))


def embedding_neighbours(
    words: list[str], tokenizer, embeddings: torch.Tensor, candidates: int
) -> dict[str, list[str]]:
    """Each word's `candidates` nearest whole vocabulary words by cosine to the mean of its pieces' embedding rows,
    the word itself excluded."""
    vocab_ids = whole_word_ids(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(vocab_ids.tolist())
    matrix = torch.nn.functional.normalize(embeddings[torch.as_tensor(vocab_ids)].float(), dim=-1)
    unique = sorted(set(words))
    neighbours = {}
    for start in range(0, len(unique), 256):
        chunk = unique[start : start + 256]
        pieces = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in chunk]
        queries = torch.stack([embeddings[ids].float().mean(0) for ids in pieces])
        similarity = torch.nn.functional.normalize(queries, dim=-1) @ matrix.T
        nearest = torch.topk(similarity, min(candidates + 1, len(tokens))).indices
        for word, indices in zip(chunk, nearest.tolist(), strict=True):
            neighbours[word] = [tokens[index] for index in indices if tokens[index] != word.lower()][:candidates]
    return neighbours


@torch.inference_mode()
def masked_lm_candidates(
    texts_words: list[list[str]],
    chosen: list[set[int]],
    tokenizer,
    mlm: PreTrainedModel,
    candidates: int,
    max_length: int,
    show_progress: bool = False,
) -> dict[tuple[int, int], list[str]]:
    """(text index, word index) -> the masked LM's top `candidates` whole words for that word, masked in its text
    (with the other words of its pass, `MASK_STRIDE` apart). Only the `chosen` words of each text are predicted;
    those that truncation to `max_length` cuts off get none."""
    allowed = torch.zeros(mlm.config.vocab_size, dtype=torch.bool)
    allowed[torch.as_tensor(whole_word_ids(tokenizer))] = True
    passes = [
        (text, residue)
        for text, words in enumerate(chosen)
        for residue in sorted({word % MASK_STRIDE for word in words})
    ]
    passes.sort(key=lambda item: len(texts_words[item[0]]))  # similar lengths batch with little padding
    mlm.eval()
    device = mlm.device
    found = {}
    progress = Progress("masked-LM candidates", len(passes), "passes", show=show_progress)
    for start in range(0, len(passes), BATCH_SIZE):
        batch = passes[start : start + BATCH_SIZE]
        encoded = tokenizer(
            [texts_words[text] for text, _ in batch],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"].clone()
        targets = []  # (row, position, text, word)
        for row, (text, residue) in enumerate(batch):
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word in chosen[text] and word % MASK_STRIDE == residue:
                    input_ids[row, position] = tokenizer.mask_token_id
                    targets.append((row, position, text, word))
        if not targets:
            continue
        rows = torch.tensor([row for row, *_ in targets], device=device)
        positions = torch.tensor([position for _, position, *_ in targets], device=device)
        scores = _masked_scores(mlm, input_ids.to(device), encoded["attention_mask"].to(device), rows, positions)
        scores[:, ~allowed] = float("-inf")
        for (_, _, text, word), row_scores in zip(targets, scores, strict=True):
            own = texts_words[text][word].lower()
            best = torch.topk(row_scores, min(candidates + 1, int(allowed.sum()))).indices
            tokens = tokenizer.convert_ids_to_tokens(best.tolist())
            found[text, word] = [token for token in tokens if token != own][:candidates]
        progress.update(len(batch))
    return found


def _masked_scores(mlm, input_ids, attention_mask, rows, positions) -> torch.Tensor:
    """The MLM's vocabulary scores at (rows, positions). BERT's (`cls`) and RoBERTa's (`lm_head`) heads run on those
    positions alone, which halves the cost of short texts; other MLMs score every position."""
    head = getattr(mlm, "cls", None) or getattr(mlm, "lm_head", None)
    if head is None:
        return mlm(input_ids=input_ids, attention_mask=attention_mask).logits[rows, positions].float().cpu()
    hidden = mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return head(hidden[rows, positions]).float().cpu()


def augment_texts(
    texts: list[str],
    tokenizer,
    mlm: PreTrainedModel,
    embeddings: torch.Tensor,
    copies: int,
    probability: float = 0.4,
    candidates: int = 15,
    seed: int = 42,
    max_length: int = 128,
    show_progress: bool = False,
) -> tuple[list[str], list[int]]:
    """Up to `copies` word-replaced variants of each text (see the module's docstring) and, for each, the index of
    its source text. A variant that replaces nothing, or repeats an earlier one of its text, is left out."""
    spans = [word_spans(text, tokenizer) for text in texts]
    words = [[word for word, _, _ in text_spans] for text_spans in spans]
    single = {word for text_words in words for word in text_words if _single_piece(word, tokenizer)}
    # Which words each copy replaces, drawn first so that only those need candidates.
    replaced = []
    for index, text_words in enumerate(words):
        rng = np.random.default_rng([seed, index])
        replaceable = np.array([word.isalpha() for word in text_words], dtype=bool)
        replaced.append(
            [np.flatnonzero(replaceable & (rng.random(len(text_words)) < probability)) for _ in range(copies)]
        )
    chosen = [{int(word) for copy in text_copies for word in copy} for text_copies in replaced]
    from_mlm = [
        {word for word in text_chosen if words[text][word] in single} for text, text_chosen in enumerate(chosen)
    ]
    mlm_found = masked_lm_candidates(words, from_mlm, tokenizer, mlm, candidates, max_length, show_progress)
    # Every other chosen word (several pieces, or cut off by truncation) takes its embedding neighbours.
    rest = [
        words[text][word] for text, text_chosen in enumerate(chosen) for word in text_chosen
        if (text, word) not in mlm_found
    ]  # fmt: skip
    neighbours = embedding_neighbours(rest, tokenizer, embeddings, candidates)

    variants, sources = [], []
    for index, (text, text_spans) in enumerate(zip(texts, spans, strict=True)):
        rng = np.random.default_rng([seed, index, 1])
        seen = {text}
        for copy in replaced[index]:
            pieces, end = [], 0
            for word in copy.tolist():
                original, start, stop = text_spans[word]
                options = mlm_found.get((index, word)) or neighbours.get(original) or []
                if not options:
                    continue
                replacement = options[int(rng.integers(len(options)))]
                if original[0].isupper():
                    replacement = replacement[0].upper() + replacement[1:]
                pieces += [text[end:start], replacement]
                end = stop
            variant = "".join(pieces) + text[end:]
            if variant not in seen:
                seen.add(variant)
                variants.append(variant)
                sources.append(index)
    return variants, sources


def _single_piece(word: str, tokenizer) -> bool:
    return len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1


def augmented_rows(
    texts: list[str],
    tokenizer,
    mlm: PreTrainedModel,
    teacher: PreTrainedModel,
    arguments: AugmentationArguments,
    cache_dir: str,
    max_length: int = 128,
    show_progress: bool = False,
) -> datasets.Dataset:
    """The augmented variants of `texts` as a dataset (`text`, `source`, `label` = -100), made once and then loaded
    from `cache_dir/augmented-<fingerprint>`."""
    settings = {**arguments.settings(), "max_length": max_length, "stride": MASK_STRIDE}
    key = fingerprint(texts, teacher_digest(mlm), teacher_digest(teacher), settings)
    path = os.path.join(cache_dir, f"augmented-{key}")
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        logger.info("Loading the augmented training texts from %s", path)
        return datasets.load_from_disk(path)
    logger.info(
        "Augmenting %d training texts (%d copies each), once; kept in %s", len(texts), settings["copies"], path
    )
    variants, sources = augment_texts(
        texts,
        tokenizer,
        mlm,
        teacher.get_input_embeddings().weight.detach().cpu(),
        arguments.augment_copies,
        arguments.augment_probability,
        arguments.augment_candidates,
        arguments.augment_seed,
        max_length,
        show_progress,
    )
    rows = datasets.Dataset.from_dict(
        {"text": variants, "source": sources, "label": [IGNORE_INDEX] * len(variants)},
        features=datasets.Features(
            text=datasets.Value("string"), source=datasets.Value("int64"), label=datasets.Value("int64")
        ),
    )
    shutil.rmtree(path, ignore_errors=True)
    rows.save_to_disk(path)
    open(os.path.join(path, COMPLETE_MARKER), "w").close()
    return datasets.load_from_disk(path)


def augmentation_mlm(
    arguments: AugmentationArguments, teacher_args, args, texts: list[str], tokenizer, block_size: int = 128
) -> PreTrainedModel:
    """The masked LM proposing replacements: `augment_mlm_path` (default: the teacher) as it is when its checkpoint
    has a trained MLM head, else its body with an MLM head trained on `texts` once (BERT's 15 % masking, the
    teacher's fine-tuning settings) and kept under teacher_cache_dir (`nlpkd.teacher_stage`)."""
    path = arguments.augment_mlm_path or teacher_args.teacher_path

    def finetune():
        corpus = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": texts}))
        blocks = tokenize_blocks(corpus, tokenizer, block_size)["train"]
        collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=0.15, seed=teacher_args.teacher_seed
        )
        key = ("augmentation-mlm", fingerprint(texts), block_size)
        return finetune_teacher_once(AutoModelForMaskedLM, path, key, teacher_args, args, blocks, collator, tokenizer)

    return trained_teacher(path, MLM_HEADS, load=AutoModelForMaskedLM.from_pretrained, finetune=finetune).eval()

"""A tiny non-transformer student: a BiLSTM over word embeddings with its own word-level tokenizer.

Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", distil BERT into a
single-layer BiLSTM. This one is a `transformers` model (config + model registered with the Auto classes under
`model_type = "kdistill_bilstm"`), so it goes through the same Trainer, soft-label cache (looked up by row index,
so its tokenizer need not be the teacher's), evaluation and speed measurement as any other student. A run builds
it with `student_init: bilstm` (sizes: the `bilstm_*` student fields), its vocabulary from the training file:

    kdistill run --config run.yaml --student_init bilstm --bilstm_vocab_size 10000

Architecture: embeddings -> one bidirectional LSTM layer -> max over time of the (masked) outputs -> a ReLU layer ->
the class logits. Its embeddings start random (no pretrained word vectors ship offline).

For token_classification the same model tags each word (`BiLSTMForTokenClassification`, the word-level student of
TextBrewer's BiGRU row): no pooling, the ReLU layer and the head at every position. Its tokenizer (`tag_tokenizer`)
maps each of a sentence's words to one token, so every word is its own first sub-token and the teacher's per-word
soft labels (keyed by sentence and word) land on it whatever the teacher's tokenizer did.
"""

from __future__ import annotations

import collections
import logging

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[MASK]"]  # [MASK]: augmented transfer sentences hold it (see augment.py)


class BiLSTMConfig(PretrainedConfig):
    model_type = "kdistill_bilstm"

    def __init__(self, vocab_size: int = 10000, embedding_dim: int = 128, hidden_size: int = 150,
                 classifier_size: int = 200, dropout: float = 0.1, pad_token_id: int = 0, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.classifier_size = classifier_size
        self.dropout = dropout


class _BiLSTM(PreTrainedModel):
    """Embeddings, the BiLSTM, the ReLU layer and the head; subclasses say what the head reads."""

    config_class = BiLSTMConfig
    base_model_prefix = "bilstm"
    main_input_name = "input_ids"

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        self.hidden = nn.Linear(2 * config.hidden_size, config.classifier_size)
        self.classifier = nn.Linear(config.classifier_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The BiLSTM's outputs [batch, sequence, 2 * hidden_size] and the attention mask (as bool)."""
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        x = self.dropout(self.embeddings(input_ids))
        # Packed, so the backward direction starts at each row's last word, not at its padding: a row's logits do not
        # depend on how long the other rows of its batch are.
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return out, attention_mask.bool()

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.hidden(features))))


class BiLSTMForSequenceClassification(_BiLSTM):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        out, mask = self.encode(input_ids, attention_mask)
        pooled = out.masked_fill(~mask.unsqueeze(-1), torch.finfo(out.dtype).min).max(dim=1).values
        return SequenceClassifierOutput(logits=self.head(pooled))


class BiLSTMForTokenClassification(_BiLSTM):
    """Per-word tags: logits [batch, sequence, tags], one vector per token (= per word, see `tag_tokenizer`).
    Padded positions get logits too; the task's item mask leaves them out of losses and metrics."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> TokenClassifierOutput:
        out, _ = self.encode(input_ids, attention_mask)
        return TokenClassifierOutput(logits=self.head(out))


def register() -> None:
    """Make `AutoConfig` / `AutoModelForSequenceClassification` / `AutoModelForTokenClassification` load saved
    BiLSTM students (idempotent)."""
    AutoConfig.register(BiLSTMConfig.model_type, BiLSTMConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(BiLSTMConfig, BiLSTMForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(BiLSTMConfig, BiLSTMForTokenClassification, exist_ok=True)


register()


def _word_level(counts: collections.Counter, vocab_size: int, lowercase: bool, pre_tokenizer,
                max_length: int) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the special tokens and the `vocab_size` - 3 commonest words of `counts` (ties in
    alphabetical order); any other word reads as [UNK]."""
    from tokenizers import Tokenizer, models, normalizers

    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: vocab_size - len(SPECIAL_TOKENS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIAL_TOKENS + words)}, unk_token="[UNK]"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizer
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   model_max_length=max_length, model_input_names=["input_ids", "attention_mask"])


def word_tokenizer(texts: list[str], vocab_size: int = 10000, max_length: int = 128) -> PreTrainedTokenizerFast:
    """A lower-cased, whitespace-and-punctuation word tokenizer over the `vocab_size` most frequent words."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    counts = collections.Counter(w for t in texts for w, _ in split.pre_tokenize_str(t.lower()))
    return _word_level(counts, vocab_size, True, split, max_length)


def tag_tokenizer(sentences: list[list[str]], vocab_size: int = 10000,
                  max_length: int = VERY_LARGE_INTEGER) -> PreTrainedTokenizerFast:
    """A word tokenizer for tagging over the `vocab_size` most frequent of the sentences' words: one token per word
    (called with `is_split_into_words=True`; a word is never split, "U.S." stays one token), no [CLS]/[SEP].

    Cased, unlike `word_tokenizer`: a capital is much of what tells an entity from other words, and without
    character features the word's identity is all this model sees. `max_length` defaults to no limit: an LSTM has
    no positions to run out of, so the run's max_length alone cuts sentences.
    """
    from tokenizers import pre_tokenizers

    counts = collections.Counter(w for sentence in sentences for w in sentence)
    return _word_level(counts, vocab_size, False, pre_tokenizers.WhitespaceSplit(), max_length)


def make_student(
    texts: list[str] | list[list[str]],
    label2id: dict[str, int],
    vocab_size: int = 10000,
    seed: int = 0,
    tagger: bool = False,
    **config,
) -> tuple[BiLSTMForSequenceClassification | BiLSTMForTokenClassification, PreTrainedTokenizerFast]:
    """A randomly initialised BiLSTM and its word tokenizer, built from `texts` (what `student_init: bilstm` makes).

    Args:
        texts: the texts whose `vocab_size` most frequent words form the vocabulary; for a `tagger`, the sentences
            as lists of words.
        seed: the initial weights' seed (the global random state is left as it was).
        tagger: a per-word tagger (BiLSTMForTokenClassification, `tag_tokenizer`) instead of a text classifier.
        config: further BiLSTMConfig fields (embedding_dim, hidden_size, classifier_size, dropout).
    """
    tokenizer = tag_tokenizer(texts, vocab_size) if tagger else word_tokenizer(texts, vocab_size)
    model_class = BiLSTMForTokenClassification if tagger else BiLSTMForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(BiLSTMConfig(
            vocab_size=len(tokenizer), num_labels=len(label2id), label2id=dict(label2id),
            id2label={i: k for k, i in label2id.items()}, pad_token_id=tokenizer.pad_token_id, **config))
    return model, tokenizer

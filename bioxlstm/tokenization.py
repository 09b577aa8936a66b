"""Hugging Face tokenizers for DNA, proteins and SMILES, and for any domain registered later
(`bioxlstm.domains.register_domain`), whose record says where its tokenizer file lives.

Each tokenizer is a plain `transformers.PreTrainedTokenizerFast` backed by a `tokenizers.Tokenizer`,
so a saved one loads with `AutoTokenizer.from_pretrained(directory)` without `bioxlstm`.

Every tokenizer starts a sequence with `<cls>` when `add_special_tokens=True` (the default) and
decodes back to the plain sequence, with no spaces, under `skip_special_tokens=True`. It appends no
`<eos>`: a tokenised prompt must be ready for generation (the `text-generation` pipeline tokenises
with the defaults), so training data and scorers append `<eos>` where a sequence really ends.

Alphabet policies
- DNA: one token per nucleotide A, C, G, T, N. Input is case-insensitive (soft-masked lower case is
  upper-cased) and every IUPAC ambiguity code R Y S W K M B D H V becomes N: a model of four bases
  has no use for partial ambiguity, and N is already its symbol for "any base". The same builder
  (`build_character_tokenizer`) serves any domain of single-letter symbols.
- Protein: the ESM-2 vocabulary in ESM order, then the fill-in-the-middle sentinels `<mask-1>` ..
  `<mask-5>`. Input is case-insensitive. Sequence files may hold the 20 standard residues and X B U
  Z O; a stop `*` is not a residue and is reported as invalid.
- SMILES: atom-level tokens (see `domains.SMILES_TOKEN_PATTERN`) with a vocabulary learned from a corpus by
  `build_smiles_tokenizer`; a token outside it encodes as `<unk>`. The molecule separator `.` always
  has a token: sets of molecules (the in-context format) are written as SMILES joined by `.`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .domains import (
    DOMAINS,
    IUPAC_AMBIGUITY_CODES,
    DNA_BASES,
    MOLECULE_SEPARATOR,
    SMILES,
    SMILES_TOKEN_PATTERN,
    get_domain,
)

CHARACTER_SPECIAL_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>", "<sep>"]

PROTEIN_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-",
    "<null_1>", "<mask>",
]  # fmt: skip
FILL_IN_THE_MIDDLE_SENTINELS = [f"<mask-{i}>" for i in range(1, 6)]

SMILES_SPECIAL_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>"]

_BUNDLED_DIRECTORY_NAME = "tokenizer_files"


def _upper_casing(letters: str) -> list[normalizers.Normalizer]:
    # `tokenizers` has a Lowercase normalizer but no upper-casing one.
    return [normalizers.Replace(letter.lower(), letter) for letter in letters]


def _character_level(vocab: list[str], special_tokens: list[str], normalizer: normalizers.Normalizer):
    # BPE without merges maps each character to its own token, like WordLevel after a per-character
    # split, but skips the pre-tokenizer and so encodes a genome several times faster.
    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(vocab)}, [], unk_token="<unk>"))
    tokenizer.normalizer = normalizer
    tokenizer.add_special_tokens(special_tokens)
    return tokenizer


def _finish(tokenizer: Tokenizer, pair_separator: str, **special_tokens: str) -> PreTrainedTokenizerFast:
    token_id = tokenizer.token_to_id
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<cls> $A",
        pair=f"<cls> $A {pair_separator} $B:1",
        special_tokens=[(token, token_id(token)) for token in {"<cls>", pair_separator}],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<cls>",
        cls_token="<cls>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        clean_up_tokenization_spaces=False,
        # Genomes and long proteins are legitimate inputs; length limits belong to the model.
        model_max_length=2**31 - 1,
        **special_tokens,
    )


def build_character_tokenizer(
    letters: str, ambiguity_codes: str = "", ambiguity_letter: str | None = None
) -> PreTrainedTokenizerFast:
    """One token per letter of `letters`, after `CHARACTER_SPECIAL_TOKENS`; input is case-insensitive
    and every letter of `ambiguity_codes` is read as `ambiguity_letter` (one of `letters`)."""
    if ambiguity_codes and (ambiguity_letter is None or ambiguity_letter not in letters):
        raise ValueError(f"ambiguity codes need an ambiguity letter among {letters!r}, got {ambiguity_letter!r}")
    steps = _upper_casing(letters + ambiguity_codes)
    if ambiguity_codes:
        steps.append(normalizers.Replace(Regex(f"[{ambiguity_codes}]"), ambiguity_letter))
    vocab = CHARACTER_SPECIAL_TOKENS + list(letters)
    tokenizer = _character_level(vocab, CHARACTER_SPECIAL_TOKENS, normalizers.Sequence(steps))
    return _finish(tokenizer, "<sep>", sep_token="<sep>")


def build_dna_tokenizer() -> PreTrainedTokenizerFast:
    return build_character_tokenizer(DNA_BASES, IUPAC_AMBIGUITY_CODES, "N")


def build_protein_tokenizer() -> PreTrainedTokenizerFast:
    vocab = PROTEIN_VOCAB + FILL_IN_THE_MIDDLE_SENTINELS
    special_tokens = [token for token in vocab if token.startswith("<")]
    residue_letters = "".join(token for token in PROTEIN_VOCAB if token.isalpha())
    tokenizer = _character_level(vocab, special_tokens, normalizers.Sequence(_upper_casing(residue_letters)))
    return _finish(
        tokenizer, "<eos>", extra_special_tokens=["<null_1>", *FILL_IN_THE_MIDDLE_SENTINELS]
    )


def build_smiles_tokenizer(corpus: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Learn the SMILES vocabulary of `corpus`: every atom-level token seen `min_frequency` times.

    Token ids follow frequency in the corpus (ties alphabetically), after the special tokens; the
    molecule separator `.` comes last when the corpus holds no multi-fragment SMILES. A corpus string
    that is not entirely made of SMILES tokens raises ValueError naming its index and position.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_TOKEN_PATTERN), "isolated")
    trainer = trainers.WordLevelTrainer(special_tokens=SMILES_SPECIAL_TOKENS, min_frequency=min_frequency)
    tokenizer.train_from_iterator(_checked_smiles(corpus), trainer)
    vocab = tokenizer.get_vocab()
    if MOLECULE_SEPARATOR not in vocab:
        # Appended rather than trained in, so the ids of the corpus tokens stay what training gave them.
        tokenizer.model = models.WordLevel({**vocab, MOLECULE_SEPARATOR: len(vocab)}, unk_token="<unk>")
    return _finish(tokenizer, "<eos>")


def _checked_smiles(corpus: Iterable[str]) -> Iterable[str]:
    for index, smiles in enumerate(corpus):
        position = SMILES.alphabet.invalid_position(smiles)
        if position is not None:
            raise ValueError(
                f"SMILES corpus entry {index}: invalid character {smiles[position]!r} at position {position + 1}"
            )
        yield smiles


def tokenizer_directory(domain: str) -> Path:
    """Directory of the tokenizer files of `domain`: the one its record names, else the bundled one."""
    directory = get_domain(domain).tokenizer_directory
    if directory is None:
        return bundled_tokenizer_directory(domain)
    if not (Path(directory) / "tokenizer.json").is_file():
        raise OSError(f"{directory}: no tokenizer.json, which domain {domain!r} names as its tokenizer")
    return Path(directory)


def bundled_tokenizer_directory(domain: str) -> Path:
    """Directory of the tokenizer files shipped with bioxlstm for `domain`."""
    get_domain(domain)
    # An installed wheel carries the files inside the package; a source checkout keeps them in the
    # top-level `tokenizers/` folder.
    candidates = [
        Path(str(resources.files("bioxlstm"))) / _BUNDLED_DIRECTORY_NAME / domain,
        Path(__file__).resolve().parent.parent / "tokenizers" / domain,
    ]
    for directory in candidates:
        if (directory / "tokenizer.json").is_file():
            return directory
    raise FileNotFoundError(
        f"no bundled {domain} tokenizer in {' or '.join(map(str, candidates))}; "
        "run scripts/build_tokenizers.py in a source checkout"
    )


def load_tokenizer(domain: str, **kwargs) -> PreTrainedTokenizerFast:
    """The tokenizer of the registered domain called `domain` (e.g. "dna", "protein" or "smiles").

    Keyword arguments go to `from_pretrained`, e.g. `padding_side="left"`.
    """
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_directory(domain), **kwargs)


def vocabulary_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int | None:
    """The id of `token` when it is in the vocabulary; None when it is not (the tokenizer itself
    would map it to `<unk>`)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


def complement_map(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """For every token id, the id of its Watson-Crick complement, under the base pairs of the domain
    with strands whose every base the vocabulary holds (DNA's A-T and C-G, or a registered domain's);
    N and special tokens map to themselves."""
    vocab = tokenizer.get_vocab()
    stranded = [domain for domain in DOMAINS.values() if domain.has_strands]
    missing = {domain.name: sorted(set(domain.complementary_bases) - set(vocab)) for domain in stranded}
    spelled = [domain for domain in stranded if not missing[domain.name]]
    if not spelled:
        closest = min(stranded, key=lambda domain: len(missing[domain.name]))
        raise ValueError(
            f"tokenizer has no token for base(s) {', '.join(missing[closest.name])}; "
            f"is it a {' or '.join(domain.display_name for domain in stranded)} tokenizer?"
        )
    if len(spelled) > 1:
        raise ValueError(
            f"tokenizer holds the bases of several domains with strands ({', '.join(d.name for d in spelled)}); "
            "its complement is ambiguous"
        )
    pairs = spelled[0].complementary_bases
    complement = list(range(len(vocab)))
    for token, token_id in vocab.items():
        complement[token_id] = vocab[pairs.get(token, token)]
    return complement


def sequence_token_ids(tokenizer: PreTrainedTokenizerFast, domain: str) -> list[int]:
    """Ids of the tokens that may appear in a sequence of `domain` (residues, bases, SMILES atoms and
    bonds), i.e. not special tokens, gaps or sentinels."""
    record = get_domain(domain)
    pieces = re.compile(record.sampleable_pieces) if record.sampleable_pieces else None
    return sorted(
        token_id
        for token, token_id in tokenizer.get_vocab().items()
        if token not in tokenizer.all_special_tokens
        and (record.alphabet.invalid_position(token) is None or (pieces is not None and pieces.fullmatch(token)))
    )

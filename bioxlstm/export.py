"""Export a model as a self-contained Hugging Face model directory.

The directory holds safetensors weights, a config.json whose `auto_map` points at the model code
saved beside it (so `AutoModelFor...from_pretrained(dir, trust_remote_code=True)` works where
bioxlstm is not installed, for every head that makes sense for the model), the domain tokenizer
(loads with `AutoTokenizer`, no remote code), the loss curve of its training where there is one, and
a model card: `README.md` with the Hub's metadata, built and checked with `huggingface_hub`.
"""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

from .domains import DOMAINS
from .io import UMASK
from .pretrained import default_model_names, supported_heads

# Written beside a trained model (by training or by hand): what the card reports about it.
CARD_INFO_FILE = "bioxlstm_card.json"
CARD_FILE = "README.md"
LOSS_CURVE_FILE = "loss_curve.png"
# What a user of an export installs: the shipped model code needs nothing else.
RUNTIME_PACKAGES = "torch transformers safetensors tokenizers"
# Arguments of `from_pretrained` that transformers keeps among a loaded tokenizer's settings and
# `save_pretrained` writes back: they describe how one copy was loaded, not the tokenizer.
TOKENIZER_LOADER_SETTINGS = (
    "is_local", "local_files_only", "cache_dir", "force_download", "proxies", "token", "revision",
    "subfolder", "trust_remote_code", "use_auth_token", "_from_auto", "_commit_hash", "name_or_path",
)
# A Hub model id (owner/name); `base_model` may only name models on the Hub.
HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class CardInfo:
    """What a model card says beyond the architecture: training data and held-out numbers."""

    training_data: dict[str, str] = field(default_factory=dict)  # data set name -> its data card (markdown)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"eval_perplexity": 3.7}
    description: str = ""
    license: str = ""  # a Hub license identifier, e.g. "apache-2.0"; empty: the card states none
    # The model this one was fine-tuned from: a Hub id (owner/name), a bundled model's name or a directory.
    base_model: str = ""
    tags: list[str] = field(default_factory=list)  # Hub tags beyond the ones every card gets

    @classmethod
    def from_file(cls, path: Path) -> "CardInfo":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


def export(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    card: CardInfo | None = None,
    loss_curve: str | Path | None = None,
) -> Path:
    """Write `model` (its weights, config and code), `tokenizer`, the `loss_curve` image and a card."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
        drop_tokenizer_loader_settings(output_dir)
        if isinstance(model, GenerationMixin):
            pad_prompts_on_the_left(output_dir)
    if loss_curve is not None and Path(loss_curve).resolve() != (output_dir / LOSS_CURVE_FILE).resolve():
        shutil.copyfile(loss_curve, output_dir / LOSS_CURVE_FILE)
    write_card(model, output_dir, card or CardInfo())
    with_ordinary_permissions(output_dir)
    return output_dir


def checked_base_model(name: str) -> str:
    """`name` if it can be a card's base model: a Hub model id (owner/name), the name of a bundled
    model, or a saved model's directory; else ValueError."""
    if HUB_MODEL_ID.match(name) or name in default_model_names() or (Path(name) / "config.json").is_file():
        return name
    raise ValueError(
        f"base model {name!r}: not a Hub model id (owner/name), a bundled model ({', '.join(default_model_names())}) "
        "or a directory holding a saved model"
    )


def pad_prompts_on_the_left(directory: Path) -> None:
    """Make the saved tokenizer pad on the left: `generate` continues every row from its last
    column, so prompts of different lengths batched with right padding would continue from padding."""
    path = Path(directory) / "tokenizer_config.json"
    settings = json.loads(path.read_text())
    if settings.get("padding_side") != "left":
        path.write_text(json.dumps({**settings, "padding_side": "left"}, indent=2, ensure_ascii=False) + "\n")


def with_ordinary_permissions(directory: Path) -> None:
    """Give every file of `directory` the permissions the umask gives a new file: transformers writes
    the weights readable by their owner alone, which a shared or served model directory cannot use."""
    for path in Path(directory).iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~UMASK)


def write_card(model: PreTrainedModel, directory: Path, card: CardInfo, bundled_name: str | None = None) -> ModelCard:
    """Write the card of `model` into `directory` (README.md, and the CardInfo it came from).

    `bundled_name`: the card of a model shipped inside the package under that name, which has no
    model code beside it (`bioxlstm export --model NAME` writes the self-contained copy)."""
    directory = Path(directory)
    text = f"---\n{card_metadata(model, card).to_yaml()}\n---\n\n{card_body(model, card, directory, bundled_name)}"
    model_card = ModelCard(text)  # parses the metadata as the Hub does: a card it refuses is never written
    model_card.save(directory / CARD_FILE)
    card.save(directory / CARD_INFO_FILE)
    return model_card


def drop_tokenizer_loader_settings(directory: Path) -> None:
    path = Path(directory) / "tokenizer_config.json"
    if path.is_file():
        settings = json.loads(path.read_text())
        kept = {key: value for key, value in settings.items() if key not in TOKENIZER_LOADER_SETTINGS}
        if kept != settings:
            path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")


def card_metadata(model: PreTrainedModel, card: CardInfo) -> ModelCardData:
    config = model.config
    architecture = type(model).__name__
    local_base = card.base_model if card.base_model and not HUB_MODEL_ID.match(card.base_model) else None
    eval_results = [
        # The held-out numbers come from the data the card describes, not from a Hub data set.
        EvalResult(
            task_type=model.pipeline_tag, dataset_type="held-out", dataset_name="held-out data described in this card",
            metric_type=name, metric_value=value,
        )
        for name, value in card.metrics.items()
    ]
    return ModelCardData(
        license=card.license or None,
        library_name="transformers",
        pipeline_tag=model.pipeline_tag,
        # The Hub refuses a base_model that is not one of its model ids (e.g. a local path); a bundled
        # or local base is recorded under `bioxlstm` and in the text instead.
        base_model=card.base_model if card.base_model and local_base is None else None,
        tags=["bioxlstm", "xlstm", *([config.domain] if config.domain else []), *card.tags],
        datasets=list(card.training_data) or None,
        eval_results=eval_results or None,
        model_name=architecture if eval_results else None,
        bioxlstm={
            "domain": config.domain,
            "parameters": sum(p.numel() for p in model.parameters()),
            "architecture": architecture,
            **({"base_model": local_base} if local_base else {}),
        },
    )


def card_body(model: PreTrainedModel, card: CardInfo, directory: Path, bundled_name: str | None) -> str:
    config = model.config
    domain = DOMAINS[config.domain].display_name if config.domain in DOMAINS else "any tokenised sequence"
    description = card.description or f"An xLSTM model for {domain}, exported by `bioxlstm export`."
    if card.base_model and f"`{card.base_model}`" not in description:
        description += f"\n\nFine-tuned from `{card.base_model}`."
    if (Path(directory) / LOSS_CURVE_FILE).is_file() and LOSS_CURVE_FILE not in description:
        description += f"\n\nTraining and held-out loss during training:\n\n![loss curve]({LOSS_CURVE_FILE})"
    sections = [
        f"# Bio-xLSTM {type(model).__name__} for {domain}",
        description,
        intended_use_section(model, domain),
        limitations_section(model, card),
        requirements_section(directory, bundled_name),
        architecture_section(model),
        usage_section(model, bundled_name),
        evaluation_section(card),
        training_data_section(card),
    ]
    return "\n\n".join(section.strip() for section in sections) + "\n"


def intended_use_section(model: PreTrainedModel, domain: str) -> str:
    own = type(model).__name__
    heads = supported_heads(model.config)
    others = ", ".join(f"`{name}` (`{tag}`)" for name, tag in heads.items() if name != own)
    return (
        "## Intended use\n\n"
        f"For research on {domain}, with the `{model.pipeline_tag}` pipeline of this head (`{own}`). "
        f"The same weights also load as {others}: a new classification head (with `num_labels`) starts "
        "untrained and is meant to be fine-tuned on labelled data before use."
    )


def limitations_section(model: PreTrainedModel, card: CardInfo) -> str:
    config = model.config
    reading = (
        f"reads the whole sequence at once ({', '.join(config.non_causal_settings)}), so it cannot generate"
        if config.non_causal_settings
        else "reads left to right: a position's output depends only on the tokens before it"
    )
    data = "the data described below" if card.training_data else "data this card does not describe"
    lines = [
        "## Limitations",
        "",
        f"- Trained on {data}; likelihoods, samples and embeddings of sequences unlike it are not calibrated.",
        "- The numbers under Evaluation are the only assessment made; they are not a benchmark of fitness for "
        "clinical, diagnostic, safety or regulatory decisions, for which this model is not intended.",
        f"- The model {reading}.",
        "- Letters outside the tokenizer's alphabet become `<unk>`; check inputs before scoring them.",
        "- Generated sequences are samples of a language model, not validated designs.",
    ]
    return "\n".join(lines)


def requirements_section(directory: Path, bundled_name: str | None) -> str:
    # The version that wrote config.json (and the weights), which a card rewritten later keeps.
    config_file = Path(directory) / "config.json"
    saved_with = json.loads(config_file.read_text()).get("transformers_version") if config_file.is_file() else None
    versions = f"Saved with transformers {saved_with or transformers.__version__}."
    if bundled_name is not None:
        return (
            "## Runtime requirements\n\n"
            f"This copy ships inside the `bioxlstm` package and runs with it (`--model {bundled_name}` on the "
            f"command line, `bioxlstm.pretrained.load_pretrained(\"{bundled_name}\")` in Python). For plain "
            f"transformers, `bioxlstm export --model {bundled_name} --output DIR` writes a self-contained copy "
            f"with its model code, which needs only\n\n```bash\npip install {RUNTIME_PACKAGES}\n```\n\n"
            f"and `trust_remote_code=True`. {versions}"
        )
    return (
        "## Runtime requirements\n\n"
        f"```bash\npip install {RUNTIME_PACKAGES}\n```\n\n"
        "The model code ships in this directory (`configuration_bioxlstm.py`, `modeling_bioxlstm.py` and the "
        "files they import): load it with `trust_remote_code=True`; `bioxlstm` itself is not needed. It runs "
        f"on CPU; on CUDA the `mlstm_kernels` package, when installed, provides faster kernels. {versions}"
    )


def architecture_section(model: PreTrainedModel) -> str:
    config = model.config
    blocks = config.block_names
    parameters = sum(p.numel() for p in model.parameters())
    return (
        "## Architecture\n\n"
        f"- {parameters:,} parameters; hidden size {config.hidden_size}; {config.num_hidden_layers} blocks "
        f"({', '.join(blocks)}); {config.num_heads} heads; vocabulary of {config.vocab_size} tokens."
    )


def usage_section(model: PreTrainedModel, bundled_name: str | None) -> str:
    path = "path/to/the/exported/directory" if bundled_name else "path/to/this/directory"
    lines = [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
        "",
        "# Without bioxlstm installed, trust_remote_code=True runs the model code shipped with the model.",
        f'pipe = pipeline("{model.pipeline_tag}", model="{path}", trust_remote_code=True)',
        "# The tokenizer needs no remote code:",
        f'tokenizer = AutoTokenizer.from_pretrained("{path}", trust_remote_code=False)',
        "# A classifier to fine-tune, starting from these weights:",
        f'classifier = AutoModelForSequenceClassification.from_pretrained("{path}", num_labels=2, trust_remote_code=True)',
        "```",
    ]
    return "\n".join(lines)


def evaluation_section(card: CardInfo) -> str:
    if not card.metrics:
        return "## Evaluation\n\nNo held-out numbers were recorded for this model."
    rows = [f"| {name} | {value:.4g} |" for name, value in card.metrics.items()]
    return "\n".join(["## Evaluation", "", "| metric | value |", "| --- | --- |", *rows])


def training_data_section(card: CardInfo) -> str:
    if not card.training_data:
        return "## Training data\n\nNo training data card was recorded for this model."
    # A data card is a document of its own; its headings move below this section's.
    cards = (re.sub(r"^#", "###", text.strip(), flags=re.MULTILINE) for text in card.training_data.values())
    return "\n\n".join(["## Training data", *cards])

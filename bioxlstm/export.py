"""Export a model as a self-contained Hugging Face model directory.

The directory holds safetensors weights, a config.json whose `auto_map` points at the model code
saved beside it (so `AutoModelFor...from_pretrained(dir, trust_remote_code=True)` works where
bioxlstm is not installed), the domain tokenizer (loads with `AutoTokenizer`, no remote code) and
a model card (`README.md` with YAML metadata).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .domains import DOMAINS
from .models.configuration_bioxlstm import BLOCK_NAMES

# Written beside a trained model (by training or by hand): what the card reports about it.
CARD_INFO_FILE = "bioxlstm_card.json"


@dataclass
class CardInfo:
    """What a model card says beyond the architecture: training data and held-out numbers."""

    training_data: dict[str, str] = field(default_factory=dict)  # data set name -> its data card (markdown)
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"eval_perplexity": 3.7}
    description: str = ""
    license: str = ""  # a Hub license identifier, e.g. "apache-2.0"; empty: the card states none

    @classmethod
    def from_file(cls, path: Path) -> "CardInfo":
        return cls(**json.loads(Path(path).read_text()))


def export(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    card: CardInfo | None = None,
) -> Path:
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    card = card or CardInfo()
    (output_dir / "README.md").write_text(model_card(model, card))
    (output_dir / CARD_INFO_FILE).write_text(json.dumps(card.__dict__, indent=2))
    return output_dir


def model_card(model: PreTrainedModel, card: CardInfo) -> str:
    config = model.config
    architecture = type(model).__name__
    pipeline_tag = model.pipeline_tag
    parameters = sum(p.numel() for p in model.parameters())
    domain = DOMAINS[config.domain].display_name if config.domain in DOMAINS else "any tokenised sequence"
    metadata = {
        **({"license": card.license} if card.license else {}),
        "library_name": "transformers",
        "pipeline_tag": pipeline_tag,
        "tags": ["bioxlstm", "xlstm", *([config.domain] if config.domain else [])],
        "bioxlstm": {"domain": config.domain, "parameters": parameters, "architecture": architecture},
        "datasets": list(card.training_data),
    }
    if card.metrics:
        metadata["model-index"] = [
            {
                "name": architecture,
                "results": [
                    {
                        "task": {"type": pipeline_tag},
                        "metrics": [{"type": name, "value": value} for name, value in card.metrics.items()],
                    }
                ],
            }
        ]
    blocks = [BLOCK_NAMES[kind] for kind in config.block_types]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        "",
        f"# Bio-xLSTM {architecture} for {domain}",
        "",
        card.description or f"An xLSTM model for {domain}, exported by `bioxlstm export`.",
        "",
        "## Architecture",
        "",
        f"- {parameters:,} parameters; hidden size {config.hidden_size}; {config.num_hidden_layers} blocks "
        f"({', '.join(blocks)}); {config.num_heads} heads; vocabulary of {config.vocab_size} tokens.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoTokenizer, pipeline",
        "",
        "# Without bioxlstm installed, trust_remote_code=True runs the model code shipped here.",
        f'pipe = pipeline("{pipeline_tag}", model="path/to/this/directory", trust_remote_code=True)',
        "# The tokenizer needs no remote code:",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory", trust_remote_code=False)',
        "```",
        "",
        "## Evaluation",
        "",
    ]
    if card.metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4g} |" for name, value in card.metrics.items()]
    else:
        lines.append("No held-out numbers were recorded for this model.")
    lines += ["", "## Training data", ""]
    if card.training_data:
        for text in card.training_data.values():
            lines += [text.strip(), ""]
    else:
        lines.append("No training data card was recorded for this model.")
    return "\n".join(lines) + "\n"

"""Recipe files: YAML read with YAML 1.2 scalars, `section.key=value` overrides, and every unknown
key, wrongly typed value or objective the data cannot serve refused in one line naming the file."""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path

import yaml
from transformers import TrainingArguments

from ..data import DataSpec
from ..domains import DOMAINS
from ..models import MIXERS, BioXLSTMConfig
from .adapters import lora_settings
from .objectives import OBJECTIVES, Objective


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 scalars on the safe loader: `5e-3` is a float and `no`/`off` are strings. YAML 1.1
    would read the first as text (a learning rate the optimiser rejects) and `eval_strategy: no` as
    False."""

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong, in one line, without the excerpt PyYAML prints below it."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces, never tabs)"
    mark, context, context_mark = (getattr(error, name, None) for name in ("problem_mark", "context", "context_mark"))
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        problem += f", {context} opened on line {context_mark.line + 1}"
    return problem


def _yaml_place(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"


SECTIONS = ("name", "description", "domain", "objective", "init_from", "init_blocks", "data", "model", "training", "lora")
# Set from the tokenizer and the recipe's domain, never by hand.
DERIVED_MODEL_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "domain", "complement_map")
# Data fields a recipe may give as one file or a list of files.
FILE_LISTS = ("train", "eval", "test", "cards")
# transformers' deprecated `fsdp` strings, as the `fsdp_config` entries that replace them.
LEGACY_FSDP_OPTIONS = {
    "full_shard": {"reshard_after_forward": True},
    "shard_grad_op": {"reshard_after_forward": False},
    "offload": {"cpu_offload": True},
    "auto_wrap": {},
}


def model_fields() -> set[str]:
    return BioXLSTMConfig.field_names() - set(DERIVED_MODEL_FIELDS)


def _section_fields() -> dict[str, set[str]]:
    return {
        "data": {f.name for f in dataclasses.fields(DataSpec)},
        "model": model_fields(),
        "training": {f.name for f in dataclasses.fields(TrainingArguments) if f.init} - {"output_dir"},
    }


@functools.cache
def _section_types() -> dict[str, dict[str, object]]:
    data = typing.get_type_hints(DataSpec)
    data.update({key: str | list[str] for key in FILE_LISTS})
    training = typing.get_type_hints(TrainingArguments)
    # transformers types `fsdp` as a string only for its deprecated form (`_check_fsdp`); a recipe turns
    # it on with true.
    training["fsdp"] = bool | None
    return {"data": data, "model": BioXLSTMConfig.field_types(), "training": training}


def _fits(value, hint) -> bool:
    """Whether a YAML value is of a field's annotated type; a type no YAML value spells is left to its consumer."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in arguments)
    if origin is typing.Literal:
        return value in arguments
    if origin in (list, tuple):  # YAML has lists only; tuple[int, ...] is read as a list of int
        return isinstance(value, list) and (not arguments or all(_fits(item, arguments[0]) for item in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint in (int, float):  # YAML's true and false are no numbers, although Python's bool is an int
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint in (bool, str, list):
        return isinstance(value, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, str)
    return True


def _describe_type(hint) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe_type(arm) for arm in arguments))
    if origin is typing.Literal:
        return " or ".join(map(repr, arguments))
    if origin in (list, tuple) or hint is list:
        plurals = {int: "integers", float: "numbers", bool: "true or false values", str: "strings"}
        return f"a list of {plurals.get(arguments[0], _describe_type(arguments[0]))}" if arguments else "a list"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "a string"
    names = {
        int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping", type(None): "null"
    }
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _check_types(content: dict, path: Path) -> None:
    for section, types_of in _section_types().items():
        for key, value in (content.get(section) or {}).items():
            if key in types_of and not _fits(value, types_of[key]):
                raise ValueError(f"{path}: {section}.{key} must be {_describe_type(types_of[key])}, got {value!r}")


def _check_steps(training: dict, path: Path) -> None:
    # transformers still trains a step and saves a model for max_steps 0, so a recipe that asks for
    # no training would end looking like a success.
    steps = training.get("max_steps")
    if steps is not None and steps != -1 and steps < 1:
        raise ValueError(
            f"{path}: training.max_steps must be at least 1 (or -1 to train for num_train_epochs), got {steps}"
        )


def _check_fsdp(training: dict, path: Path) -> None:
    """FSDP is asked for with `fsdp_config` (and optionally `fsdp: true`), as transformers now reads it."""
    fsdp = training.get("fsdp")
    if isinstance(fsdp, (str, list)):
        options = fsdp.split() if isinstance(fsdp, str) else fsdp
        if all(option in LEGACY_FSDP_OPTIONS for option in options):
            config = {key: value for option in options for key, value in LEGACY_FSDP_OPTIONS[option].items()}
            replacement = f"training.fsdp_config: {yaml.safe_dump(config, default_flow_style=True).strip()}"
        else:
            replacement = "a training.fsdp_config mapping (see transformers.TrainingArguments.fsdp_config)"
        raise ValueError(
            f"{path}: training.fsdp: {fsdp!r} is the string form transformers deprecated; write {replacement} instead"
        )
    if fsdp is False and training.get("fsdp_config") is not None:
        raise ValueError(f"{path}: training.fsdp is false but training.fsdp_config asks for FSDP; remove one of them")


@dataclasses.dataclass
class Recipe:
    name: str
    domain: str
    objective: str
    data: DataSpec
    model: dict
    training: dict
    description: str = ""
    path: Path | None = None
    init_from: str | None = None  # a model directory or bundled model name to fine-tune
    init_blocks: list[int | str] | None = None  # with init_from: the blocks of the grown model (`grown_model`)
    lora: dict | None = None  # LoRA adapters instead of training every weight (`adapters.LoraSettings`)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read a recipe file and apply `section.key=value` overrides; every mistake is a ValueError
    (or FileNotFoundError) with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such recipe file", str(path))
    try:
        content = _parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a recipe: not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}{_yaml_place(error)}: not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with sections {', '.join(SECTIONS)}")
    for override in overrides:
        _apply_override(content, override, path)
    _check_keys(content, path)
    _check_fsdp(content.get("training") or {}, path)
    _check_types(content, path)
    _check_steps(content.get("training") or {}, path)
    if content.get("domain") not in DOMAINS:
        raise ValueError(f"{path}: domain must be one of {', '.join(DOMAINS)}, got {content.get('domain')!r}")
    objective = content.get("objective")
    if objective not in OBJECTIVES:
        raise ValueError(f"{path}: unknown objective {objective!r}; known objectives: {', '.join(sorted(OBJECTIVES))}")
    data = dict(content.get("data") or {})
    for key in FILE_LISTS:
        data[key] = [str(path.parent / p) for p in _as_list(data.get(key, []))]
    spec = DataSpec(**data)
    _check_objective(OBJECTIVES[objective], objective, content["domain"], spec, path)
    init_from = content.get("init_from")
    if init_from is not None and (path.parent / str(init_from) / "config.json").is_file():
        init_from = str(path.parent / str(init_from))
    init_blocks = content.get("init_blocks")
    if init_blocks is not None:
        if init_from is None:
            raise ValueError(f"{path}: init_blocks rearranges the blocks of a trained model; give init_from too")
        if not isinstance(init_blocks, list) or not init_blocks or not all(
            (isinstance(entry, int) and not isinstance(entry, bool) and entry >= 0) or entry in MIXERS
            for entry in init_blocks
        ):
            raise ValueError(
                f"{path}: init_blocks must be a list whose entries are block indices of init_from (0, 1, ...) or "
                f"{' / '.join(MIXERS)} for a new block, got {init_blocks!r}"
            )
    return Recipe(
        name=content.get("name", path.stem),
        domain=content["domain"],
        objective=objective,
        data=spec,
        model=dict(content.get("model") or {}),
        training=dict(content.get("training") or {}),
        description=content.get("description", ""),
        path=path,
        init_from=None if init_from is None else str(init_from),
        init_blocks=init_blocks,
        lora=_lora_section(content.get("lora"), init_from, path),
    )


def _lora_section(section, init_from: str | None, path: Path) -> dict | None:
    if section is None:
        return None
    if init_from is None:
        raise ValueError(f"{path}: lora adapts a trained model; give init_from too")
    try:
        return dataclasses.asdict(lora_settings(section))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _apply_override(content: dict, override: str, path: Path) -> None:
    key, separator, value = override.partition("=")
    if not separator or not key:
        raise ValueError(f"override {override!r} is not of the form section.key=value")
    *sections, leaf = key.split(".")
    target = content
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {override!r}: {section!r} in {path} is not a section")
    try:
        target[leaf] = _parse_yaml(value)
    except yaml.YAMLError as error:
        raise ValueError(
            f"{path}: override {override!r}: {value!r} is not a YAML value ({_yaml_problem(error)}); "
            "quote text, write lists as [a, b]"
        ) from None


def _check_keys(content: dict, path: Path) -> None:
    unknown = [key for key in content if key not in SECTIONS]
    fields = _section_fields()
    for section, allowed in fields.items():
        values = content.get(section) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping")
        unknown += [f"{section}.{key}" for key in values if key not in allowed]
    if unknown:
        raise ValueError(
            f"{path}: unknown recipe key(s) {', '.join(unknown)}; data, model and training take the fields of "
            "bioxlstm.data.DataSpec, BioXLSTMConfig and transformers.TrainingArguments"
        )


def _check_objective(objective: Objective, name: str, domain: str, data: DataSpec, path: Path) -> None:
    if objective.domains is not None and domain not in objective.domains:
        raise ValueError(f"{path}: objective {name!r} trains {' or '.join(objective.domains)} models, not {domain}")
    for key, value in objective.data_requirements.items():
        if getattr(data, key) != value:
            raise ValueError(f"{path}: objective {name!r} needs data.{key}: {value!r}, got {getattr(data, key)!r}")

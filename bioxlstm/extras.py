"""The optional dependencies, and which extra of `pip install "bioxlstm[EXTRA]"` brings each one.

The base install loads models, generates, scores and embeds. Chemistry metrics and the SMILES
grammar (`chem`), training (`train`), evaluation statistics and plots (`eval`) and the GPU kernels
(`gpu`) are extras; `all` is all of them. The package imports an optional dependency only where it
is used, so a missing one surfaces when a command needs it, as a ModuleNotFoundError that
`bioxlstm.cli` turns into one line naming the extra to install.
"""

# Top-level module -> the extra in pyproject.toml that installs it. matplotlib is in [train] too
# (the loss curve), but `train` imports `datasets` first, so a base install meets a missing matplotlib
# in the plots of `evaluate`.
EXTRA_OF_MODULE = {
    "rdkit": "chem",
    "fcd": "chem",
    "datasets": "train",
    "accelerate": "train",
    "tensorboard": "train",
    "peft": "train",
    "scipy": "eval",
    "sklearn": "eval",
    "matplotlib": "eval",
    "triton": "gpu",
    "flashrnn": "gpu",
    "mlstm_kernels": "gpu",
}


def missing_optional_module(error: ModuleNotFoundError) -> str | None:
    """The optional module whose absence caused `error`, or None when no optional module is missing.
    Libraries may wrap the import that failed (transformers turns a missing accelerate into "Could not
    import module 'Trainer'"), so the chain of causes is searched too."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and extra_providing(error.name) is not None:
            return error.name
        error = error.__cause__ or error.__context__
    return None


def extra_providing(module: str | None) -> str | None:
    """The extra that installs `module` (a dotted name counts as its top-level package); None when
    no extra does, i.e. it is part of the base install or not ours to install."""
    return EXTRA_OF_MODULE.get((module or "").partition(".")[0])


def missing_extra_message(what: str, module: str) -> str:
    """One line telling the user of `what` (e.g. a command) how to install the missing `module`."""
    top_level = module.partition(".")[0]
    return f'{what} needs the optional dependency {top_level}: pip install "bioxlstm[{extra_providing(module)}]"'

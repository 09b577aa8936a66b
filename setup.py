"""Package list for setuptools; everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["bioxlstm*"]), "bioxlstm.tokenizer_files", "bioxlstm.moses_data"])

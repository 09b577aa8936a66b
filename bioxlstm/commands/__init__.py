"""One module per command of the `bioxlstm` command line: `add_parser(commands)` declares its
options and `run(args)` carries it out over the package's Python API."""

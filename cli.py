from bioxlstm.cli import main

main()

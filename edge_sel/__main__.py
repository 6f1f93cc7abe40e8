from edge_sel.cli import main

main()

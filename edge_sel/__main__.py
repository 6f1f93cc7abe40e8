from edge_sel.cli_interrupts import quiet_start_up_interrupts

quiet_start_up_interrupts(force=True)

from edge_sel.cli import main  # noqa: E402 -- after the handler, so a Ctrl-C while importing is one line

main()

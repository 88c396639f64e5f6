"""One module per ``ms2dist`` subcommand: ``add_arguments(parser)`` and ``main(args, extra)``.

Commands check arguments and tie the rooms together; the work itself lives in the rooms.
"""

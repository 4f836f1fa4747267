"""One module per benchmark scenario; each has ``add_arguments(parser)`` and ``run(args) -> exit code``.

Run one with ``python -m bench <scenario> [options]`` and the standard suite with
``python -m bench suite`` (``make bench``).
"""

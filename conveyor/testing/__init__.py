"""Testing kit: what users need to test their own workflows and handlers.

Installed with the ``testing`` extra (``pip install 'conveyor[testing]'``). The Anthropic
Messages API simulator lives in :mod:`conveyor.testing.simulator`.
"""

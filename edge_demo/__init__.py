"""``edge demo``: the whole system end to end on one machine (see :mod:`edge_demo.runner`).

Modules: :mod:`~edge_demo.cli` (the command), :mod:`~edge_demo.runner` (the
steps), :mod:`~edge_demo.device` (a simulated device process: ``edge serve`` + agent),
:mod:`~edge_demo.processes` (child processes, always stopped),
:mod:`~edge_demo.traffic` (Open Inference Protocol client), :mod:`~edge_demo.plot`
(the PNG), :mod:`~cloud_trainer.progress` (a Lightning callback). Nothing is imported
here, so ``edge --help`` stays light.
"""

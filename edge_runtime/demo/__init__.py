"""``edge demo``: the whole system end to end on one machine (see :mod:`edge_runtime.demo.runner`).

Modules: :mod:`~edge_runtime.demo.cli` (the command), :mod:`~edge_runtime.demo.runner` (the
steps), :mod:`~edge_runtime.demo.device` (a simulated device process: ``edge serve`` + agent),
:mod:`~edge_runtime.demo.processes` (child processes, always stopped),
:mod:`~edge_runtime.demo.traffic` (Open Inference Protocol client), :mod:`~edge_runtime.demo.plot`
(the PNG), :mod:`~edge_runtime.demo.train_progress` (a Lightning callback). Nothing is imported
here, so ``edge --help`` stays light.
"""

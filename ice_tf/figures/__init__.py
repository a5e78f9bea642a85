"""Figures: the helpers of the figure scripts (plotting) and the 2-D toy models of the
paper's Figs. 2 and 3 (toy).

Example:
    from ice_tf.figures import plotting
    figure, axes = plotting.new_figure(1, 2)
"""

import importlib

SUBMODULES = ("plotting", "toy")


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"ice_tf.figures.{name}")
    raise AttributeError(f"module 'ice_tf.figures' has no attribute {name!r}")

"""Module paths of earlier versions, kept so that old imports still work: each old path
is the module it became, with a DeprecationWarning that names the new one.

Example:
    import ice_tf.config  # DeprecationWarning: ice_tf.config is now ice_tf.experiment.config
"""

import importlib
import sys
import warnings

MOVED = {
    "ice_tf.config": "ice_tf.experiment.config",
    "ice_tf.run_data": "ice_tf.experiment.run_data",
    "ice_tf.run_folder": "ice_tf.experiment.run_folder",
    "ice_tf.run_lock": "ice_tf.experiment.run_lock",
    "ice_tf.checkpoint": "ice_tf.experiment.checkpoint",
    "ice_tf.evaluation": "ice_tf.experiment.evaluation",
    "ice_tf.plotting": "ice_tf.figures.plotting",
    "ice_tf.toy": "ice_tf.figures.toy",
}


def warn(old, new):
    warnings.warn(f"{old} is now {new}; import that instead.", DeprecationWarning, stacklevel=4)


def alias(old):
    """Makes module `old` (the caller's `__name__`) the module it became.

    Example:
      alias(__name__)  # in ice_tf/config.py
    """
    new = MOVED[old]
    warn(old, new)
    sys.modules[old] = importlib.import_module(new)

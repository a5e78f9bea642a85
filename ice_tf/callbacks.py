"""Moved: the probe callbacks to ice_tf.analysis.probes, the config's probes to
ice_tf.experiment.analyses, resume and the metrics log to ice_tf.experiment.checkpoint.
This path stays for old imports."""
import importlib

from ice_tf import _moved

_HOMES = ("ice_tf.analysis.probes", "ice_tf.experiment.analyses", "ice_tf.experiment.checkpoint",
          "ice_tf.json_lines")


def __getattr__(name):
    for home in _HOMES:
        module = importlib.import_module(home)
        if name in getattr(module, "__all__", ()):
            _moved.warn(f"ice_tf.callbacks.{name}", f"{home}.{name}")
            return getattr(module, name)
    raise AttributeError(f"module 'ice_tf.callbacks' has no attribute {name!r}")

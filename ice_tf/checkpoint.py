"""Moved to ice_tf.experiment.checkpoint; this path stays for old imports."""
from ice_tf import _moved

_moved.alias(__name__)

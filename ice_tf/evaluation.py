"""Moved to ice_tf.experiment.evaluation; this path stays for old imports."""
from ice_tf import _moved

_moved.alias(__name__)

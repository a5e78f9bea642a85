"""Moved to ice_tf.experiment.run_data; this path stays for old imports."""
from ice_tf import _moved

_moved.alias(__name__)

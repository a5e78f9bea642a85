"""Moved to ice_tf.figures.plotting; this path stays for old imports."""
from ice_tf import _moved

_moved.alias(__name__)

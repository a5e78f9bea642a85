"""Moved to ice_tf.figures.toy; this path stays for old imports."""
from ice_tf import _moved

_moved.alias(__name__)

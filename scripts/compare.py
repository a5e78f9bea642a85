"""`ice-tf compare` from a source checkout: `python scripts/compare.py --helpshort`.

The command lives in ice_tf/cli/compare.py; an installed ice-tf runs it as `ice-tf compare`.
"""

from ice_tf.cli import compare

if __name__ == "__main__":
    compare.run()

"""`ice-tf export` from a source checkout: `python scripts/export.py --helpshort`.

The command lives in ice_tf/cli/export.py; an installed ice-tf runs it as `ice-tf export`.
"""

from ice_tf.cli import export

if __name__ == "__main__":
    export.run()

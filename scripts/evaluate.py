"""`ice-tf evaluate` from a source checkout: `python scripts/evaluate.py --helpshort`.

The command lives in ice_tf/cli/evaluate.py; an installed ice-tf runs it as `ice-tf evaluate`.
"""

from ice_tf.cli import evaluate

if __name__ == "__main__":
    evaluate.run()

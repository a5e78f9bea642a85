"""OOD scores computed from a head's outputs; higher always means more in-distribution.

| name        | formula                    | for                                   |
|-------------|----------------------------|---------------------------------------|
| `msp`       | max_i softmax(f)_i         | the baseline detector                  |
| `max_logit` | max_i f_i                  |                                        |
| `energy`    | logsumexp_i f_i = -E(x)     | Energy (Eq. 0.4)                       |
| `ice`       | max_i h_i                  | ICE; exp(max h) in (0, 1] is its confidence |
| `gen`       | -Σ_{j<=M} p_j^γ (1 - p_j)^γ over the M largest softmax p | GEN (Liu et al., CVPR 2023) |

`ice` returns max h rather than exp(max h): the two rank samples identically, and
max h does not underflow to ties at 0 for far-away inputs. `confidence` gives
exp(max h) for a Gaussian head (max softmax for a linear one).
"""

from __future__ import annotations

import tensorflow as tf


def _as_float32(outputs):
    return tf.cast(tf.convert_to_tensor(outputs), tf.float32)


def msp(outputs):
    """Maximum softmax probability (Hendrycks & Gimpel, 2017).

    Example:
      msp(model.predict(x))  # max softmax probability, higher = more in-distribution
    """
    return tf.reduce_max(tf.nn.softmax(_as_float32(outputs), axis=-1), axis=-1)


def max_logit(outputs):
    """max_i f_i.

    Example:
      max_logit(model.predict(x))
    """
    return tf.reduce_max(_as_float32(outputs), axis=-1)


def energy(outputs):
    """Negative energy logsumexp_i f_i (temperature 1), Eq. (0.4).

    Example:
      energy(model.predict(x))  # logsumexp of the logits (the negative free energy)
    """
    return tf.reduce_logsumexp(_as_float32(outputs), axis=-1)


def ice(outputs):
    """max_i h_i(z), the log of the ICE confidence exp(max_i h_i) (Eqs. 0.11, 0.13).

    The same arithmetic as `max_logit`, applied to a Gaussian head's h.

    Example:
      ice(model.predict(x))  # max_i h_i(z) of the Gaussian head, Eq. 0.14
    """
    return max_logit(outputs)


GEN_GAMMA = 0.1
GEN_TOP = 100


def gen(outputs, gamma=GEN_GAMMA, top=GEN_TOP):
    """Generalized entropy (Liu et al., CVPR 2023, Eq. 6): with p the softmax of the
    outputs sorted in decreasing order, -Σ_{j=1}^{M} p_j^γ (1 - p_j)^γ, M = min(top, K);
    the paper's γ = 0.1 and M = 100.

    Example:
      gen(model.predict(x))  # higher = more in-distribution
    """
    probabilities = tf.nn.softmax(tf.cast(_as_float32(outputs), tf.float64), axis=-1)
    count = min(int(top), int(probabilities.shape[-1]))
    largest = tf.math.top_k(probabilities, k=count).values
    entropy = tf.reduce_sum(largest ** gamma * (1.0 - largest) ** gamma, axis=-1)
    return tf.cast(-entropy, tf.float32)


SCORES = {"msp": msp, "max_logit": max_logit, "energy": energy, "ice": ice, "gen": gen}


def names():
    """The registered score names.

    Example:
      names()  # ['energy', 'ice', 'max_logit', 'msp']
    """
    return sorted(SCORES)


def get(name):
    """Returns the score function `outputs (batch, K) -> (batch,)` called `name`.

    Example:
      get("energy")(outputs)
    """
    if callable(name) and not isinstance(name, str):
        return name
    if name in SCORES:
        return SCORES[name]
    raise ValueError(f"Unknown score {name!r}; valid scores: {', '.join(names())}.")


def default_score_name(gaussian_head):
    """`ice` for a Gaussian head, `msp` for a linear one (a model without a known method)."""
    return "ice" if gaussian_head else "msp"


def confidence(outputs, gaussian_head, temperature=1.0, platt=None):
    """In-distribution confidence in (0, 1]: for a Gaussian head exp(max h / T) (T = 1 is
    the paper's exp(max h), Eq. 0.11; a fitted T calibrates it:
    `ice_tf.calibration.fit_temperature`) or, with `platt` = (a, b), σ(a · max h + b)
    (`ice_tf.calibration.fit_platt`); for a linear head max softmax.

    Example:
      confidence(outputs, gaussian_head=True)  # exp(max h) in (0, 1]
    """
    if gaussian_head and platt is not None:
        return tf.sigmoid(float(platt[0]) * ice(outputs) + float(platt[1]))
    if gaussian_head:
        return tf.exp(ice(outputs) / float(temperature))
    return msp(outputs)


__all__ = ["gen", "GEN_GAMMA", "GEN_TOP", "msp", "max_logit", "energy", "ice", "SCORES", "get", "names", "confidence"]

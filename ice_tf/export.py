"""SavedModel export: class probabilities and an in-distribution confidence for serving.

Signatures, for a model that records its normalisation (`OODModel(normalization=...)`;
runs trained by the scripts and `from_classifier(..., normalization=...)` set it):

  serving_default   `images` float32 raw pixels in [0, 255], (batch, H, W, C); the
                    model's normalisation (x / 255 - mean) / std is applied inside;
  serve_uint8       the same for uint8 pixels;
  serve_normalized  `images` float32 already normalised as the model was trained.

A model without a recorded normalisation has `serving_default` (= `serve_normalized`)
only. Each signature returns:

  probabilities  (batch, K)  softmax of the head's outputs (Eq. 0.2 / 0.12);
  confidence     (batch,)    exp(max_i h_i) in (0, 1] for a Gaussian head (Eqs. 0.11,
                             0.13), max softmax for a linear head;
  score          (batch,)    the OOD score (higher = more in-distribution), by default
                             `ice` (max h) or `msp`;
  outputs        (batch, K)  the raw head outputs (h or logits).

The SavedModel loads with plain `tf.saved_model.load` in a process that never
imports ice_tf.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from ice_tf import scores as scores_lib


def default_score(model):
    """The score of the method `model` was compiled with (`ice_tf.losses.spec`), else `ice`
    for a Gaussian head and `msp` for a linear one."""
    from ice_tf import losses

    name = getattr(getattr(model, "ood_loss", None), "name", None)
    if name in losses.names():
        return losses.spec(name).default_score
    return scores_lib.default_score_name(model.gaussian_head)


def serving_outputs(model, images, score=None):
    """The dictionary the exported signature returns, computed in eager or graph mode."""
    gaussian = model.gaussian_head
    score_fn = scores_lib.get(score or default_score(model))
    outputs = tf.cast(model(images, training=False), tf.float32)
    return {
        "probabilities": tf.nn.softmax(outputs, axis=-1),
        "confidence": scores_lib.confidence(outputs, gaussian),
        "score": score_fn(outputs),
        "outputs": outputs,
    }


def export_saved_model(model, path, score=None, overwrite=False):
    """Writes `model` (an `OODModel`) as a SavedModel directory at `path`.

    The directory is written beside `path` first and moved into place at the end,
    so a failed export never leaves a partial SavedModel behind.

    Args:
      model: a built `ice_tf.models.OODModel`.
      path: the output directory.
      score: a name from `ice_tf.scores.names()` for the `score` output; default: the
        compiled method's own score (`default_score`).
      overwrite: replace an existing directory at `path`.

    Returns:
      The path written.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    score = score or default_score(model)
    scores_lib.get(score)  # validate early
    input_shape = tuple(model.image_shape)

    def spec(dtype):
        return tf.TensorSpec((None, *input_shape), dtype, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)
    normalization = getattr(model, "normalization", None)
    if normalization is None:
        archive.add_endpoint("serve", lambda images: serving_outputs(model, images, score),
                             input_signature=[spec(tf.float32)])
    else:
        mean = tf.constant(normalization[0], tf.float32)
        std = tf.constant(normalization[1], tf.float32)

        def from_pixels(images):
            normalised = (tf.cast(images, tf.float32) / 255.0 - mean) / std
            return serving_outputs(model, normalised, score)

        archive.add_endpoint("serve", from_pixels, input_signature=[spec(tf.float32)])
        archive.add_endpoint("serve_uint8", from_pixels, input_signature=[spec(tf.uint8)])
        archive.add_endpoint("serve_normalized", lambda images: serving_outputs(model, images, score),
                             input_signature=[spec(tf.float32)])
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


__all__ = ["export_saved_model", "serving_outputs", "default_score"]

"""SavedModel export: class probabilities and an in-distribution confidence for serving.

Signatures, for a model that records its normalisation (`OODModel(normalization=...)`;
runs trained by the scripts and `from_classifier(..., normalization=...)` set it):

  serving_default   `images` float32 raw pixels in [0, 255], (batch, H, W, C); the
                    model's normalisation (x / 255 - mean) / std is applied inside;
  serve_uint8       the same for uint8 pixels;
  serve_normalized  `images` float32 already normalised as the model was trained.

A model without a recorded normalisation has `serving_default` (= `serve_normalized`)
only. Every signature checks its input at run time: a wrong rank or image size is an
InvalidArgumentError naming the expected shape (never a process abort), another dtype
is refused by the signature, and an empty batch gives empty outputs. Each returns:

  probabilities  (batch, K)  softmax of the head's outputs (Eq. 0.2 / 0.12);
  confidence     (batch,)    P(in-distribution) for a Gaussian head: σ(a · max_i h_i + b)
                             with the head's confidence_platt (a, b), fitted on validation
                             data by runs, else exp(max_i h_i / T) (Eqs. 0.11, 0.13; T = the
                             head's confidence_temperature, 1 unless fitted); max softmax
                             for a linear head;
  score          (batch,)    the OOD score (higher = more in-distribution), by default
                             `ice` (max h) or `msp`;
  outputs        (batch, K)  the raw head outputs (h or logits).

An image with a NaN or infinite pixel gets NaN outputs and probabilities, confidence 0
and score -inf.

The SavedModel loads with plain `tf.saved_model.load` in a process that never
imports ice_tf. Its folder holds ice-tf-export.json, the list of the files the export
wrote: `overwrite=True` replaces such a folder only, never another one.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from ice_tf import ownership
from ice_tf import scores as scores_lib


def default_score(model):
    """The score of the method `model` was compiled with (`ice_tf.losses.spec`), else `ice`
    for a Gaussian head and `msp` for a linear one.

    Example:
      default_score(model)  # "ice" for a Gaussian head, else "msp"
    """
    from ice_tf import losses

    name = getattr(getattr(model, "ood_loss", None), "name", None)
    if name in losses.names():
        return losses.spec(name).default_score
    return scores_lib.default_score_name(model.gaussian_head)


def serving_outputs(model, images, score=None):
    """The dictionary the exported signature returns, computed in eager or graph mode.

    Example:
      outputs = serving_outputs(model, images)  # probabilities, confidence, score, outputs
    """
    gaussian = model.gaussian_head
    score_fn = scores_lib.get(score or default_score(model))
    outputs = tf.cast(model(images, training=False), tf.float32)
    # An image with a non-finite pixel has no meaningful output: NaN outputs and
    # probabilities, confidence 0 and score -inf, never a confidence above real images.
    pixels = tf.reshape(tf.cast(images, tf.float32), (tf.shape(images)[0], -1))
    finite = tf.reduce_all(tf.math.is_finite(pixels), axis=1)
    nan_rows = tf.fill(tf.shape(outputs), float("nan"))
    outputs = tf.where(finite[:, None], outputs, nan_rows)
    confidence = scores_lib.confidence(
        outputs, gaussian, getattr(model.head, "confidence_temperature", 1.0),
        getattr(model.head, "confidence_platt", None))
    return {
        "probabilities": tf.nn.softmax(outputs, axis=-1),
        "confidence": tf.where(finite, confidence, tf.zeros_like(confidence)),
        "score": tf.where(finite, score_fn(outputs), tf.fill(tf.shape(finite), -float("inf"))),
        "outputs": outputs,
    }


def checked_images(images, image_shape):
    """`images` as (batch, *image_shape), after a run-time check of its shape.

    The exported signatures accept a tensor of any shape and check it here, so that a
    wrong rank or image size is an InvalidArgumentError naming the expected shape,
    never a kernel failure that aborts the serving process.

    Example:
      checked_images(tf.zeros((2, 28, 28, 1)), (28, 28, 1))  # shape (2, 28, 28, 1)
      checked_images(tf.zeros((28, 28, 1)), (28, 28, 1))     # InvalidArgumentError
    """
    expected = tf.constant(image_shape, tf.int32)
    shape = tf.shape(images, out_type=tf.int32)
    padded = tf.concat([shape, tf.zeros(4, tf.int32)], axis=0)[:4]  # any rank compares
    fits = tf.logical_and(tf.equal(tf.size(shape), 4),
                          tf.reduce_all(tf.equal(padded[1:], expected)))
    message = f"images must have shape (batch, {', '.join(map(str, image_shape))}); got shape"
    with tf.control_dependencies([tf.debugging.Assert(fits, [message, shape])]):
        return tf.reshape(images, (-1, *image_shape))


def _serve(model, images, score, normalization=None):
    """The signature body: shape check, optional normalisation, outputs; an empty batch
    gives empty outputs."""
    images = checked_images(images, tuple(model.image_shape))
    if normalization is not None:
        mean = tf.constant(normalization[0], tf.float32)
        std = tf.constant(normalization[1], tf.float32)
        images = (tf.cast(images, tf.float32) / 255.0 - mean) / std
    num_classes = int(model.num_classes)

    def empty():
        return {"probabilities": tf.zeros((0, num_classes)), "confidence": tf.zeros((0,)),
                "score": tf.zeros((0,)), "outputs": tf.zeros((0, num_classes))}

    return tf.cond(tf.shape(images)[0] > 0, lambda: serving_outputs(model, images, score), empty)


def export_saved_model(model, path, score=None, overwrite=False):
    """Writes `model` (an `OODModel`) as a SavedModel directory at `path`.

    The directory is written beside `path` first and moved into place at the end,
    so a failed export never leaves a partial SavedModel behind.

    Args:
      model: a built `ice_tf.models.OODModel`.
      path: the output directory.
      score: a name from `ice_tf.scores.names()` for the `score` output; default: the
        compiled method's own score (`default_score`).
      overwrite: replace an earlier ice-tf export at `path` (one that holds
        `ice_tf.ownership.EXPORT_MARKER` and no file it did not write); any other
        existing path is refused with `ice_tf.ownership.NotOwnedError`.

    Returns:
      The path written.

    Example:
      export_saved_model(model, "exported/ice")
      served = tf.saved_model.load("exported/ice")
      served.signatures["serving_default"](images=raw_pixels)["confidence"]
    """
    path = os.fspath(path)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace an "
                                  "earlier export, or give another output path.")
        ownership.check_replaceable_export(path)  # never a folder ice-tf did not write
    score = score or default_score(model)
    scores_lib.get(score)  # validate early

    def spec(dtype):
        # Any shape: `checked_images` checks it at run time (see there why).
        return tf.TensorSpec(None, dtype, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)
    normalization = getattr(model, "normalization", None)

    def normalized(images):
        return _serve(model, images, score)

    def from_pixels(images):
        return _serve(model, images, score, normalization)

    if normalization is None:
        archive.add_endpoint("serve", normalized, input_signature=[spec(tf.float32)])
    else:
        archive.add_endpoint("serve", from_pixels, input_signature=[spec(tf.float32)])
        archive.add_endpoint("serve_uint8", from_pixels, input_signature=[spec(tf.uint8)])
        archive.add_endpoint("serve_normalized", normalized, input_signature=[spec(tf.float32)])
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        ownership.write_export_marker(staging, score=score)
        if os.path.exists(path):
            ownership.remove_export(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


__all__ = ["export_saved_model", "serving_outputs", "checked_images", "default_score"]

"""A user's Keras classifier as a backbone: where to split it (the input of its class
layer, nested models included), and reading model files.

Example:
  backbone, dense = classifier_parts(classifier)   # dense: the class layer
  model = read_model("mine/classifier.keras")
"""

from __future__ import annotations

import functools
import os
import zipfile

import keras



def _find_layer(classifier, identifier):
    layers = classifier.layers
    if isinstance(identifier, int):
        try:
            return layers[identifier]
        except IndexError:
            raise ValueError(f"feature_layer={identifier} is out of range: the classifier has "
                             f"{len(layers)} layers.") from None
    for layer in layers:
        if layer.name == identifier:
            return layer
    raise ValueError(f"feature_layer={identifier!r} is not a layer of {classifier.name}; its layers: "
                     f"{', '.join(layer.name for layer in layers)}.")


def _last_dense(classifier):
    dense = [layer for layer in classifier.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            f"{classifier.name} has no Dense layer to split at: pass feature_layer= (the layer "
            "whose outputs are the features) and head='gaussian'."
        )
    return dense[-1]


@keras.saving.register_keras_serializable(package="ice_tf")
class ClassifierFeatures(keras.Model):
    """The features of a subclassed classifier: its `call` runs, and the input of its last
    Dense layer (or the output of `feature_layer`) is returned.

    A functional or Sequential classifier is cut into a plain functional model
    instead; this wrapper is for models whose graph cannot be cut. Saving it needs the
    classifier's class registered (`keras.saving.register_keras_serializable`), as
    saving the classifier itself does.

    Example:
      backbone = ClassifierFeatures(my_subclassed_classifier, layer_index=-1)
    """

    def __init__(self, classifier, layer_index, take="input", **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        # An index into classifier.layers: a subclassed model's layer names change on reload.
        self.layer_index = int(layer_index)
        self.take = take
        self._layer = _find_layer(classifier, self.layer_index)
        if take == "input":
            # The classifier's own last Dense layer runs but feeds nothing: the head
            # replaces it, so it is frozen (no gradient would reach it anyway).
            self._layer.trainable = False

    def call(self, inputs, training=False):
        captured = []
        layer, original = self._layer, self._layer.call

        def capture(*args, **kwargs):
            outputs = original(*args, **kwargs)
            captured.append(args[0] if self.take == "input" else outputs)
            return outputs

        layer.call = capture
        try:
            self.classifier(inputs, training=training)
        finally:
            del layer.call
        return captured[-1]

    def get_config(self):
        return {**super().get_config(), "classifier": keras.saving.serialize_keras_object(
            self.classifier), "layer_index": self.layer_index, "take": self.take}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"))
        return cls(classifier, **config)


def _nested_class_model(classifier):
    """The nested Sequential or functional model that ends a graph classifier and holds
    its class layer (the last layer with weights is a model, not a Dense), or None."""
    if not _is_graph_model(classifier):
        return None
    weighted = [layer for layer in classifier.layers if layer.weights]
    if weighted and isinstance(weighted[-1], keras.Model) and _is_graph_model(weighted[-1]):
        return weighted[-1]
    return None


def _check_class_layer(classifier, dense):
    """Refuses a split at a Dense layer that does not give the classifier's outputs (the
    class layer hidden where the split cannot see it), instead of a wrong class count."""
    try:
        outputs = classifier.output_shape[-1]
    except (AttributeError, ValueError, TypeError, IndexError):
        return  # a subclassed model that does not know its output shape
    if isinstance(outputs, int) and outputs != dense.units:
        raise ValueError(
            f"the last Dense layer of {classifier.name} that ice-tf can see, {dense.name!r}, has "
            f"{dense.units} units but the classifier gives {outputs} outputs: its class layer is "
            "nested where the split cannot reach; pass feature_layer= (the layer whose outputs "
            "are the features) or build the classifier without the nesting.")


def _is_graph_model(classifier):
    return isinstance(classifier, keras.Sequential) or type(classifier).__name__ == "Functional" or (
        getattr(classifier, "_is_graph_network", False))


def classifier_parts(classifier, feature_layer=None):
    """(backbone, dense head or None) of a trained Keras classifier.

    The backbone maps images to the input of the classifier's last Dense layer (or to
    the output of `feature_layer`, a layer name or index); its weights are the
    classifier's own.

    Example:
      backbone, dense = classifier_parts(classifier)   # dense: the last Dense layer
    """
    nested = _nested_class_model(classifier) if feature_layer is None else None
    if nested is not None:
        # The class layer sits inside a nested model that ends the classifier: the features
        # are the outer layers, then the nested model's own layers up to its last Dense.
        inner_backbone, dense = classifier_parts(nested)
        features = inner_backbone(nested.input)
        return keras.Model(classifier.inputs, features, name=f"{classifier.name}_features"), dense
    dense = _last_dense(classifier) if feature_layer is None else None
    if dense is not None:
        _check_class_layer(classifier, dense)
    if feature_layer is not None:
        layer = _find_layer(classifier, feature_layer)
        last = [l for l in classifier.layers if isinstance(l, keras.layers.Dense)]
        dense = last[-1] if last and last[-1] is not layer else None
    if _is_graph_model(classifier):
        if isinstance(classifier, keras.Sequential) and not classifier.built:
            raise ValueError("build the Sequential classifier first (give it an Input or call it once).")
        outputs = dense.input if feature_layer is None else layer.output
        backbone = keras.Model(classifier.inputs, outputs, name=f"{classifier.name}_features")
    else:
        target, take = (dense, "input") if feature_layer is None else (layer, "output")
        index = next(i for i, l in enumerate(classifier.layers) if l is target)
        backbone = ClassifierFeatures(classifier, index, take, name=f"{classifier.name}_features")
    return backbone, dense


def is_model_file(backbone):
    """Whether a backbone setting names a Keras model file (`PATH.keras`) rather than a
    registered backbone.

    Example:
      is_model_file("mine/classifier.keras")  # True
    """
    return str(backbone).endswith(".keras")


def read_model(path, what="model file"):
    """`keras.models.load_model(path, compile=False)` with one-line errors naming the
    file: missing, or not a readable .keras archive (cut short, damaged, another format),
    never Keras' "File not found" for a file that exists.

    Example:
      model = read_model("runs/demo/ice/seed1/model.keras")
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what} {path!r} is not a readable .keras archive (cut short, damaged or "
                         "another format); save the model again with model.save(...).")
    try:
        return keras.models.load_model(path, compile=False)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{what} {path!r} is damaged ({str(error).splitlines()[0]}); save the "
                         "model again with model.save(...).") from None


@functools.lru_cache(maxsize=4)
def _load_file(path, modified_ns):
    del modified_ns  # part of the cache key: a rewritten file is loaded again
    return read_model(path, "backbone file")


def load_model_file(path):
    """The Keras model in `path` (cached per process; uncompiled).

    Example:
      load_model_file("mine/classifier.keras").input_shape  # (None, 32, 32, 3)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone file {path!r} does not exist; give the .keras file "
                                "of your classifier or feature extractor.")
    return _load_file(os.path.abspath(path), os.stat(path).st_mtime_ns)


def model_file_input_shape(path):
    """(H, W, C) of the images the model in `path` takes.

    Example:
      model_file_input_shape("mine/classifier.keras")  # (32, 32, 3)
    """
    model = load_model_file(path)
    try:
        shape = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):
        shape = tuple(((model.get_build_config() or {}).get("input_shape") or [None])[1:])
    if len(shape) != 3 or not all(shape):
        raise ValueError(f"backbone file {path!r} takes inputs of shape {shape}; a backbone takes "
                         "images (H, W, C) of a fixed size.")
    return tuple(int(d) for d in shape)

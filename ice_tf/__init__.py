"""ice-tf: In-distribution Compatible outlier Exposure (ICE) for TensorFlow/Keras.

Submodules:
  layers     GaussianLayer (Eq. 0.11) and head factories.
  losses     ce, oe, energy, bce, ice (Eq. 0.15), ice_minus; a name registry.
  scores     msp, max_logit, energy, ice; higher means more in-distribution.
  metrics    AUROC, AUPR-In/Out, FPR95 under both conventions.
  models     OODModel: one training loop for every method.
  backbones  wrn40_2, wrn34_10, densenet40_12, small_cnn.
  export     SavedModel export with probabilities, confidence and score.
  distribute Strategy selection and replica-aware helpers.
"""

__version__ = "0.1.0"

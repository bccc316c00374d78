"""Offline training (``vigil train``): :mod:`vigil.training.data` (loading, patient split),
:mod:`vigil.training.models` (Keras families), :mod:`vigil.training.trainer` (fit, ONNX export with a
parity check, threshold, model card). TensorFlow is imported only inside the trainer's functions, so
serving code never pays for (or needs) the training stack."""

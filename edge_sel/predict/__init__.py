"""Predicting with a deployed model where a device uses it: frame by frame or in batches, each image
with the BatchNorm statistics of its own condition, in torch or ONNX Runtime. Imports models, core
and data; never the training loop."""

"""Running the shipped model without TensorFlow: the predictor (numpy, Pillow, onnxruntime only)."""

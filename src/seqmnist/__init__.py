"""seqmnist: MNIST as sequences of rows, trained, versioned, scheduled and shipped as ONNX."""

__version__ = "0.1.0"

"""The shipped ONNX model: its interface and metadata, conversion, streamlining and model card."""

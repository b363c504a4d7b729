"""Facts shared by the pipeline and the predictor, with no third-party imports."""

PIXEL_MAX = 255  # MNIST pixels are uint8; the model reads pixel / PIXEL_MAX, in [0, 1]
PIXEL_LEVELS = PIXEL_MAX + 1
NUM_CLASSES = 10
GZIP_MAGIC = b"\x1f\x8b"
# onnxruntime everywhere seqmnist runs a model: CPU only, so results match across machines.
ORT_PROVIDERS = ("CPUExecutionProvider",)
PREDICT_BATCH_SIZE = 256  # images per onnxruntime call in `seqmnist predict`

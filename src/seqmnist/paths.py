"""Where each stage reads and writes, relative to the project root (the folder holding dvc.yaml).

dvc.yaml declares the same paths; tests/test_layout.py checks that the two agree.
"""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
# The Prefect flow, as prefect.yaml names it and `seqmnist flow` loads it.
FLOW_ENTRYPOINT = "flows/pipeline.py:seqmnist_pipeline"
SWEEP_ENTRYPOINT = "flows/sweep.py:seqmnist_sweep"

RAW_DIR = Path("data/raw")
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
PROCESSED_DIR = Path("data/processed")
DATA_STATS = Path("metrics/data.json")

KERAS_DIR = Path("models/keras")
KERAS_MODEL = KERAS_DIR / "model.keras"
MODEL_INFO = KERAS_DIR / "model_info.json"
TRAIN_LIVE_DIR = Path("dvclive/train")
TRAIN_CHECKPOINT_DIR = Path("checkpoints/train")

EVAL_METRICS = Path("metrics/evaluate.json")
CONFUSION_CSV = Path("plots/confusion.csv")
MISCLASSIFIED_PNG = Path("plots/misclassified.png")
PER_CLASS_CSV = Path("plots/per_class.csv")

ONNX_DIR = Path("models/onnx")
ONNX_MODEL = ONNX_DIR / "model.onnx"
ONNX_INT8_MODEL = ONNX_DIR / "model.int8.onnx"
MODEL_CARD = ONNX_DIR / "MODEL_CARD.md"
EXPORT_METRICS = Path("metrics/export.json")
EXPORT_REPORT = ONNX_DIR / "export_report.json"

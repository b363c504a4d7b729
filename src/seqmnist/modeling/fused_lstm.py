"""A Keras LSTM layer for training on CPU, backed by our whole-sequence C++ kernel.

Same function, weights and initialisers as `keras.layers.LSTM` (gate order i, f, c, o), or as
`keras.layers.Bidirectional` around it, so a model trained with it is copied weight for weight into
Keras's own layers for saving and ONNX export.
The kernel (kernels/lstm_sequence.cc) is compiled for this CPU and this TensorFlow on first use
and kept in the environment; bench/README.md says what it buys.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from seqmnist.errors import KernelBuildError

SOURCE = Path(__file__).with_name("kernels") / "lstm_sequence.cc"
KERNEL_DIR_ENV = "SEQMNIST_KERNEL_DIR"
COMPILER_ENV = "CXX"
# Built for a fixed x86-64 ISA level chosen from the CPU at run time, not -march=native: every
# CPU of one level runs the same kernel instructions (an Intel Xeon and an AMD EPYC are both
# x86-64-v4; TensorFlow's own ops around the kernel still pick per-CPU code paths, so trained
# bytes differ between them); native builds also failed on CPUs with AVX512-FP16 (Eigen's FP16
# packet code does not compile under g++ 12). Eigen's products still use AVX-512 at level v4.
OPTIMIZE_FLAGS = ("-O3", "-shared", "-fPIC", "-Wno-deprecated-declarations")
ISA_LEVELS = (
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
    ("x86-64-v3", frozenset({"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"})),
    ("x86-64-v2", frozenset({"sse4_2", "popcnt", "ssse3"})),
)
BUILD_TIMEOUT_S = 600
# How each direction reads time, and the prefix of its weights' names: Keras's LSTM, then the
# backward copy keras.layers.Bidirectional adds (its weights come second, as in Keras).
FORWARD = ("", False)
BACKWARD = ("backward_", True)


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def isa_flags(cpu_flags: frozenset[str]) -> list[str]:
    """`-march=` for the highest x86-64 level this CPU has; elsewhere the compiler default."""
    if platform.machine() not in {"x86_64", "AMD64"}:
        return []
    for level, needs in ISA_LEVELS:
        if needs <= cpu_flags:
            return [f"-march={level}"]
    return []


def _build_command(compiler: str, output: Path) -> list[str]:
    return [
        *shlex.split(compiler),
        *OPTIMIZE_FLAGS,
        *isa_flags(_cpu_flags()),
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE),
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
    ]


def kernel_path(compiler: str | None = None) -> Path:
    """Where the build for this source, TensorFlow, compiler and CPU lives (built if missing).

    Keyed on the source's text, not where it lies: clones of the project (bench/recipes.py,
    tests' copies) share one build instead of compiling for half a minute each."""
    compiler = compiler or os.environ.get(COMPILER_ENV, "g++")
    command = [
        SOURCE.name if arg == str(SOURCE) else arg for arg in _build_command(compiler, Path())
    ]
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), tf.__version__, " ".join(command)]).encode()
    ).hexdigest()[:16]
    root = Path(
        os.environ.get(KERNEL_DIR_ENV) or Path(sys.prefix) / "share" / "seqmnist" / "kernels"
    )
    target = root / key / "lstm_sequence.so"
    if not target.is_file():
        _compile(compiler, target)
    return target


def _compile(compiler: str, target: Path) -> None:
    """Compile into a temp file beside the target, then rename: never a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    command = _build_command(compiler, partial)
    hint = "(or set train.lstm_backend: keras in params.yaml to train with Keras's own LSTM)"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        partial.unlink(missing_ok=True)
        raise KernelBuildError(
            f"cannot compile {SOURCE} with {compiler!r}: {error}; install a C++17 compiler "
            f"or name one in ${COMPILER_ENV} {hint}"
        ) from error
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        errors = [line for line in result.stderr.splitlines() if "error" in line][:5]
        raise KernelBuildError(
            f"compiling {SOURCE} failed (exit {result.returncode}): "
            + ("; ".join(errors) or result.stderr[-500:])
            + f" {hint}"
        )
    partial.replace(target)


@functools.cache
def _ops():
    path = kernel_path()
    try:
        return tf.load_op_library(str(path))
    except tf.errors.NotFoundError as error:
        raise KernelBuildError(f"cannot load {path}: {error.message}") from error


@tf.RegisterGradient("SeqmnistLstmSequence")
def _lstm_sequence_gradient(op, dh, _dc, _dgates):
    """Only h leaves the layer; c and the gate activations are kept for this backward pass."""
    x, kernel, recurrent_kernel, _bias = op.inputs
    h, c, gates = op.outputs
    input_gradient = op.get_attr("input_gradient")
    dx, dkernel, drecurrent_kernel, dbias = _ops().seqmnist_lstm_sequence_grad(
        x=x,
        kernel=kernel,
        recurrent_kernel=recurrent_kernel,
        h=h,
        c=c,
        gates=gates,
        dh=dh,
        input_gradient=input_gradient,
        reverse=op.get_attr("reverse"),
    )
    return dx if input_gradient else None, dkernel, drecurrent_kernel, dbias


@dataclass(frozen=True)
class Direction:
    """One direction's weights, in keras.layers.LSTM's order, and the way it reads time."""

    kernel: keras.Variable  # [features, 4 * units]
    recurrent_kernel: keras.Variable  # [units, 4 * units]
    bias: keras.Variable  # [4 * units]
    reverse: bool  # reads from the last time step to the first

    @property
    def last_read(self) -> int:
        """The time index read last: what Keras returns when not returning sequences."""
        return 0 if self.reverse else -1


@keras.saving.register_keras_serializable(package="seqmnist")
class FusedLSTM(layers.Layer):
    """`keras.layers.LSTM(units, return_sequences=...)` with its defaults, trained by our kernel,
    optionally preceded by `keras.layers.Dense(input_projection)` (weights in that order).

    `bidirectional=True` makes it `keras.layers.Bidirectional(that LSTM)` (merge_mode concat):
    a second direction with weights of its own reads time backwards; per time step, or for the
    last step only, its output follows the forward one's. Without sequences that is the forward
    direction's output at the last time step and the backward one's at the first, the last it
    reads, as Keras returns it. Both directions read the same projection.

    The projection is folded into the LSTM's input weights for each step's computation:
    rows @ (P @ W) + (b_P @ W + b) is (rows @ P + b_P) @ W + b, with the products over 28
    features instead of 128 and no projected sequence to write, or to take the gradient of.

    `input_gradient=False` skips the gradient of the layer's input, for a layer fed by the
    model's input (data, never trained): a product over every time step saved.

    Shapes: [batch, time, features] -> [batch, time, directions * units] or, for the last step
    only, [batch, directions * units].
    """

    def __init__(
        self,
        units: int,
        return_sequences: bool = False,
        input_projection: int | None = None,
        input_gradient: bool = True,
        bidirectional: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.return_sequences = return_sequences
        self.input_projection = input_projection
        self.input_gradient = input_gradient
        self.bidirectional = bidirectional
        self._direction_specs = (FORWARD, BACKWARD) if bidirectional else (FORWARD,)
        _ops()  # compile or load now: a build error surfaces when the model is built

    def build(self, input_shape) -> None:
        features = input_shape[-1]
        gates = 4 * self.units
        if self.input_projection:
            self.projection_kernel = self.add_weight(
                shape=(features, self.input_projection),
                initializer="glorot_uniform",
                name="projection_kernel",
            )
            self.projection_bias = self.add_weight(
                shape=(self.input_projection,), initializer="zeros", name="projection_bias"
            )
            features = self.input_projection
        self.directions = [
            Direction(
                kernel=self.add_weight(
                    shape=(features, gates), initializer="glorot_uniform", name=f"{prefix}kernel"
                ),
                recurrent_kernel=self.add_weight(
                    shape=(self.units, gates),
                    initializer="orthogonal",
                    name=f"{prefix}recurrent_kernel",
                ),
                bias=self.add_weight(
                    shape=(gates,), initializer=self._unit_forget_bias, name=f"{prefix}bias"
                ),
                reverse=reverse,
            )
            for prefix, reverse in self._direction_specs
        ]

    def _unit_forget_bias(self, shape, dtype=None):
        """Keras's LSTM default: forget gate bias 1, the others 0."""
        units = self.units
        return tf.concat(
            [tf.zeros([units], dtype), tf.ones([units], dtype), tf.zeros([2 * units], dtype)], 0
        )

    def call(self, rows):
        outputs = [self._read(rows, direction) for direction in self.directions]
        return outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=-1)

    def _read(self, rows, direction: Direction):
        """One direction over the whole sequence: h [batch, time, units], or the step it
        read last [batch, units]."""
        kernel, bias = direction.kernel, direction.bias
        if self.input_projection:
            bias = tf.linalg.matvec(kernel, self.projection_bias, transpose_a=True) + bias
            kernel = tf.matmul(self.projection_kernel, kernel)  # [features, 4 * units]
        h, _c, _gates = _ops().seqmnist_lstm_sequence(
            x=rows,
            kernel=kernel,
            recurrent_kernel=direction.recurrent_kernel,
            bias=bias,
            input_gradient=self.input_gradient,
            reverse=direction.reverse,
        )
        return h if self.return_sequences else h[:, direction.last_read, :]

    def compute_output_shape(self, input_shape):
        width = len(self._direction_specs) * self.units
        if self.return_sequences:
            return (*input_shape[:2], width)
        return (input_shape[0], width)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "return_sequences": self.return_sequences,
            "input_projection": self.input_projection,
            "input_gradient": self.input_gradient,
            "bidirectional": self.bidirectional,
        }

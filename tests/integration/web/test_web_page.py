"""The shipped model in a browser (issue 16): the page of web/ in real Chromium, against Python.

The same model runs in onnxruntime-web (WASM) and in Python's onnxruntime; the same pictures go
through the page's framing (web/src/framing.ts) and `seqmnist predict`'s loader; digits are
drawn with real mouse moves. Fixtures (conftest.py) build the page, train the model and start
the server and the browser.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from integration.web.web_driver import Browser, base64_to_floats, floats_to_base64, serving
from integration.web.web_images import (
    Placement,
    as_jpeg,
    photo_like,
    png_bytes,
    relocated,
    render_strokes,
    strokes,
    transparent,
)
from seqmnist.onnx import metadata as onnx_meta
from seqmnist.serving import framing
from seqmnist.serving.predict import Predictor, load_inputs
from support.project import PROJECT_ROOT

pytestmark = pytest.mark.slow

PARITY_IMAGES = 1000
PROBABILITY_ATOL = 1e-5
# Both framings compute the same exact integer sums and the same final division, so the inputs
# should be bit-identical; this bound allows one float32 rounding step, no more.
INPUT_ATOL = 1e-7
RELOCATED_IMAGES = 1000
RELOCATED_SCALES = (0.75, 4.0)  # the digit's 28x28 frame becomes 21 to 112 pixels
ACCURACY_SLACK = 0.015
PAGE_SAMPLE = 100
SEED = 16
PAD_SIZE = 280
BRUSH_WIDTH = 22  # web/src/pad.ts
DRAWN_PLACEMENTS = (
    Placement(left=20, top=15, scale=8.5),  # big, filling the pad
    Placement(left=125, top=110, scale=5.0),  # medium, bottom right
    Placement(left=0, top=150, scale=4.4),  # small, bottom left
)
DRAWABLE_CONFIDENCE = 0.9
ARTIFACTS = Path(__file__).parent / "artifacts"


def image_payload(name: str, data: bytes) -> dict[str, str]:
    return {"name": name, "data": base64.b64encode(data).decode()}


def page_inputs(results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The page's framed inputs [N, 28, 28] and probabilities [N, 10], from classify_images."""
    errors = [result["error"] for result in results if "error" in result]
    assert not errors, errors
    inputs = np.stack([base64_to_floats(result["input"]).reshape(28, 28) for result in results])
    return inputs, np.stack([base64_to_floats(result["probabilities"]) for result in results])


def test_page_matches_python_onnxruntime_on_1000_test_images(
    page: Browser, predictor: Predictor, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = mnist_test
    x = (images[:PARITY_IMAGES] / 255).astype(np.float32)  # [N, 28, 28], as preprocess makes it
    web = base64_to_floats(page.call("classify_rows", rows=floats_to_base64(x), n=len(x)))
    web = web.reshape(len(x), -1)
    python = predictor.predict(x)
    same = int((web.argmax(axis=1) == python.argmax(axis=1)).sum())
    max_diff = float(np.abs(web - python).max())
    print(f"\nparity on {len(x)} test images: same argmax {same}/{len(x)}, max |dp| {max_diff:.3g}")
    assert same == len(x)
    assert max_diff <= PROBABILITY_ATOL


def test_page_loads_everything_from_its_own_server(page: Browser, page_url: str) -> None:
    """No CDN: the WASM binary comes from the app, and nothing fails to load."""
    log = page.call("log")
    assert all(url.startswith(page_url) for url in log["requests"]), log["requests"]
    assert any(url.endswith(".wasm") for url in log["requests"]), log["requests"]
    assert f"{page_url}model.onnx" in log["requests"]
    assert log["console_errors"] == []


def _pictures(images: np.ndarray, rng: np.random.Generator) -> list[tuple[str, bytes, bool]]:
    """(name, file, dark on light): drawn strokes, photos of paper, transparent and small digits."""
    pictures = []
    for index in range(8):
        placement = Placement(*rng.uniform(0, 60, 2), scale=rng.uniform(4, 8))
        drawing = render_strokes(strokes(images[index]), PAD_SIZE, placement, BRUSH_WIDTH)
        pictures.append((f"strokes-{index}.png", png_bytes(drawing), False))
    pictures += [(f"photo-{i}.png", photo_like(images[8 + i], rng), True) for i in range(8)]
    # JPEGs too: Pillow and Chromium both decode them with libjpeg-turbo's defaults.
    pictures += [(f"photo-{i}.jpg", as_jpeg(photo_like(images[i], rng)), True) for i in range(4)]
    pictures += [
        (f"transparent-{i}.png", transparent(images[16 + i], rng), False) for i in range(4)
    ]
    pictures += [
        (f"small-{i}.png", relocated(images[20 + i], rng, (0.4, 0.7)), False) for i in range(4)
    ]
    return pictures


def test_same_preprocessing_as_seqmnist_predict(
    page: Browser, mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    pictures = _pictures(mnist_test[0], np.random.default_rng(SEED))
    diffs = {}
    for dark_on_light in (False, True):
        chosen = [(name, data) for name, data, dark in pictures if dark == dark_on_light]
        payload = [image_payload(name, data) for name, data in chosen]
        web, _ = page_inputs(
            page.call("classify_images", images=payload, dark_on_light=dark_on_light)
        )
        for (name, data), web_input in zip(chosen, web, strict=True):
            path = tmp_path / name
            path.write_bytes(data)
            python = load_inputs(path, 28, 28, dark_on_light=dark_on_light)[0]
            diffs[name] = float(np.abs(web_input - python).max())
    worst = max(diffs, key=diffs.get)
    print(
        f"\npreprocessing: max |x_web - x_python| over {len(diffs)} pictures = {diffs[worst]:.3g}"
    )
    assert diffs[worst] <= INPUT_ATOL, diffs

    # The same through the page's own file input, as a person uploads a photo.
    name, data, _ = next(picture for picture in pictures if picture[2])
    uploaded = page.call("upload", path=str(tmp_path / name), dark_on_light=True)
    assert uploaded["state"]["error"] is None, uploaded["state"]
    python = load_inputs(tmp_path / name, 28, 28, dark_on_light=True)[0]
    web_input = base64_to_floats(uploaded["prediction"]["input"]).reshape(28, 28)
    assert float(np.abs(web_input - python).max()) <= INPUT_ATOL


def _drawable(
    images: np.ndarray, labels: np.ndarray, predictor: Predictor
) -> list[tuple[int, list]]:
    """One test digit per class whose strokes, rendered at every placement, Python reads right.

    The page must then read the same strokes drawn with the mouse right too: what is tested is
    the drawing pad and the page's pipeline, not the model's accuracy on redrawn digits.
    """
    chosen = []
    for digit in range(10):
        for index in np.flatnonzero(labels == digit):
            paths = strokes(images[index])
            framed = np.stack(
                [
                    framing.frame_gray(np.asarray(render_strokes(paths, PAD_SIZE, p, BRUSH_WIDTH)))
                    for p in DRAWN_PLACEMENTS
                ]
            )
            probabilities = predictor.predict(framed)[:, digit]
            if probabilities.min() >= DRAWABLE_CONFIDENCE:
                chosen.append((digit, paths))
                break
    return chosen


def test_digits_drawn_with_the_mouse_anywhere_at_any_size(
    page: Browser, predictor: Predictor, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    chosen = _drawable(*mnist_test, predictor)
    assert len(chosen) == 10
    read = {}
    for digit, paths in chosen:
        for number, placement in enumerate(DRAWN_PLACEMENTS):
            drawn = [placement.place(path) for path in paths]
            prediction = page.call("draw", strokes=drawn)
            read[(digit, number)] = prediction and prediction["label"]
    wrong = {key: label for key, label in read.items() if label != str(key[0])}
    print(f"\ndrawn with the mouse: {len(read) - len(wrong)}/{len(read)} read right {wrong or ''}")
    assert not wrong


def test_relocated_digits_read_as_well_as_the_originals(
    page: Browser, predictor: Predictor, mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Test digits at 0.75x-4x anywhere in a bigger picture, framed, vs the MNIST originals."""
    images, labels = mnist_test[0][:RELOCATED_IMAGES], mnist_test[1][:RELOCATED_IMAGES]
    rng = np.random.default_rng(SEED)
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / f"relocated-{index}.png"
        path.write_bytes(relocated(image, rng, RELOCATED_SCALES))
        paths.append(path)
    framed = np.concatenate([load_inputs(path, 28, 28) for path in paths])
    plain = np.concatenate([load_inputs(path, 28, 28, frame=False) for path in paths])
    python = predictor.predict(framed)
    accuracy = {
        "MNIST originals": float((predictor.predict(images / 255).argmax(1) == labels).mean()),
        "relocated, framed": float((python.argmax(1) == labels).mean()),
        "relocated, --no-frame": float((predictor.predict(plain).argmax(1) == labels).mean()),
    }
    payload = [image_payload(path.name, path.read_bytes()) for path in paths[:PAGE_SAMPLE]]
    web_inputs, web = page_inputs(page.call("classify_images", images=payload, dark_on_light=False))
    agree = int((web.argmax(1) == python[:PAGE_SAMPLE].argmax(1)).sum())
    accuracy["page, first 100 relocated"] = float((web.argmax(1) == labels[:PAGE_SAMPLE]).mean())
    print("\n" + "\n".join(f"  accuracy, {name}: {value:.3f}" for name, value in accuracy.items()))
    print(f"  page agrees with Python on {agree}/{PAGE_SAMPLE} relocated pictures")
    assert abs(accuracy["relocated, framed"] - accuracy["MNIST originals"]) <= ACCURACY_SLACK
    assert agree == PAGE_SAMPLE
    assert float(np.abs(web_inputs - framed[:PAGE_SAMPLE]).max()) <= INPUT_ATOL


@pytest.mark.parametrize("case", ["text", "truncated", "missing"])
def test_a_bad_model_file_shows_a_readable_error(
    case: str, browser: Browser, web_dist: Path, trained_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.onnx"
    if case == "text":
        model.write_text("definitely not an ONNX model\n")
    elif case == "truncated":
        whole = trained_model.read_bytes()
        model.write_bytes(whole[: len(whole) // 2])
    with serving(web_dist, model) as url:
        outcome = browser.open(url)
        state = browser.call("state")
    assert not outcome["ready"]
    expected = "404" if case == "missing" else "not a readable ONNX model"
    assert "model.onnx" in outcome["error"] and expected in outcome["error"], outcome
    assert state["error"] == outcome["error"], "the page shows the same message"
    assert state["bars"] == 10, "the page is still there, not blank"


def test_an_unreadable_or_blank_picture_shows_a_readable_error(
    page: Browser, mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("this is not an image\n")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (90, 60), (20, 20, 20)).save(blank)
    photo = tmp_path / "photo.png"
    photo.write_bytes(photo_like(mnist_test[0][0], np.random.default_rng(SEED)))
    expected = {
        broken: "broken.png: not a readable image",
        blank: "blank.png: no digit found",
        photo: "photo.png: no digit found",  # dark on light, box left unticked
    }
    for path, words in expected.items():
        state = page.call("upload", path=str(path), dark_on_light=False)["state"]
        assert state["error"] and words in state["error"], state
    assert "dark digit on light background" in state["error"]


def test_screenshot_after_a_prediction(
    page: Browser, predictor: Predictor, mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    digit, paths = _drawable(*mnist_test, predictor)[3]
    prediction = page.call("draw", strokes=[DRAWN_PLACEMENTS[0].place(path) for path in paths])
    state = page.call("state")
    assert prediction["label"] == state["digit"] == str(digit)
    assert "ms" in state["timing"] and any("test accuracy" in fact for fact in state["facts"])
    model = predictor.metadata[onnx_meta.META_PARAMS]["train"]["model"]  # as the page reads it
    shape = f"{model['cell'].upper()}, {model['units']} units, {model['layers']} layer(s)"
    named = f"bidirectional {shape}" if model["bidirectional"] else shape
    assert named in state["facts"], state["facts"]
    shot = Path(page.call("screenshot", path=str(tmp_path / "web-demo.png")))
    assert shot.stat().st_size > 0
    print(f"\nscreenshot: {shot}")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(ARTIFACTS / shot.name)], cwd=PROJECT_ROOT
    )
    if ignored.returncode == 0:
        ARTIFACTS.mkdir(exist_ok=True)
        print(f"screenshot copied to {shutil.copy(shot, ARTIFACTS / shot.name)}")


def _with_framing(trained_model: Path, dest: Path, **changes: object) -> Path:
    """A copy of the model whose preprocessing metadata states other framing constants."""
    import onnx

    model = onnx.load(trained_model)
    for prop in model.metadata_props:
        if prop.key == onnx_meta.META_PREPROCESSING:
            spec = json.loads(prop.value)
            spec["framing"].update(changes)
            prop.value = json.dumps(spec)
    onnx.save(model, dest)
    return dest


def test_framing_constants_come_from_the_model_metadata(
    browser: Browser, web_dist: Path, trained_model: Path, tmp_path: Path
) -> None:
    tall_bar = np.zeros((120, 60), np.uint8)
    tall_bar[10:110, 25:35] = 255
    payload = [image_payload("bar.png", png_bytes(Image.fromarray(tall_bar)))]
    smaller_box = _with_framing(trained_model, tmp_path / "box14.onnx", box_size=14)
    with serving(web_dist, smaller_box) as url:
        assert browser.open(url)["ready"]
        inputs, _ = page_inputs(
            browser.call("classify_images", images=payload, dark_on_light=False)
        )
    assert np.count_nonzero(inputs[0].any(axis=1)) == 14
    unknown = _with_framing(trained_model, tmp_path / "lanczos.onnx", resampling="lanczos")
    with serving(web_dist, unknown) as url:
        outcome = browser.open(url)
    assert not outcome["ready"] and 'resampling "lanczos"' in outcome["error"], outcome

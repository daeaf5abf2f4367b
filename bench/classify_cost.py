"""CPU the classifier spends per image, by image size and format (issue #11).

    python bench/classify_cost.py                   # the table: ms of CPU per image, this tree
    python bench/classify_cost.py --baseline HEAD   # the same, with the classifier of a git revision beside it
    python bench/classify_cost.py --reps 50         # more repetitions (default 10)

Images: scikit-image's coffee, astronaut, camera and chelsea, cropped to the target's aspect ratio (so a face
stays a face) and resized to 128x96, 1024x768 and 1920x1080, each as PNG and as JPEG (quality 90); then
the labelled images the classifier's tests use, at their own size. Per image and classifier: the category,
`classify` = `classify(image)` on the decoded image (the analysis alone) and `bytes` =
`classify_bytes(data)`, the classifier stage's work per task, decoding included; `scan` is the part of
`classify` the face scan takes ("-" where the text or flat-art rule decides first, so it never runs).
Each is time.process_time() over --reps calls after one warm-up call, in this one thread (numpy's and
OpenMP's pools are held to one thread: the figure is what one task costs, not spread over helpers). The
baseline runs in the same process, interleaved, so a busy machine slows both alike.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy is imported: its pools size themselves at import

import argparse  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/classify_cost.py`: make services/ importable
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from services.classifier import classify as rules  # noqa: E402
from services.classifier import faces, features  # noqa: E402
from services.classifier.classify import classify  # noqa: E402
from services.classifier.worker import classify_bytes  # noqa: E402
from shared.images import open_image  # noqa: E402
from shared.messages import Classification  # noqa: E402

Classifier = tuple[Callable[[Image.Image], Classification], Callable[[bytes], Classification]]

SAMPLES = ("coffee.png", "astronaut.png", "camera.png", "chelsea.png")
SIZES = ((128, 96), (1024, 768), (1920, 1080))
SHARED = ROOT.parent / "shared" / "images"
LABELLED = (
    [("skimage", n) for n in ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "page.png", "text.png")]
    + [("shared", n) for n in ("00017_gray.png", "children-alpha.png", "OST_009.png", "00003.png", "wolf_gray.jpg")]
    + [("shared", n) for n in ("tree_alpha_16bit.png", "pairs/baboon_hr.png", "pairs/comic_hr.png", "0014.jpg")]
    + [("shared", "0030.jpg")]
)


def classifier_at(revision: str) -> Classifier:
    """(classify, classify_bytes) as they were at `revision`, importable beside the current ones.

    classify_bytes there is taken to be open_image + classify, as it was before JPEGs were decoded in
    draft mode (worker.py).
    """
    package = "classifier_at_" + "".join(c if c.isalnum() else "_" for c in revision)
    folder = Path(tempfile.mkdtemp()) / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("classify.py", "features.py", "faces.py", "filters.py"):
        shown = subprocess.run(
            ["git", "show", f"{revision}:services/classifier/{name}"], cwd=ROOT, check=False, capture_output=True
        )
        if shown.returncode != 0:  # filters.py and faces.py are younger than some revisions worth comparing with
            continue
        text = shown.stdout.decode()
        text = text.replace("from services.classifier import", f"from {package} import")
        (folder / name).write_text(text.replace("from services.classifier.", f"from {package}."))
    sys.path.insert(0, str(folder.parent))
    module = importlib.import_module(f"{package}.classify")
    return module.classify, lambda data: module.classify(open_image(data))


def images() -> Iterator[tuple[str, str, bytes]]:
    """(name, format, encoded bytes) of every benchmark image."""
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    for name in SAMPLES:
        with Image.open(data_dir / name) as source:
            base = source.convert("RGB")
        for size in SIZES:
            picture = _fit(base, size)
            for fmt in ("PNG", "JPEG"):
                yield f"{name.split('.')[0]} {size[0]}x{size[1]}", fmt, _encode(picture, fmt)
    for where, name in LABELLED:
        path = (data_dir if where == "skimage" else SHARED) / name
        if path.is_file():
            with Image.open(path) as labelled:
                size = labelled.size
            yield f"{name} {size[0]}x{size[1]}", (labelled.format or "?"), path.read_bytes()


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` cropped to the aspect ratio of `size` (centred) and resized to it."""
    width, height = image.size
    target = size[0] / size[1]
    if width / height > target:
        crop = round(height * target)
        box = ((width - crop) // 2, 0, (width + crop) // 2, height)
    else:
        crop = round(width / target)
        box = (0, (height - crop) // 2, width, (height + crop) // 2)
    return image.crop(box).resize(size, Image.Resampling.BICUBIC)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def cpu_ms(call: Callable[[], object], reps: int) -> float:
    """Mean CPU ms of one call, after a warm-up call."""
    call()
    start = time.process_time()
    for _ in range(reps):
        call()
    return (time.process_time() - start) * 1e3 / reps


def measure(classifier: Classifier, data: bytes, reps: int) -> tuple[str, float, float]:
    """(category, classify ms, decode + classify ms) for one classifier."""
    of_image, of_bytes = classifier
    decoded = open_image(data)
    category = of_bytes(data).category.value
    return category, cpu_ms(lambda: of_image(decoded), reps), cpu_ms(lambda: of_bytes(data), reps)


def scan_ms(data: bytes, reps: int) -> float | None:
    """CPU ms of the face scan alone on this image's analysis copy; None when the rules stop before it."""
    image = open_image(data)
    if classify(image).category.value not in ("portrait", "photo") or min(image.size) < rules.MIN_FACE_SCAN_SIDE_PX:
        return None
    copy = features.sample(image, features.oriented_size(image)[2], rules.ANALYSIS_MAX_SIDE_PX)
    return cpu_ms(
        lambda: faces.largest_face(copy, rules.FACE_SHORT_SIDE_PX, rules.FACE_MAX_LONG_SIDE_PX, rules.MIN_FACE_SHARE),
        reps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10, help="calls per measurement (default 10)")
    parser.add_argument("--baseline", metavar="REV", help="also measure the classifier at this git revision")
    args = parser.parse_args()
    columns: list[tuple[str, Classifier]] = [("now", (classify, classify_bytes))]
    if args.baseline:
        columns.append((args.baseline, classifier_at(args.baseline)))
    header = f"{'image':32s} {'fmt':4s} {'scan':>5s}"
    for label, _ in columns:
        header += f" | {label[:10]:>10s}: {'category':8s} {'classify':>8s} {'bytes':>7s}"
    print(f"CPU ms per image (time.process_time, {args.reps} calls each, one thread)")
    print(header)
    for name, fmt, data in images():
        scan = scan_ms(data, args.reps)
        row = f"{name:32s} {fmt:4s} {'-' if scan is None else f'{scan:.1f}':>5s}"
        for _, classifier in columns:
            category, analysis_ms, total_ms = measure(classifier, data, args.reps)
            row += f" | {'':>10s}  {category:8s} {analysis_ms:8.1f} {total_ms:7.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()

"""stisr-sr on real files: geometry kept at any size, transparency, gray, names that never collide, exit codes."""

import contextlib
import io
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import REPO
from PIL import Image, ImageDraw, ImageFont

from stisr_lightning.cli.super_resolve import main
from stisr_lightning.data.synthetic import discover_fonts
from stisr_lightning.data.tiling import blend_weights, flatten_alpha, super_resolve_tiled, window_starts

BICUBIC = ("none", "--config", str(REPO / "experiments" / "bicubic.yaml"))


def stisr_sr(*args: str) -> types.SimpleNamespace:
    """The command in this process (its imports are what takes time in a subprocess): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(list(args))
    return types.SimpleNamespace(returncode=exit_.value.code, stdout=out.getvalue(), stderr=err.getvalue())


def render(text: str, size: tuple[int, int], font_size: int, mode: str = "RGB", ink=(20, 20, 20), paper=(235, 235, 235)):
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(next(f for f in discover_fonts() if f.endswith("DejaVuSans-Bold.ttf")), font_size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - right - left) // 2, (size[1] - bottom - top) // 2), text, font=font, fill=ink)
    return image


@pytest.mark.parametrize("width", [1, 63, 64, 65, 100, 700])
def test_windows_cover_the_width_with_the_overlap(width):
    starts = window_starts(width, 64, 16)
    assert starts[0] == 0 and (starts[-1] + 64 == width if width >= 64 else starts == [0])
    assert all(later - earlier <= 64 - 16 for earlier, later in zip(starts, starts[1:]))


def test_blend_weights_of_two_overlapping_windows_sum_to_one():
    first, second = blend_weights([0, 48], window=64, scale=2)
    shared = first[96:] + second[:32]
    assert torch.allclose(shared, torch.ones(32)) and first[:96].eq(1).all() and second[32:].eq(1).all()


@pytest.mark.parametrize("size", [(1, 1), (16, 64), (16, 300), (40, 70), (3, 200)])
def test_tiles_of_a_local_model_stitch_into_the_whole_image_result(size):
    """Nearest x2 upsampling acts on each pixel alone, so tiling must reproduce it exactly, seams and padding included."""
    image = torch.rand(4, *size, generator=torch.Generator().manual_seed(0))
    calls = []

    def model(windows):
        calls.append(windows.shape)
        return F.interpolate(windows, scale_factor=2, mode="nearest")[:, :3]

    out = super_resolve_tiled(model, image, window=(16, 64), batch_size=5)
    torch.testing.assert_close(out, F.interpolate(image[None, :3], scale_factor=2, mode="nearest")[0])
    assert all(shape[1:] == (4, 16, 64) and shape[0] <= 5 for shape in calls)


@pytest.mark.parametrize("ink, expected_paper", [((0, 0, 0, 255), 255), ((255, 255, 255, 255), 0)])
def test_transparent_background_becomes_the_colour_that_keeps_the_text_visible(ink, expected_paper):
    image = render("Alpha", (90, 24), 16, mode="RGBA", ink=ink, paper=(0, 0, 0, 0))
    flat = np.asarray(flatten_alpha(image).convert("L"))
    assert flat[0, 0] == expected_paper
    assert np.abs(flat.astype(int) - expected_paper).max() > 200  # the glyphs differ from the paper


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    (folder / "sub").mkdir()
    render("BIG", (2000, 3000), 700).save(folder / "big.png")
    render("WHEELCHAIR", (150, 24), 18).save(folder / "wheelchair.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "dot.png")
    render("x", (8, 200), 8).save(folder / "tall_8x200.png")
    render("ab", (200, 8), 8).save(folder / "long_200x8.png")
    render("x", (64, 16), 12).save(folder / "lr_64x16.png")
    render("Alpha", (90, 24), 16, mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0)).save(folder / "alpha.png")
    render("Gray", (70, 24), 16, mode="L", ink=30, paper=220).save(folder / "gray.png")
    for name in ("x.png", "x.jpg", "sub/x.png"):
        render("Lockers", (60, 20), 14).save(folder / name)
    (folder / "notes.png").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def bicubic_run(crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr") / "out"
    result = stisr_sr(*BICUBIC, str(crops), str(crops / "missing.png"),
                         "-o", str(out))
    return result, out


def test_every_output_is_twice_its_input_and_nothing_is_overwritten(crops, bicubic_run):
    result, out = bicubic_run
    sizes = {p.relative_to(out).as_posix(): Image.open(p).size for p in out.rglob("*.png")}
    assert sizes == {"big.png": (4000, 6000), "wheelchair.png": (300, 48), "dot.png": (2, 2),
                     "tall_8x200.png": (16, 400), "long_200x8.png": (400, 16), "lr_64x16.png": (128, 32),
                     "alpha.png": (180, 48), "gray.png": (140, 48), "x.png": (120, 40), "x.jpg.png": (120, 40),
                     "sub/x.png": (120, 40)}
    assert Image.open(out / "gray.png").mode == "L"
    assert np.asarray(Image.open(out / "alpha.png").convert("L"))[0, 0] > 200  # dark text on white, not a dark box


def test_unreadable_and_missing_inputs_fail_with_one_line_each(crops, bicubic_run):
    result, out = bicubic_run
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert any("missing.png: no such file or folder" in line for line in errors)
    assert any("notes.png: cannot read it as an image" in line for line in errors)
    assert "wrote 11 of 13 images" in result.stdout and "2 failed" in result.stdout


def test_a_large_image_keeps_its_detail(crops, bicubic_run):
    """Super-resolved at its own resolution: scaled back down, the 2000x3000 'BIG' equals its input (no row of dots)."""
    _, out = bicubic_run
    back = np.asarray(Image.open(out / "big.png").convert("L").resize((2000, 3000), Image.BICUBIC), dtype=float)
    source = np.asarray(Image.open(crops / "big.png").convert("L"), dtype=float)
    assert 10 * np.log10(255**2 / np.mean((back - source) ** 2)) > 35


def test_a_text_crop_reads_the_same_after_super_resolution(bicubic_run):
    from stisr_lightning.models.recognizers.catalog import build_reader

    _, out = bicubic_run
    image = torch.from_numpy(np.asarray(Image.open(out / "wheelchair.png"), dtype=np.float32) / 255).permute(2, 0, 1)
    assert build_reader("ppocr").read(image[None])[0].upper() == "WHEELCHAIR"


def test_existing_outputs_are_refused_unless_overwrite(crops, tmp_path):
    out = tmp_path / "out"
    args = (*BICUBIC, str(crops / "wheelchair.png"), "-o", str(out))
    assert stisr_sr(*args).returncode == 0
    stamp = (out / "wheelchair.png").stat().st_mtime_ns
    refused = stisr_sr(*args)
    assert refused.returncode == 1 and "exists (--overwrite replaces it)" in refused.stderr
    assert (out / "wheelchair.png").stat().st_mtime_ns == stamp
    assert stisr_sr(*args, "--overwrite").returncode == 0


def test_missing_checkpoint_is_a_one_line_error(crops, tmp_path):
    result = stisr_sr(str(tmp_path / "nope.ckpt"), str(crops), "-o",
                         str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"stisr-sr: error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"]


def test_readme_examples_are_crops_of_their_own_sizes_through_the_command_path(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sr_examples", REPO / "scripts" / "sr_examples.py")
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    crops = examples.make_crops(tmp_path)
    assert [Image.open(path).size for path, _ in crops] == [(w // 2, h // 2) for _, (h, w) in examples.CROPS]
    assert [hr.shape[:2] for _, hr in crops] == [size for _, size in examples.CROPS]
    rows = [[Image.new("RGB", (w, h)) for _ in range(4)] for _, (h, w) in examples.CROPS]
    sheet = examples.figure(rows, ["a", "b", "c", "d"])
    assert sheet.size == (4 * (260 * examples.ZOOM + 8), 20 + sum(h * examples.ZOOM + 8 for _, (h, _) in examples.CROPS))

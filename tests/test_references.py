"""Sanity checks on the transcribed paper tables in sweeps/references/*.csv.

Spot checks were compared by eye against the text copies in /work/shared/papers/*.txt; the comment on each names the
paper line it comes from.
"""

from pathlib import Path

import pandas as pd
import pytest

REF_DIR = Path(__file__).resolve().parents[1] / "sweeps" / "references"
COLUMNS = ["table", "row", "column", "value", "source"]
FILES = ["textsr.csv", "lemma.csv", "textdiff.csv", "text_resshift.csv", "edsr_cdistnet_quant.csv"]


def load(name: str) -> pd.DataFrame:
    # dtype=str + keep_default_na=False: values stay exactly as printed ("0.7792", "+0.7", "20.0"), empty stays "".
    return pd.read_csv(REF_DIR / name, dtype=str, keep_default_na=False)


def cell(df: pd.DataFrame, table: str, row: str, column: str) -> str:
    hit = df[(df.table == table) & (df.row == row) & (df.column == column)]
    assert len(hit) == 1, (table, row, column, len(hit))
    return hit.value.iloc[0]


@pytest.mark.parametrize("name", FILES)
def test_header_exact(name):
    first_line = (REF_DIR / name).read_text().splitlines()[0]
    assert first_line == ",".join(COLUMNS)
    assert list(load(name).columns) == COLUMNS


@pytest.mark.parametrize("name", FILES)
def test_keys_unique_and_filled(name):
    df = load(name)
    assert len(df) > 0
    assert not df.duplicated(["table", "row", "column"]).any()
    for col in ["table", "row", "column", "source"]:
        assert (df[col].str.strip() != "").all(), col


@pytest.mark.parametrize("name", FILES)
def test_values_empty_or_float(name):
    df = load(name)
    for v in df.value:
        if v != "":
            assert "%" not in v
            float(v)


def test_readme_lists_every_file():
    readme = (REF_DIR / "README.md").read_text()
    for name in FILES:
        assert name in readme


def test_expected_tables_present():
    expected = {
        "textsr.csv": {"T1", "T2", "T3"},
        "lemma.csv": {"T1", "T2", "T3", "T4", "T5", "T6", "T7", "S-TopK", "S-alpha1"},
        "textdiff.csv": {"T1", "T2", "T3", "T4", "T5"},
        "text_resshift.csv": {"T1", "T2", "T3"},
        "edsr_cdistnet_quant.csv": {"T1", "T2"},
    }
    for name, tables in expected.items():
        assert set(load(name).table) == tables, name


def test_lemma_spot_checks():
    df = load("lemma.csv")
    # lemma.txt line 243: "LEMMA (Ours) <b>81.1%</b> <b>66.3%</b> ..." (Table 3, ASTER easy/medium)
    assert cell(df, "T3", "LEMMA", "ASTER/easy") == "81.1"
    assert cell(df, "T3", "LEMMA", "MORAN/average") == "63.2"
    # lemma.txt line 237: "TSRN [Wang et al., 2020] 75.1% ... 31.4% 41.4%" (Table 3, last cell = CRNN average)
    assert cell(df, "T3", "TSRN", "CRNN/average") == "41.4"
    # lemma.txt line 196: "✓ - 65.0% 55.3% 39.8% 54.1%" (Table 1, cha-attn only)
    assert cell(df, "T1", "cha-attn=yes,feat-select=no", "CRNN/average") == "54.1"
    # lemma.txt line 282: "✓ ✓ 20.9 <b>0.7792</b> <b>56.3%</b>" (Table 6, full model)
    assert cell(df, "T6", "LEM=yes,RecLoss=yes", "SSIM") == "0.7792"
    assert cell(df, "T6", "LEM=yes,RecLoss=yes", "PSNR") == "20.9"
    # lemma.txt line 263: "LEMMA (Ours) <b>32.5%</b> <b>76.0%</b> ..." (Table 5, IC15/CUTE80)
    assert cell(df, "T5", "LEMMA", "CUTE80") == "76.0"
    # switch rows keep the paper order (Table 7: --, -✓, ✓-, ✓✓)
    t7 = df[(df.table == "T7") & (df.column == "CRNN/average")]
    assert list(t7.row) == ["ExpsConv=no,Pix2Reg=no", "ExpsConv=no,Pix2Reg=yes",
                            "ExpsConv=yes,Pix2Reg=no", "ExpsConv=yes,Pix2Reg=yes"]
    # lemma_tbsrn_tatt_textzoom.md line 270: "| 300 | 20.4 | 0.7568 | 65.5 | 54.8 | 40.4 | 54.3 |" (supplement TopK)
    assert cell(df, "S-TopK", "K=300", "PSNR") == "20.4"
    assert cell(df, "S-alpha1", "alpha1=0.7", "CRNN/average") == "54.5"
    assert cell(df, "S-alpha1", "alpha1=0.7", "PSNR") == ""  # not given in the reference notes
    # the full model is the same run in T1/T2/T4/T7 and the CRNN columns of T3
    for table, row in [("T1", "cha-attn=yes,feat-select=yes"), ("T2", "BDA"),
                       ("T4", "LEM=yes,MAM=yes,AdaFM=yes"), ("T7", "ExpsConv=yes,Pix2Reg=yes"), ("T3", "LEMMA")]:
        assert cell(df, table, row, "CRNN/average") == "56.3"


def test_textsr_spot_checks():
    df = load("textsr.csv")
    # textsr.txt line 477: "PSNR 18.65 23.77 25.28 +1.51" (Table 2, IC13 block; columns BICUBIC SRGAN TextSR Improve)
    assert cell(df, "T2", "TextSR", "IC13/PSNR") == "25.28"
    assert cell(df, "T2", "Improve", "IC13/PSNR") == "+1.51"
    # textsr.txt line 649: "ASTER (ReIm) + TextSR ResNet,(90k, ST, FT) 95.6 99.4 95.1 96.5 92.4 79.0 87.1 87.2"
    assert cell(df, "T3", "ASTER (ReIm) + TextSR [ResNet,(90k, ST, FT)]", "IC15/0") == "79.0"
    # textsr.txt line 641: "Shi et al. 2016 [37] VGG,90k 81.9 95.5 81.9 90.1 88.6 - 71.8 59.2" ('-' -> empty)
    assert cell(df, "T3", "Shi et al. 2016 [VGG,90k]", "IC15/0") == ""
    assert cell(df, "T3", "Shi et al. 2016 [VGG,90k]", "CUTE/0") == "59.2"
    # textsr.txt line 622: "Wang et al. 2012 [43] - - 70.0 - - - -" (short row; the number is the SVT 50-lexicon cell)
    assert cell(df, "T3", "Wang et al. 2012", "SVT/50") == "70.0"


def test_text_resshift_spot_checks():
    df = load("text_resshift.csv")
    # text_resshift_progressive_diffusion.txt line 140: "Ours 25.34 0.138 3.255 0.8779 0.8913 23.50 0.128 5.583 ..."
    assert cell(df, "T1", "Ours", "x2/FID") == "3.255"
    assert cell(df, "T1", "Ours", "x4/PSNR") == "23.50"
    # line 184 (Table 2) repeats the x4 numbers of Table 1 for "Ours"
    for m in ["PSNR", "LPIPS", "FID", "ACC", "NED"]:
        assert cell(df, "T2", "Ours", f"x4/{m}") == cell(df, "T1", "Ours", f"x4/{m}")
    # line 382: "DiffTSR 874M 25.32" (unit suffix M dropped)
    assert cell(df, "T3", "DiffTSR", "#parameters(M)") == "874"


def test_edsr_spot_checks():
    df = load("edsr_cdistnet_quant.csv")
    # edsr_cdistnet_quantization.txt line 257: "EDSR SR 85.05 71.37 56.81 71.08" (Table 1)
    assert cell(df, "T1", "SR Model=EDSR,Finetuned CDistNet=SR", "Accuracy/Avg.") == "71.08"
    # line 285: "SR + OCR 7 21.41 71.28 1329.20" (Table 2, EDSR block)
    assert cell(df, "T2", "SR Model=EDSR,Quantization=SR + OCR", "Model Size(MB)") == "1329.20"
    assert cell(df, "T2", "SR Model=EDSR,Quantization=SR + OCR", "Bit") == "7"
    assert cell(df, "T2", "SR Model=TBSRN,Quantization=None", "Bit") == ""  # printed '-'


def test_textdiff_values_missing():
    df = load("textdiff.csv")
    # the text copy has captions but no table bodies: every value is empty
    assert (df.value == "").all()
    assert set(df[df.table == "T5"].row) == {f"TextDiff-{n}" for n in (5, 20, 50, 110, 200)}

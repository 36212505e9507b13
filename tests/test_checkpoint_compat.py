"""Runs saved by earlier versions of the suite still load: one saved run per system (tests/fixtures/checkpoints, made
by its make_fixtures.py at commit 15b2a27, before optimizers became YAML callables), rebuilt from its config.yaml,
loaded strictly, computing what it computed when it was saved."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "checkpoints"))
from make_fixtures import HERE, RUNS, load_fixture, probe  # noqa: E402


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_saved_before_loads_and_computes_what_it_did(name):
    system = load_fixture(name)
    torch.testing.assert_close(probe(system, name), torch.load(HERE / name / "probe.pt"), rtol=1e-5, atol=1e-6)

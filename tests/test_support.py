"""The suite's own guarantees: each test starts at the pinned torch thread count, whatever the test before it did,
the tiny-run override lists replace keys instead of repeating them, and a missing optional package skips a test
except under CI."""

from __future__ import annotations

import os

import pytest
import torch

from support import TEST_THREADS, TINY_RUN, require_modules, tiny_run


@pytest.mark.parametrize("changed_to", [TEST_THREADS + 1, TEST_THREADS + 2])
def test_each_test_starts_at_the_pinned_thread_count(changed_to):
    """Run in order: the second case sees the count the first one changed put back."""
    assert torch.get_num_threads() == TEST_THREADS
    assert os.environ["OMP_NUM_THREADS"] == str(TEST_THREADS)
    torch.set_num_threads(changed_to)
    os.environ["OMP_NUM_THREADS"] = str(changed_to)


def test_tiny_run_replaces_the_keys_it_is_given():
    overrides = tiny_run("data.batch_size=2", "+callbacks.model_checkpoint.save_weights_only=true", "trainer=ddp")
    assert overrides.count("data.batch_size=2") == 1 and "data.batch_size=4" not in overrides
    assert overrides[:len(TINY_RUN) - 1] == [o for o in TINY_RUN if o != "data.batch_size=4"]
    without_bar = [o for o in TINY_RUN if not o.startswith("callbacks.progress_bar")]
    assert tiny_run("~callbacks.progress_bar") == [*without_bar, "~callbacks.progress_bar"]


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_package_skips_and_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    require_modules("torch", "hydra_plugins", install="present")  # nothing missing: the test goes on
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match=r"frcnn_lab_absent, absent_parent\.child cannot be imported \(pip install x\)"):
        require_modules("torch", "frcnn_lab_absent", "absent_parent.child", install="pip install x")

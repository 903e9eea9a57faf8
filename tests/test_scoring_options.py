"""The scoring options (medad_monai.inference.options): validated once, in one place, whichever layer passes them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medad_monai.inference import ScoringOptions


def test_defaults_and_keyword_arguments_of_score_volume():
    opts = ScoringOptions()
    assert opts.as_kwargs() == {
        "axis": 2, "volume_reduction": "max", "top_k": 3, "batch_size": 16, "mask_scope": "anomalous_slices",
        "min_relative_body": 0.9,
    }  # fmt: skip
    assert replace(opts, axis=0, volume_reduction="topk").as_kwargs()["axis"] == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"axis": 3}, "axis must be 0, 1 or 2"),
        ({"axis": True}, "axis must be 0, 1 or 2"),
        ({"volume_reduction": "median"}, "volume_reduction must be one of"),
        ({"mask_scope": "some"}, "mask_scope must be one of"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"min_relative_body": 1.2}, "min_relative_body must be a fraction in"),
        ({"min_relative_body": "0.5"}, "min_relative_body must be a fraction in"),
    ],
)
def test_bad_options_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        ScoringOptions(**changes)
    with pytest.raises(ValueError, match=message):  # a request overriding the defaults is checked the same way
        replace(ScoringOptions(), **changes)

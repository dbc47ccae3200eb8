"""The shapes world's edits: instructions ask for exactly what the target changes, partial edits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from policies import shapes


def test_every_instruction_parses_to_what_its_target_changes():
    rng = np.random.default_rng(0)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(500):
        edit = shapes.random_edit(rng, 32)
        counts[len(edit.changed)] += 1
        asked = shapes.parse_prompt(edit.instruction())
        # Every change is asked for, with the target's value; nothing asked contradicts the target.
        assert set(edit.changed) <= set(asked)
        assert all(getattr(edit.target, a) == v for a, v in asked.items())
        assert len(edit.instruction().split()) <= 10  # fits the tiny text encoders' 12 tokens with <bos>/<eos>
    assert min(counts.values()) > 100  # one, two and three changes all occur


def test_instruction_wording():
    s = shapes.Scene("circle", "red", "gray", 16, 16, 8)
    edit = lambda **c: shapes.Edit(s, replace(s, **c)).instruction()  # noqa: E731
    assert edit(colour="blue") == "make the circle blue"
    assert edit(shape="square") == "make the circle a square"
    assert edit(shape="square", colour="blue", background="white") == "make the circle a blue square on a white background"
    assert edit(background="black") == "make the background black"
    assert shapes.parse_prompt("make the background black") == {"background": "black"}


def test_partial_edit_changes_only_the_named_attributes():
    rng = np.random.default_rng(1)
    edit = shapes.random_edit(rng, 32, num_changes=3)
    assert edit.partial([]) == edit.source and edit.partial(shapes.EDITABLE) == edit.target
    half = edit.partial(["colour"])
    assert (half.colour, half.shape, half.background) == (edit.target.colour, edit.source.shape, edit.source.background)
    with pytest.raises(ValueError, match="num_changes must be 1..3"):
        shapes.random_edit(rng, 32, num_changes=4)

"""The CI-size zoo forms what the chapters study: a previous-token -> induction circuit that copies.

``make test`` trains the ``tiny`` zoo (seed 0) before the tests; this checks its residual model
against the formation criteria, with the recipe the book's ``small`` zoo uses (smaller depth).
"""

from __future__ import annotations

from sinklens import formation, zoo


def test_the_ci_zoo_forms_a_confirmed_induction_circuit():
    cfg = zoo.config("residual", "tiny", 0)
    model = zoo.get("residual", "tiny", 0, progress=False)
    decision = formation.decide(formation.measure(model, *formation.standard_inputs(cfg)))
    assert decision.passes["previous_token"], decision.to_dict()
    assert decision.passes["induction"], decision.to_dict()  # score, screen and a previous-token head below
    assert decision.passes["copying"], decision.to_dict()

"""What a registration takes when the message leaves it out: read from the policy file."""

from __future__ import annotations

import pytest

from cardsvc.national.visit_services import default_med_type, pharmacy_scheme
from cardsvc.settlement.params import CURRENT_POLICY_VERSION, load_params

PARAMS = load_params(CURRENT_POLICY_VERSION)


@pytest.mark.parametrize(
    ("insutype", "facility_type", "med_type"),
    [
        ("310", "hospital", "11"),
        ("390", "hospital", "11"),
        ("410", "hospital", "11"),
        ("510", "hospital", "51"),
        ("310", "pharmacy", "41"),
        ("410", "pharmacy", "41"),
        ("390", "pharmacy", "11"),  # none there: the registration refuses it
    ],
)
def test_default_visit_type(insutype: str, facility_type: str, med_type: str) -> None:
    assert default_med_type(PARAMS, insutype, facility_type) == med_type


def test_a_pharmacy_visit_without_insutype_is_the_employee_scheme() -> None:
    assert pharmacy_scheme(PARAMS) == "310"

"""Request validation of the serving API (no Ray): strict types, sizes, unknown ids, messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragrec.serving.schemas import Catalog, PredictRequest, RequestError, check_request

CATALOG = Catalog(n_users=10, n_items=50, max_items=4)


def test_valid_request_parses_and_keeps_order():
    req = PredictRequest.model_validate({"user_id": 3, "item_ids": [7, 1, 7], "as_of": 123})
    assert (req.user_id, req.item_ids, req.as_of) == (3, [7, 1, 7], 123)
    assert PredictRequest.model_validate({"user_id": 0, "item_ids": [0]}).as_of is None
    check_request(req, CATALOG)  # in range, within the limit: no error
    check_request(PredictRequest(user_id=9, item_ids=[49, 0, 1, 2]), CATALOG)  # the boundaries are known ids


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user_id": "3", "item_ids": [1]}, "user_id"),  # strings are not ids
        ({"user_id": 3.5, "item_ids": [1]}, "user_id"),
        ({"user_id": True, "item_ids": [1]}, "user_id"),  # bool is not an int in strict mode
        ({"user_id": 3, "item_ids": [1, "2"]}, "item_ids.1"),
        ({"user_id": 3, "item_ids": 5}, "item_ids"),
        ({"user_id": 3, "item_ids": []}, "item_ids"),  # empty list
        ({"item_ids": [1]}, "user_id"),  # missing
        ({"user_id": 3, "item_ids": [1], "as_of": "yesterday"}, "as_of"),
        ({"user_id": 3, "item_ids": [1], "items": [2]}, "items"),  # unknown field (typo) is an error
    ],
)
def test_wrong_types_are_rejected_naming_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        PredictRequest.model_validate(body)
    locs = {".".join(str(x) for x in err["loc"]) for err in e.value.errors()}
    assert field in locs


def test_oversized_request_is_413_with_the_limit():
    with pytest.raises(RequestError) as e:
        check_request(PredictRequest(user_id=1, item_ids=[1, 2, 3, 4, 5]), CATALOG)
    assert e.value.status == 413
    assert "5 items" in e.value.message and "at most 4" in e.value.message


@pytest.mark.parametrize("user_id", [10, -1, 10**12])
def test_unknown_user_is_404(user_id):
    with pytest.raises(RequestError) as e:
        check_request(PredictRequest(user_id=user_id, item_ids=[1]), CATALOG)
    assert e.value.status == 404
    assert f"unknown user_id {user_id}" in e.value.message and "0..9" in e.value.message


def test_unknown_items_are_404_and_listed():
    with pytest.raises(RequestError) as e:
        check_request(PredictRequest(user_id=1, item_ids=[3, 50, -2, 4]), CATALOG)
    assert e.value.status == 404
    assert "[50, -2]" in e.value.message and "0..49" in e.value.message

import pytest

import indices


def test_every_index_has_members_and_an_as_of_date():
    assert len(indices.DOW_30) == 30 and len(indices.DOW_30_2023) == 30
    assert len(indices.NASDAQ_100) == 101
    for idx in indices.INDICES.values():
        assert idx.as_of and len(set(idx.tickers)) == len(idx.tickers)


def test_public_dataset_dow_list_still_has_the_2023_members():
    assert {"WBA", "INTC", "DOW"} <= set(indices.DOW_30_2023)
    assert not {"WBA", "INTC", "DOW"} & set(indices.DOW_30)


@pytest.mark.parametrize("name", ["dow30", "DOW30", "Dow-30", "dow30_2023", "NASDAQ100", "nasdaq_100"])
def test_lookup_is_case_insensitive(name):
    assert indices.get_index(name).tickers


def test_unknown_index_names_the_known_ones():
    with pytest.raises(ValueError, match="dow30, dow30_2023, nasdaq100"):
        indices.get_index("ftse100")

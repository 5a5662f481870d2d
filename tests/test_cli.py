import argparse

import pytest

from cellseg.cli import int_list, name_list


def test_int_list():
    assert int_list("0,1") == [0, 1] and int_list(" 2 , 3 ") == [2, 3]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        int_list("a,1")
    with pytest.raises(argparse.ArgumentTypeError, match="at least one"):
        int_list(",")


def test_name_list():
    assert name_list("identity, hflip") == ["identity", "hflip"]
    with pytest.raises(argparse.ArgumentTypeError):
        name_list(" , ")

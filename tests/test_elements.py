"""The one check of structures against the elements a model knows (`lpmace.elements`)."""

import numpy as np
import pytest
import torch

from lpmace.data import Configuration
from lpmace.elements import check_configurations, check_known_elements
from lpmace.errors import InputError


def test_known_elements_pass_and_an_unknown_one_is_named_with_its_structure():
    check_known_elements([1, 6, 6, 8], (1, 6, 7, 8), "a.xyz:frame 0")
    with pytest.raises(InputError, match=r"^a\.xyz:frame 2: element\(s\) Si, Fe not in the model "
                                         r"\(Z=14, 26; the model knows H, C, N, O\)$"):
        check_known_elements(np.array([26, 1, 14]), (8, 1, 6, 7), "a.xyz:frame 2")


def test_the_first_configuration_with_an_unknown_element_is_named():
    def config(numbers, source):
        n = len(numbers)
        return Configuration(numbers=np.array(numbers), positions=np.zeros((n, 3)), cell=np.zeros((3, 3)),
                             pbc=np.zeros(3, bool), source=source)

    configs = [config([1, 8], "b.xyz:frame 0"), config([1, 3], "b.xyz:frame 1"), config([4], "b.xyz:frame 2")]
    with pytest.raises(InputError, match=r"^b\.xyz:frame 1: element\(s\) Li not in the training data"):
        check_configurations(configs, [1, 8], "the training data")


def test_the_model_refuses_an_element_it_lacks_and_a_number_no_element_has(make_model):
    model = make_model()
    with pytest.raises(InputError, match=r"element\(s\) Fe not in the model \(Z=26;"):
        model.species(torch.tensor([1, 26]))
    with pytest.raises(InputError, match=r"element\(s\) Z=0 not in the model"):
        model.species(torch.tensor([0, 1]))

"""Every prior of the project runs the shared contract (tests/priors/prior_contract.py)."""

import pytest

from csd_exp.priors import ExactScorePrior

from .prior_contract import PriorContract


class TestExactScorePrior(PriorContract):
    @pytest.fixture
    def prior(self):
        return ExactScorePrior()

    @pytest.fixture
    def prior64(self):
        return ExactScorePrior(torch_dtype="float64")


class TestInstructPix2PixPrior(PriorContract):
    @pytest.fixture
    def prior(self, ip2p_prior):
        return ip2p_prior

    @pytest.fixture
    def prior64(self, ip2p_prior64):
        return ip2p_prior64


class TestStableDiffusionPrior(PriorContract):
    @pytest.fixture
    def prior(self, sd_prior):
        return sd_prior

    @pytest.fixture
    def prior64(self, sd_prior64):
        return sd_prior64

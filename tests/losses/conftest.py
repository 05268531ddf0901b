"""Rewrite the asserts of the shared contract checks, so that a failing check shows its values like a test does."""

import pytest

pytest.register_assert_rewrite("tests.losses.contract")

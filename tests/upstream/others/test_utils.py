"""Stand-ins for diffusers' tests/others/test_utils.py: the hub tests (push_to_hub) need the network and a token."""

import pytest

TOKEN = USER = None
is_staging_test = pytest.mark.skip(reason="hub-only: pushes to the Hugging Face Hub's staging server")

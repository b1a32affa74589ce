"""Suite-wide test settings.  Keep this minimal: fixtures belong in the test files."""

from __future__ import annotations

import os

from hypothesis import settings

# Property tests are bounded so the whole suite stays within CI's budget; a long
# local run can pick another profile, e.g. HYPOTHESIS_PROFILE=thorough.
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

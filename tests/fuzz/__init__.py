"""Fuzzing harnesses for the code that parses what the network sends: Wyoming connections and vendor codecs.

The test modules ``tests/test_fuzz_*.py`` run each target for a few hundred cases in the normal suite; set
``FUZZ_EXAMPLES`` for a long run (docs/fuzzing.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings


def fuzz_settings(ci_examples: int) -> settings:
    """``ci_examples`` cases in the normal suite; ``FUZZ_EXAMPLES`` cases in a long run.

    A long run skips the example database (nothing is written into the tree) and shrinks what it finds.
    """
    wanted = os.environ.get("FUZZ_EXAMPLES")
    examples = int(wanted) if wanted else ci_examples
    return settings(
        max_examples=examples,
        deadline=None,
        database=None if wanted else settings.default.database,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
LAYERS = {"privileged": pytest.mark.privileged, "lab": pytest.mark.lab}


def pytest_collection_modifyitems(items):
    """tests/privileged and tests/lab carry their layer's marker and need root."""
    for item in items:
        for layer, mark in LAYERS.items():
            if f"{os.sep}tests{os.sep}{layer}{os.sep}" in str(item.fspath):
                item.add_marker(mark)
                if os.geteuid() != 0:
                    item.add_marker(pytest.mark.skip(reason="needs root"))

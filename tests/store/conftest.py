import shutil
import tempfile
from pathlib import Path

import cloudpickle
import pytest

from . import _ops

# Worker processes receive the test helpers by value: they need not import tests/.
cloudpickle.register_pickle_by_value(_ops)


@pytest.fixture
def tmp_dir():
    path = Path(tempfile.mkdtemp(prefix="curvlab-store-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)

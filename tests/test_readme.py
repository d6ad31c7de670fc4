"""The README's Python quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_quickstart_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "HessianOperator(D=3190" in out
    H = namespace["H"]
    top = namespace["top"]
    assert bool(top.converged.all())
    assert top.eigenvalues[0] > 0
    curve = namespace["curve"]
    assert len(curve.magnitude) == 2
    assert H.param_names[0] == "0.weight"

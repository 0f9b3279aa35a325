"""The README's usage example runs as written."""
import os
import re
from conftest import needs_minilm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@needs_minilm
def test_readme_python_example_runs(capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = [b for b in blocks if "apply_adaptive_encoder(model)" in b and "load_pretrained()" in b]
    assert len(example) == 1, "README must hold one complete usage example"
    exec(compile(example[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2," in out and "of token-layers computed" in out and "torch.Size([2, 6])" in out

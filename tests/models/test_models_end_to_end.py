"""The issue's definition of done: train one epoch on random data, export to both formats with
``xal export``, load both runtimes, get the same three outputs as the trained model in torch."""

from __future__ import annotations

import torch
from model_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from xal_cli.main import main
from xal_core.models import ExplainableModel, build_backbone
from xal_core.models.runtime import load
from xal_core.train import Augment, TrainConfig, fit


def test_train_export_load_run(tmp_path, capsys):
    torch.manual_seed(0)
    images, labels = torch.rand(16, 1, 48, 48), torch.arange(16) % 3
    result = fit(build_backbone("resnet18", 1, 3), images, labels,
                 config=TrainConfig(epochs=1, batch_size=4, augment=Augment.none()),
                 class_names=["a", "b", "c"], checkpoint_path=tmp_path / "model.pt", progress=False)
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        assert main(["export", str(result.checkpoint_path), "--format", fmt, "--out", str(tmp_path / name)]) == 0
    assert "wrote" in capsys.readouterr().out

    raw = torch.rand(3, 1, 48, 48)
    trained = ExplainableModel(result.model).eval()
    for name in ("model.onnx", "model.ts"):
        runtime = load(tmp_path / name)
        assert runtime.metadata.class_names == ("a", "b", "c")
        assert runtime.metadata.preprocessing == result.checkpoint.preprocessing
        x = runtime.metadata.normalise(raw)
        with torch.no_grad():
            expected = trained(x)
        for got, want in zip(runtime.run(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "none.pt: no such weights file" in capsys.readouterr().err


def test_cli_choices_match_the_library_and_import_no_monai():
    import importlib
    import subprocess
    import sys

    cli_export = importlib.import_module("xal_cli.export")
    models_export = importlib.import_module("xal_core.models.export")  # the module, not the function

    assert cli_export.FORMATS == models_export.FORMATS
    assert cli_export.ONNX_EXPORTERS == models_export.ONNX_EXPORTERS
    code = "import sys, xal_cli.export; print('monai' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

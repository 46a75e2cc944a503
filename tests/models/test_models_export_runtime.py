"""Export to ONNX and TorchScript, and the service runtimes: same three outputs as eager torch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from model_helpers import FlattenHeadNet, one_torch_thread, tiny_backbone  # noqa: F401 (autouse fixture)

from xal_core.models import OUTPUT_NAMES, ExplainableModel, ModelMetadata, Preprocessing, export, xal_version
from xal_core.models.runtime import OnnxRuntime, TorchScriptRuntime, load

SIZE = 64


@pytest.fixture(scope="module", params=["resnet18", "densenet121"])
def exported(request, tmp_path_factory):
    """One model exported to both formats (dynamo ONNX exports take seconds: shared by the tests)."""
    name = request.param
    model = tiny_backbone(name, in_channels=1, num_classes=3)
    metadata = ModelMetadata(
        class_names=("normal", "nodule", "effusion"),
        preprocessing=Preprocessing((SIZE, SIZE), 1, (0.5,), (0.25,)),
        target_layer=ExplainableModel(model).target_layer,
        architecture=model.xal_config.to_dict(),
    )
    folder = tmp_path_factory.mktemp(name)
    onnx_result = export(model, folder / "model.onnx", "onnx", (1, SIZE, SIZE), metadata=metadata)
    ts_result = export(model, folder / "model.pt", "torchscript", metadata=metadata)
    return model, metadata, onnx_result, ts_result


@pytest.mark.parametrize("batch", [1, 3])
def test_runtimes_agree_with_eager_torch(exported, batch):
    model, _, onnx_result, ts_result = exported
    x = torch.randn(batch, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = ExplainableModel(model)(x)
    bound = OnnxRuntime(onnx_result.path, io_binding=True)  # outputs written into torch-owned tensors
    blocking = OnnxRuntime(onnx_result.path, threads=2, spin=False)  # intra-op threads that wait without spinning
    options = blocking.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for runtime in (load(onnx_result.path), bound, blocking, load(ts_result.path)):
        for images in (x, x.numpy()):
            outputs = runtime.run(images)
            assert outputs.logits.shape == (batch, 3)
            assert outputs.features.shape == expected[1].shape
            torch.testing.assert_close(outputs.logits, expected[0], rtol=0, atol=1e-4)
            torch.testing.assert_close(outputs.features, expected[1], rtol=0, atol=1e-4)
            torch.testing.assert_close(outputs.cam_weights, expected[2], rtol=0, atol=1e-6)
    fresh = bound.run(-x)  # a second call gets new tensors, not the first call's buffers
    assert not torch.equal(fresh.logits, bound.run(x).logits)


def test_onnx_file_carries_outputs_metadata_and_dynamic_batch(exported):
    import onnx

    _, metadata, onnx_result, _ = exported
    assert onnx_result.exporter == "dynamo", onnx_result.fallback_reason
    proto = onnx.load(str(onnx_result.path))
    assert [output.name for output in proto.graph.output] == list(OUTPUT_NAMES)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    props = {prop.key: prop.value for prop in proto.metadata_props}
    assert json.loads(props["xal.class_names"]) == ["normal", "nodule", "effusion"]
    assert json.loads(props["xal.input_size"]) == [SIZE, SIZE]
    assert props["xal.channels"] == "1"
    assert json.loads(props["xal.normalisation"]) == {"mean": [0.5], "std": [0.25]}
    assert props["xal.target_layer"] == metadata.target_layer
    assert props["xal.version"] == xal_version()
    assert props["xal.exporter"] == "dynamo"


def test_runtime_metadata_round_trips(exported):
    _, metadata, onnx_result, ts_result = exported
    onnx_runtime, ts_runtime = load(onnx_result.path), load(ts_result.path)
    assert isinstance(onnx_runtime, OnnxRuntime) and isinstance(ts_runtime, TorchScriptRuntime)
    assert onnx_runtime.device == "cpu"
    for runtime, exporter in ((onnx_runtime, "dynamo"), (ts_runtime, "jit.trace")):
        assert runtime.metadata.class_names == metadata.class_names
        assert runtime.metadata.preprocessing == metadata.preprocessing
        assert runtime.metadata.architecture == metadata.architecture
        assert runtime.metadata.exporter == exporter
    images = torch.full((1, 1, SIZE, SIZE), 0.75)
    torch.testing.assert_close(onnx_runtime.metadata.normalise(images), torch.ones(1, 1, SIZE, SIZE))


def test_run_rejects_wrong_channels_size_and_rank(exported):
    _, _, onnx_result, ts_result = exported
    for path in (onnx_result.path, ts_result.path):
        runtime = load(path)
        with pytest.raises(ValueError, match=rf"{path.name}: model takes 1 channel\(s\), images have 3"):
            runtime.run(torch.zeros(2, 3, SIZE, SIZE))
        with pytest.raises(ValueError, match=rf"{path.name}: model takes 64×64 images, got 32×64"):
            runtime.run(np.zeros((2, 1, 32, SIZE), np.float32))
        with pytest.raises(ValueError, match=rf"{path.name}: images must be \[B, C, H, W\]"):
            runtime.run(torch.zeros(1, SIZE, SIZE))
        with pytest.raises(ValueError, match=rf"{path.name}: images must be floating point"):
            runtime.run(np.zeros((1, 1, SIZE, SIZE), np.uint8))


def test_corrupted_and_foreign_files_are_named(exported, tmp_path):
    _, _, onnx_result, ts_result = exported
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_result.path.read_bytes()[:4096])
    with pytest.raises(ValueError, match="truncated.onnx: not a loadable ONNX model"):
        load(truncated)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ts_result.path.read_bytes()[:4096])
    with pytest.raises(ValueError, match="broken.pt: not a TorchScript ZIP archive"):
        load(broken)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.onnx: empty model file"):
        load(empty)
    with pytest.raises(ValueError, match="missing.onnx: no such model file"):
        load(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.pt"  # TorchScript without the xal metadata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
        torch.jit.save(torch.jit.trace(torch.nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 4, 4)), str(plain))
    with pytest.raises(ValueError, match="plain.pt: TorchScript file without xal_metadata.json"):
        load(plain)


def test_onnx_without_the_three_outputs_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [image], [logits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "one_output.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=r"one_output.onnx: outputs are \['logits'\], an xal model needs"):
        load(path)
    # the right outputs but no xal metadata
    nodes = [helper.make_node("Identity", ["image"], [name]) for name in OUTPUT_NAMES]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, 8, 8]) for name in OUTPUT_NAMES]
    model = helper.make_model(helper.make_graph(nodes, "g", [image], outputs), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "no_metadata.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=r"no_metadata.onnx: missing xal metadata"):
        load(path)


def test_export_refuses_what_it_cannot_embed(tmp_path):
    with pytest.raises(ValueError, match="needs autograd for its Grad-CAM weights"):
        export(ExplainableModel(tiny_backbone("resnet18"), target_layer="layer3"), tmp_path / "m.onnx", input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="no recognised GAP"):
        export(FlattenHeadNet(), tmp_path / "m.onnx", input_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="format must be one of"):
        export(tiny_backbone("resnet18"), tmp_path / "m.bin", "tflite", (1, 32, 32))
    with pytest.raises(ValueError, match="2 class names for a model with 3 logits"):
        export(tiny_backbone("resnet18"), tmp_path / "m.pt", "torchscript", (1, 32, 32), class_names=("a", "b"))


def test_legacy_onnx_exporter_gives_the_same_outputs(tmp_path):
    """The fallback path, forced: the TorchScript-based exporter with a dynamic batch axis."""
    model = tiny_backbone("densenet121", num_classes=3)
    result = export(model, tmp_path / "legacy.onnx", "onnx", (1, 32, 32), onnx_exporter="legacy")
    assert result.exporter == "torchscript-legacy" and result.fallback_reason == ""
    runtime = load(result.path)
    assert runtime.metadata.exporter == "torchscript-legacy"
    for batch in (1, 3):
        x = torch.randn(batch, 1, 32, 32)
        with torch.no_grad():
            expected = ExplainableModel(model)(x)
        for got, want in zip(runtime.run(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="onnx_exporter must be one of"):
        export(model, tmp_path / "x.onnx", "onnx", (1, 32, 32), onnx_exporter="fast")


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it, tracing keeps one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.amax()) >= 0:  # always true after the block's ReLU
            return x
        return -x


def test_dynamo_failure_falls_back_to_the_legacy_exporter(tmp_path):
    model = tiny_backbone("resnet18", num_classes=3)
    model.layer4 = torch.nn.Sequential(model.layer4, DataDependent())
    with pytest.raises(Exception, match="torch.export"):
        export(model, tmp_path / "strict.onnx", "onnx", (1, 32, 32), onnx_exporter="dynamo")
    result = export(model, tmp_path / "fallback.onnx", "onnx", (1, 32, 32))
    assert result.exporter == "torchscript-legacy"
    assert result.fallback_reason.startswith("TorchExportError") and "\x1b" not in result.fallback_reason
    runtime = load(result.path)
    assert runtime.metadata.exporter == "torchscript-legacy"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = ExplainableModel(model)(x)
    for got, want in zip(runtime.run(x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


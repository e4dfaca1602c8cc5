"""ResNet trunks: output shapes, unknown names, and loading local torchvision weights
(.pth and .safetensors) with errors that name the file."""

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from models.layers.backbones import (
    RESNET_CHANNELS,
    load_state_dict_file,
    resnet_trunk,
    trunk_state,
)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_trunk_shapes_at_64_px(name):
    trunk = resnet_trunk(name)
    assert not trunk.training
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, RESNET_CHANNELS[name], 2, 2)
    if name == "resnet18":
        with torch.no_grad():
            assert trunk(torch.randn(1, 3, 96, 64)).shape == (1, 512, 3, 2)


def test_channels_table():
    assert RESNET_CHANNELS == {"resnet18": 512, "resnet34": 512, "resnet50": 2048,
                               "resnet101": 2048, "resnet152": 2048, "resnet18_l3": 256,
                               "resnet34_l3": 256, "resnet50_l3": 1024, "shapes_cnn": 128}


def test_small_trunk_is_stride_8_and_loads_its_own_weights(tmp_path):
    trunk = resnet_trunk("shapes_cnn")
    assert not trunk.training
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, 128, 8, 8)
        assert trunk(torch.randn(1, 3, 128, 96)).shape == (1, 128, 16, 12)
    torch.manual_seed(3)
    other = resnet_trunk("shapes_cnn")
    save_file(other.state_dict(), str(tmp_path / "cnn.safetensors"))
    loaded = resnet_trunk("shapes_cnn", weights_path=tmp_path / "cnn.safetensors")
    torch.testing.assert_close(loaded.conv4[0].weight, other.conv4[0].weight)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth"):
        resnet_trunk("shapes_cnn", weights_path=tmp_path / "r18.pth")


def test_stride_16_trunk_loads_a_full_state_dict(tmp_path):
    trunk = resnet_trunk("resnet18_l3")
    assert [n for n, _ in trunk.named_children()][-1] == "layer3"
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, 256, 4, 4)
    full = torchvision.models.resnet18(weights=None)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    loaded = resnet_trunk("resnet18_l3", weights_path=tmp_path / "r18.pth")
    torch.testing.assert_close(loaded.layer3[0].conv1.weight, full.layer3[0].conv1.weight)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        resnet_trunk("resnet19")
    msg = str(err.value)
    assert "resnet19" in msg and all(name in msg for name in RESNET_CHANNELS)


def _reference(seed=0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _trunk_forward(model, x):
    with torch.no_grad():
        return torch.nn.Sequential(*list(model.children())[:-2]).eval()(x)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_loads_local_weights_ignoring_fc(tmp_path, fmt):
    ref = _reference()
    state = ref.state_dict()
    assert any(k.startswith("fc.") for k in state)
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "pth":
        torch.save(state, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
                   path)
    trunk = resnet_trunk("resnet18", weights_path=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = trunk(x)
    torch.testing.assert_close(got, _trunk_forward(ref, x), atol=1e-5, rtol=0)
    if fmt == "pth":  # the comparison is meaningful: other weights give other features
        assert not torch.allclose(got, _trunk_forward(_reference(seed=1), x), atol=1e-3)


def test_state_dict_keys_match_torchvision_names():
    trunk_keys = set(resnet_trunk("resnet18").state_dict())
    tv_keys = {k for k in torchvision.models.resnet18(weights=None).state_dict()
               if not k.startswith("fc.")}
    assert trunk_keys == tv_keys


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError) as err:
        resnet_trunk("resnet18", weights_path=wrong)
    msg = str(err.value)
    assert str(wrong) in msg and "shape mismatches" in msg and "unexpected keys" in msg
    partial = tmp_path / "partial.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match=r"missing keys: layer4\.1\.bn2\.weight"):
        resnet_trunk("resnet18", weights_path=partial)


def test_unreadable_or_missing_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        resnet_trunk("resnet18", weights_path=tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        resnet_trunk("resnet18", weights_path=garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_state_dict_file(bad_st)
    not_tensors = tmp_path / "dict.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_tensors)
    with pytest.raises(ValueError, match=r"dict\.pth"):
        load_state_dict_file(not_tensors)


def test_trunk_from_a_whole_model_or_its_release(tmp_path):
    """A release directory (its model.safetensors) or a whole model's state dict gives the
    trunk its ``...grid_encoder.trunk.*`` weights, e.g. a captioner's backbone for Pythia."""
    from models import create_model, save_pretrained

    torch.manual_seed(5)
    butd = create_model("butd", vocab_size=20, backbone="shapes_cnn", image_dim=128,
                        embedding_dim=8, hidden_dim=16, attention_dim=16)
    source = butd.grid_encoder.trunk
    with torch.no_grad():  # running statistics travel too
        source.conv4[1].running_mean.uniform_()
    save_pretrained(butd, tmp_path / "butd")
    from_release = resnet_trunk("shapes_cnn", weights_path=tmp_path / "butd")
    save_file(butd.state_dict(), str(tmp_path / "whole.safetensors"))
    from_file = resnet_trunk("shapes_cnn", weights_path=tmp_path / "whole.safetensors")
    for trunk in (from_release, from_file):
        for key, value in source.state_dict().items():
            torch.testing.assert_close(trunk.state_dict()[key], value, rtol=0, atol=0)
        fresh = resnet_trunk("shapes_cnn").conv4[1].running_mean
        assert not torch.equal(trunk.conv4[1].running_mean, fresh)

    pythia = create_model("pythia", vocab_size=20, num_answers=4, backbone="shapes_cnn",
                          image_dim=128, embedding_dim=8, hidden_dim=16, attention_dim=16,
                          fusion_dim=16, classifier_dim=16, classifier_text_dim=8)
    pythia.grid_encoder.load_backbone_weights(tmp_path / "butd")
    torch.testing.assert_close(pythia.grid_encoder.trunk.conv0[0].weight, source.conv0[0].weight)

    # A directory that is no release, and a model whose backbone is another trunk, are named.
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*model\.safetensors"):
        resnet_trunk("shapes_cnn", weights_path=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"butd.*missing keys"):
        resnet_trunk("resnet18", weights_path=tmp_path / "butd")


def test_trunk_state_picks_the_one_backbone() -> None:
    w = torch.ones(1)
    plain = {"conv0.0.weight": w}
    assert trunk_state(plain) == plain  # a trunk's own state dict passes through
    nested = {"visual.grid_encoder.trunk.conv0.0.weight": w, "visual.grid_encoder.proj.bias": w,
              "classifier.weight": w}
    assert trunk_state(nested) == {"conv0.0.weight": w}
    with pytest.raises(ValueError, match="several backbones"):
        trunk_state({**nested, "other.grid_encoder.trunk.conv0.0.weight": w})

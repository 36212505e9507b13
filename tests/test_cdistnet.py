"""CDistNet: decoding paths, the causal mask, the official key names, the training objective and the recipe."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from stisr_lightning.models.recognizers.cdistnet import EOS, NUM_CLASSES, CDistNet, label_smoothed_cross_entropy

TINY = dict(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=1, encoder_ffn=64, decoder_ffn=32, max_len=6,
            stn=False)

# Read in simplify23/CDistNet: model.py (VIS_Pre, SEM_Pre, POS_Pre, CDistNet), blocks.py (TransformerEncoder,
# CommonAttentionLayer, MDCDP, DSF, Embeddings), stage/multiheadAttention.py, stage/backbone.py (ABI_ResNet,
# ConvBnRelu), clovaai's TPS_SpatialTransformerNetwork (LocalizationNetwork, GridGenerator).
OFFICIAL_SHAPES = {
    "visual_branch.transform.LocalizationNetwork.conv.0.weight": (64, 3, 3, 3),
    "visual_branch.transform.LocalizationNetwork.conv.13.running_var": (512,),
    "visual_branch.transform.LocalizationNetwork.localization_fc1.0.weight": (256, 512),
    "visual_branch.transform.LocalizationNetwork.localization_fc2.bias": (40,),
    "visual_branch.transform.GridGenerator.inv_delta_C": (23, 23),
    "visual_branch.transform.GridGenerator.P_hat": (4096, 23),
    "visual_branch.backbone.conv1.weight": (32, 3, 3, 3),
    "visual_branch.backbone.convbnrelu.conv.weight": (512, 512, 3, 3),
    "visual_branch.backbone.convbnrelu.conv.bias": (512,),
    "visual_branch.backbone.layer1.0.downsample.0.weight": (32, 32, 1, 1),
    "visual_branch.backbone.layer5.2.bn2.num_batches_tracked": (),
    "visual_branch.positional_encoding.pe": (5000, 1, 512),
    "visual_branch.trans_encoder.pos_embeding": (48, 1, 512),
    "visual_branch.trans_encoder.pos_encoding.pe": (5000, 1, 512),
    "visual_branch.trans_encoder.layers.2.self_attn.in_proj_weight": (1536, 512),
    "visual_branch.trans_encoder.layers.2.self_attn.in_proj_bias": (1536,),
    "visual_branch.trans_encoder.layers.2.self_attn.out_proj.weight": (512, 512),
    "visual_branch.trans_encoder.layers.2.self_attn.conv2.weight": (1024, 512, 1, 1),
    "visual_branch.trans_encoder.layers.2.self_attn.conv3.bias": (1536,),
    "visual_branch.trans_encoder.layers.2.conv1.weight": (2048, 512, 1, 1),
    "visual_branch.trans_encoder.layers.2.norm2.weight": (512,),
    "semantic_branch.embedding.embedding.weight": (40, 512),
    "semantic_branch.positional_encoding.pe": (5000, 1, 512),
    "positional_branch.pos_encoding.pe": (5000, 1, 512),
    "positional_branch.linear2.weight": (512, 512),
    "positional_branch.norm2.bias": (512,),
    "mdcdp.layers_pos.2.multihead_attn.conv3.weight": (1536, 512, 1, 1),
    "mdcdp.layers2.0.multihead_attn.conv1.weight": (512, 512, 1, 1),
    "mdcdp.layers3.1.linear1.weight": (1024, 512),
    "mdcdp.layers3.1.norm3.weight": (512,),
    "mdcdp.dynamic_shared_fusion.w_att.weight": (512, 1024),
    "tgt_word_prj.weight": (40, 512),
}


def tiny(seed: int = 0, **overrides) -> CDistNet:
    torch.manual_seed(seed)
    return CDistNet(**{**TINY, **overrides})


def test_greedy_and_teacher_forced_shapes_at_any_input_size():
    model = tiny(stn=True).eval()
    images = torch.rand(3, 3, 16, 64)
    with torch.no_grad():
        greedy = model(images)
        targets, lengths = model.encode_text(["ab", "c", "12345"])
        forced = model(images, targets)
    assert greedy.logits.shape[0] == 3 and greedy.logits.shape[2] == NUM_CLASSES == 40
    assert 1 <= greedy.logits.shape[1] <= TINY["max_len"] + 1
    assert greedy.features.shape == (3, 32)
    assert forced.logits.shape == (3, 6, 40) and lengths.tolist() == [3, 2, 6]
    assert len(model.read(images)) == 3


def test_teacher_forcing_is_causal():
    model = tiny().eval()
    images = torch.rand(2, 3, 32, 128)
    targets = model.encode_text(["abcde", "fghij"])[0]
    changed = targets.clone()
    changed[:, 3] = 20  # fed to step 4 only
    with torch.no_grad():
        before, after = model(images, targets).logits, model(images, changed).logits
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_default_model_has_the_official_names_and_shapes():
    with torch.device("meta"):
        model = CDistNet()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: shapes.get(key) for key in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 65_459_272
    assert model.charset == "0123456789abcdefghijklmnopqrstuvwxyz"  # dict_36.txt after its 4 special tokens


@pytest.mark.parametrize("wrap", [lambda s: {f"module.{k}": v for k, v in s.items()}, lambda s: {"model": s}])
def test_official_checkpoint_loads_strictly_from_wrapped_files(tmp_path, wrap):
    source = tiny(seed=1, stn=True)
    state = source.state_dict()
    torch.save(wrap(state), tmp_path / "epoch9_best_acc.pth")
    loaded = CDistNet.from_official_checkpoint(tmp_path / "epoch9_best_acc.pth", **{**TINY, "stn": True})
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_checkpoint_without_tps_buffers_loads_and_mismatches_name_the_file(tmp_path):
    state = {k: v for k, v in tiny(stn=True).state_dict().items() if ".GridGenerator." not in k}
    torch.save(state, tmp_path / "no_grid.pth")
    CDistNet.from_official_checkpoint(tmp_path / "no_grid.pth", **{**TINY, "stn": True})
    with pytest.raises(ValueError, match=r"no_grid\.pth: .*missing \d+: \[mdcdp\.layers_pos\.1\..*unexpected 0"):
        CDistNet.from_official_checkpoint(tmp_path / "no_grid.pth", **{**TINY, "stn": True, "decoder_layers": 2})
    with pytest.raises(ValueError, match=r"no_grid\.pth: .*shape"):
        CDistNet.from_official_checkpoint(tmp_path / "no_grid.pth", **{**TINY, "stn": True, "d_model": 48})


def test_labels_outside_the_charset_are_dropped_and_cut():
    model = tiny()
    targets, lengths = model.encode_text(["Ab-C!", "é9", "", "abcdefghij"])
    assert targets[0, :4].tolist() == [14, 15, 16, EOS] and lengths.tolist() == [4, 2, 1, 7]
    assert model.ids_to_text(targets) == ["abc", "9", "", "abcdef"]


def test_label_smoothing_is_the_official_cal_loss():
    logits, targets = torch.randn(2, 5, 40), torch.tensor([[5, 6, EOS, 0, 0], [7, EOS, 0, 0, 0]])
    plain = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, targets, 0.0), plain)
    uniform = label_smoothed_cross_entropy(torch.zeros(2, 5, 40), targets, 0.1)
    torch.testing.assert_close(uniform, torch.tensor(40.0).log())


def test_training_loss_decreases_on_fixed_images():
    model = tiny(dropout=0.0)
    images = torch.rand(2, 3, 32, 128, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.training_loss(images, ["cat", "d0g"])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_beam_search_of_width_one_is_greedy_and_batches_like_single_images():
    model = tiny(seed=2).eval()
    images = torch.rand(3, 3, 32, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        memory = model.encode(images)
        greedy = model.decode(model(images).logits)
        assert model.ids_to_text(model.beam_search(memory, 1)) == greedy
        batched = model.ids_to_text(model.beam_search(memory, 4))
        single = [model.ids_to_text(model.beam_search(memory[i:i + 1], 4))[0] for i in range(3)]
    assert batched == single


def test_recipe_instantiates_and_its_weights_load(tmp_path):
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    recipe = yaml.safe_load(Path("experiments/recognizers/cdistnet_synth.yaml").read_text())
    assert recipe["trainer"]["gradient_clip_val"] == 5.0  # the official grads_clip
    recipe["model"]["init_args"]["recognizer"]["init_args"].update(TINY)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    system = parser.instantiate_classes(parser.parse_object({"model": recipe["model"]})).model
    assert isinstance(system.recognizer, CDistNet) and system.weights_name == "cdistnet.pth"
    torch.save(system.recognizer.state_dict(), tmp_path / system.weights_name)  # what RecognizerSystem writes
    init_args = recipe["model"]["init_args"]["recognizer"]["init_args"]
    CDistNet.from_official_checkpoint(tmp_path / system.weights_name, **init_args)

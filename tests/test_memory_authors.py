"""The memory's default update is the authors' sequential rule (cm.py's mean/hard mix), checked
against a loop written from that rule: per sample in batch order, move the identity's mean proxy
towards the sample; per identity, choose the hard sample against the moved mean proxy, then move
the mean proxy towards the identity's batch mean and the hard proxy towards the hard sample."""
import pytest
import torch
import torch.nn.functional as F

from model.memory import MultiProxyMemory


def move(proxy, target, momentum):
    mixed = momentum * proxy + (1 - momentum) * target
    return mixed / mixed.norm()


def authors_update(proxies, x_hat, labels, momentum):
    mean, hard = proxies[:, 0].clone(), proxies[:, 1].clone()
    for x, y in zip(x_hat, labels.tolist()):           # one sample at a time, in batch order
        mean[y] = move(mean[y], x, momentum)
    groups = {}
    for x, y in zip(x_hat, labels.tolist()):
        groups.setdefault(y, []).append(x)
    for y, feats in groups.items():                     # identities in order of first appearance
        cosines = [float(f @ mean[y]) for f in feats]
        hardest = feats[cosines.index(min(cosines))]    # first of the lowest
        mean[y] = move(mean[y], torch.stack(feats).mean(0), momentum)
        hard[y] = move(hard[y], hardest, momentum)
    return torch.stack([mean, hard], dim=1)


def random_case(seed, num_classes=8, dim=6, batch=16, per_id=4):
    gen = torch.Generator().manual_seed(seed)
    proxies = F.normalize(torch.randn(num_classes, 2, dim, generator=gen), dim=2)
    ids = torch.randperm(num_classes, generator=gen)[: batch // per_id]
    labels = ids.repeat_interleave(per_id)[torch.randperm(batch, generator=gen)]  # P x K, shuffled order
    x_hat = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    return proxies, x_hat, labels


@pytest.mark.parametrize("max_instances", [None, 4])
@pytest.mark.parametrize("seed", range(5))
def test_sequential_update_equals_the_authors_loop(seed, max_instances):
    proxies, x_hat, labels = random_case(seed)
    memory = MultiProxyMemory(8, 6, momentum=0.3, max_instances=max_instances)
    memory.proxies.copy_(proxies)
    memory.update(x_hat, labels)
    torch.testing.assert_close(memory.proxies, authors_update(proxies, x_hat, labels, 0.3), rtol=1e-5, atol=1e-6)


def test_sequential_and_batch_mean_rules_differ():
    proxies, x_hat, labels = random_case(7)
    results = []
    for rule in ("sequential", "batch_mean"):
        memory = MultiProxyMemory(8, 6, momentum=0.3, update_rule=rule)
        memory.proxies.copy_(proxies)
        memory.update(x_hat, labels)
        results.append(memory.proxies.clone())
    assert not torch.allclose(results[0][:, 0], results[1][:, 0], atol=1e-3)


def test_more_samples_than_max_instances_is_an_error_not_a_skipped_move():
    proxies, x_hat, labels = random_case(1, per_id=4)
    memory = MultiProxyMemory(8, 6, momentum=0.3, max_instances=2)
    with pytest.raises(RuntimeError, match="max_instances"):
        memory.update(x_hat, labels)


def test_the_default_config_uses_the_sequential_rule_with_k_per_identity():
    from configs import get_defaults
    from model.build import build_model

    cfg = get_defaults()
    assert cfg.MODEL.MEMORY.UPDATE == "sequential"
    cfg.merge_from_list(["MODEL.BACKBONE", "tiny-vit-16", "MODEL.PRSD.ENABLED", "False", "MODEL.MGTM.ENABLED", "False",
                         "MODEL.EMBED_PARTS", "['cls', 'proj']", "INPUT.SIZE_TRAIN", "[64, 32]",
                         "INPUT.SIZE_TEST", "[64, 32]", "DATALOADER.NUM_INSTANCE", "3"])
    memory = build_model(cfg, num_classes=5, num_cameras=3).memory
    assert memory.update_rule == "sequential" and memory.max_instances == 3
